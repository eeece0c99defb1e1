"""Knowledge distillation: a student GPT trained to imitate a teacher's
next-token distributions (Hinton et al., 2015), as well as the data.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross-entropy(student, next token)

both token-weighted means over the batch's weighted targets (chat: the
assistant's tokens only). T^2 keeps the KL term's gradients at the scale of
the cross-entropy's whatever the temperature. The teacher runs in inference
mode beside the student, batch by batch: its logits are never stored.
"""

import keras
import tensorflow as tf

from tfchat.model.tasks import CausalLM, gpt_logits, token_sums


def distillation_kl(teacher_logits, student_logits, temperature):
    """KL(teacher || student) of the softened distributions, per position:
    logits [..., V] -> [...], float32."""
    t = tf.cast(temperature, tf.float32)
    teacher = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / t)
    student = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / t)
    return tf.reduce_sum(tf.exp(teacher) * (teacher - student), axis=-1)


class _Frozen:
    """Holds the teacher out of the student's tracking: not in its weights,
    its optimizer or its checkpoints (a distilled run's checkpoint is an
    ordinary GPT run's)."""

    def __init__(self, backbone):
        self.backbone = backbone


@keras.saving.register_keras_serializable(package="tfchat")
class DistillLM(CausalLM):
    """A student `GPT` with a frozen teacher; otherwise a `CausalLM` (its
    checkpoints, generation and export are a causal run's).

    Args:
        backbone: the student `tfchat.model.gpt.GPT`.
        alpha: float in [0, 1], the KL term's share (`distill.alpha`).
        temperature: float > 0 (`distill.temperature`).

    Data: as `CausalLM`'s. Attach the teacher (a GPT with the same
    vocabulary) before training with `attach_teacher`.

    Metrics: `loss`, `accuracy` and `perplexity` of the next token (the
    numbers a causal run reports, to compare with one), `kl` (to the
    teacher, at the temperature, before the T^2 factor) and
    `distill_loss`, the objective minimised.

    Example:
    ```python
    student = DistillLM(GPT(vocabulary_size=65, num_layers=2, num_heads=2,
                            hidden_dim=64, block_size=64), alpha=0.5, temperature=2.0)
    student.attach_teacher(teacher_run.backbone)
    student.compile(optimizer=build_optimizer(config.train, student))
    student.fit(causal_lm_dataset(...), steps_per_epoch=100)
    ```
    """

    def __init__(self, backbone, alpha=0.5, temperature=2.0, grad_accumulation_steps=1,
                 **kwargs):
        super().__init__(backbone, grad_accumulation_steps, **kwargs)
        self.alpha = alpha
        self.temperature = temperature
        self._teacher = None
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.distill_tracker = keras.metrics.Mean(name="distill_loss")

    def attach_teacher(self, teacher):
        """`teacher`: a GPT whose logits the student learns; kept frozen."""
        if teacher.vocabulary_size != self.backbone.vocabulary_size:
            raise ValueError(f"The teacher's vocabulary ({teacher.vocabulary_size}) is not the "
                             f"student's ({self.backbone.vocabulary_size}).")
        teacher.trainable = False
        self._teacher = _Frozen(teacher)

    @property
    def metrics(self):
        return [*super().metrics, self.kl_tracker, self.distill_tracker]

    def teacher_logits(self, x):
        if self._teacher is None:
            raise ValueError("DistillLM needs its teacher: call attach_teacher first.")
        return tf.stop_gradient(gpt_logits(self._teacher.backbone, x, training=False))

    def loss_sums(self, x, y, weight, training):
        logits = self(x, training=training)
        ce_sum, correct_sum, _ = token_sums(y, logits, weight)
        kl = distillation_kl(self.teacher_logits(x), logits, self.temperature)
        kl_sum = tf.reduce_sum(kl * tf.cast(weight, tf.float32))
        loss_sum = (self.alpha * self.temperature ** 2 * kl_sum
                    + (1.0 - self.alpha) * ce_sum)
        return loss_sum, correct_sum, ce_sum, kl_sum

    def record(self, sums, count):
        loss_sum, correct_sum, ce_sum, kl_sum = sums
        safe = tf.maximum(count, 1.0)
        # The optimised loss decides finiteness; `loss` stays the next-token
        # loss, comparable with any causal run's.
        finite = tf.math.is_finite(loss_sum)
        weight = tf.where(finite, count, 0.0)
        self.kl_tracker.update_state(tf.where(finite, kl_sum / safe, 0.0), sample_weight=weight)
        self.distill_tracker.update_state(tf.where(finite, loss_sum / safe, 0.0),
                                          sample_weight=weight)
        ce = tf.where(finite, ce_sum / safe, loss_sum)
        return self._update_metrics(ce, correct_sum / safe, count)

    def metric_results(self):
        return {**super().metric_results(), "kl": self.kl_tracker.result(),
                "distill_loss": self.distill_tracker.result()}

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, temperature=self.temperature)
        return config
