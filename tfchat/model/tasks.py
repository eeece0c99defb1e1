"""Task models: a backbone, a head, the loss, the metrics and the
GradientTape step, as keras-hub keeps tasks beside their backbones.

`Task` writes the step once: `train_step`/`test_step` compute a weighted
sparse cross-entropy between `call`'s logits and the targets, whatever their
rank (loss normalised over weighted targets and replicas, gradient
accumulation, the all-reduce before clipping). Its three siblings differ
only in `call` and in what their targets are:

  * `CausalLM` (GPT): next tokens, weighted per token (chat: the
    assistant's tokens only);
  * `MaskedLM` (BERT): the masked tokens' ids, weight 0 on unused
    prediction slots, so the loss is computed at masked positions only;
  * `TextClassifier` (BERT): one label and weight 1 per example.

`model.fit` calls the steps (one device or `MirroredStrategy`, for
notebooks), and so does tfchat's own loop (`tfchat.train.trainer`) through
`strategy.run`.
"""

import keras
import tensorflow as tf
from keras import ops

from tfchat.model.bert import MaskedLMHead
from tfchat.model.layers import normal


def token_sums(targets, logits, weight):
    """Summed next-token cross-entropy and correct predictions over weighted
    tokens. targets [B, T] int, logits [B, T, V] float32, weight [B, T].
    Returns (loss_sum, correct_sum, token_count) float32 scalars."""
    targets = tf.cast(targets, tf.int32)
    weight = tf.cast(weight, tf.float32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.cast(tf.equal(predicted, targets), tf.float32)
    return (
        tf.reduce_sum(losses * weight),
        tf.reduce_sum(correct * weight),
        tf.reduce_sum(weight),
    )


def useful_tokens(inputs):
    """(non-padding input tokens, all input tokens), float32 scalars: a
    packed batch's segment ids or an encoder batch's padding mask say which
    are padding; a plain [B, T] batch has none."""
    if isinstance(inputs, dict) and "segment_ids" in inputs:
        real = inputs["segment_ids"] > 0
    elif isinstance(inputs, dict) and "padding_mask" in inputs:
        real = tf.cast(inputs["padding_mask"], tf.bool)
    else:
        tokens = inputs["token_ids"] if isinstance(inputs, dict) else inputs
        total = tf.cast(tf.size(tokens), tf.float32)
        return total, total
    return tf.reduce_sum(tf.cast(real, tf.float32)), tf.cast(tf.size(real), tf.float32)


def token_loss_and_accuracy(targets, logits, sample_weight=None):
    """Token-weighted mean loss and accuracy, and the token count."""
    if sample_weight is None:
        sample_weight = tf.ones_like(targets, tf.float32)
    loss_sum, correct_sum, count = token_sums(targets, logits, sample_weight)
    safe = tf.maximum(count, 1.0)
    return loss_sum / safe, correct_sum / safe, count


class Task(keras.Model):
    """The shared step of every task: subclasses define `call` (inputs ->
    float32 logits whose leading dimensions match the targets').

    Data: (inputs, targets) or (inputs, targets, weights); inputs a tensor or
    a dict of tensors. Metrics: `loss` and `accuracy`, weighted means,
    `perplexity`, and in training `useful_fraction`, the share of input
    tokens that are not padding (`useful_tokens`).
    """

    def __init__(self, backbone, grad_accumulation_steps=1, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.grad_accumulation_steps = grad_accumulation_steps
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        # Steps whose loss was NaN or infinite; they are left out of the
        # loss and accuracy above, and the trainer stops or skips on them.
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_steps")
        self.useful_tracker = keras.metrics.Mean(name="useful_fraction")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.nonfinite_tracker,
                self.useful_tracker]

    def train_step(self, data):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        if weight is None:
            weight = tf.ones_like(y, tf.float32)
        count = self.loss_count(y, weight)
        # Each example's loss (a token's, or a preference pair's) is divided
        # by the count of the whole global batch, summed over replicas
        # (gradients are summed across replicas too): the global weighted
        # mean, whatever share of the weighted tokens each replica's rows
        # hold (chat rows and packed blocks hold different numbers).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_count = count
        if replicas > 1:
            global_count = tf.distribute.get_replica_context().all_reduce("SUM", count)
        normalizer = tf.maximum(global_count, 1.0)
        micro_batches = self.grad_accumulation_steps
        if micro_batches == 1:
            gradients, sums = self._gradients(x, y, weight, normalizer)
        else:
            gradients, sums = self._accumulated_gradients(x, y, weight, normalizer, micro_batches)
        if replicas > 1:
            # Sum across replicas here, so clipping sees the real gradient
            # (see `tfchat.train.optim.AdamW`).
            gradients = tf.distribute.get_replica_context().all_reduce("SUM", gradients)
        self.optimizer.apply(gradients, self.trainable_variables)
        useful, total = useful_tokens(x)
        self.useful_tracker.update_state(useful / total, sample_weight=total)
        return self.record(sums, count)

    # What a subclass with another loss (`tfchat.model.preference`) changes:
    # `loss_sums`, `loss_count` and `record`; the step around them stays.

    def loss_sums(self, x, y, weight, training):
        """A tuple of float32 scalars summed over the batch's examples, the
        loss first: here the weighted token losses and correct tokens."""
        logits = self(x, training=training)
        loss_sum, correct_sum, _ = token_sums(y, logits, weight)
        return loss_sum, correct_sum

    def loss_count(self, y, weight):
        """What the summed loss is divided by: the weighted tokens."""
        return tf.reduce_sum(tf.cast(weight, tf.float32))

    def record(self, sums, count):
        """Updates the metrics with one batch's `loss_sums` over `count`."""
        loss_sum, correct_sum = sums
        safe = tf.maximum(count, 1.0)
        return self._update_metrics(loss_sum / safe, correct_sum / safe, count)

    def _gradients(self, x, y, weight, normalizer):
        with tf.GradientTape() as tape:
            sums = self.loss_sums(x, y, weight, training=True)
            scaled = self.optimizer.scale_loss(sums[0] / normalizer)
        return tape.gradient(scaled, self.trainable_variables), sums

    def _accumulated_gradients(self, x, y, weight, normalizer, micro_batches):
        """Sums the gradients of `micro_batches` slices of the batch, one at a
        time (a while loop, so only one slice's activations are alive).
        Clipping and the update then see exactly the full batch's gradient."""

        def split(t):
            return tf.reshape(t, tf.concat([[micro_batches, -1], tf.shape(t)[1:]], 0))

        # tf.nest: encoder tasks' inputs are dicts of tensors.
        xs, ys, ws = tf.nest.map_structure(split, (x, y, weight))
        def slice_gradients(i):
            x_i, y_i, w_i = tf.nest.map_structure(lambda t: t[i], (xs, ys, ws))
            return self._gradients(x_i, y_i, w_i, normalizer)

        # The first slice outside the loop gives the loop its variables;
        # dense, as an embedding's IndexedSlices cannot be loop variables.
        gradients, sums = slice_gradients(0)
        gradients = [tf.convert_to_tensor(g) for g in gradients]
        for i in tf.range(1, micro_batches):
            g, s = slice_gradients(i)
            gradients = [a + b for a, b in zip(gradients, g)]
            sums = tuple(a + b for a, b in zip(sums, s))
        return gradients, tuple(sums)

    def test_step(self, data):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        if weight is None:
            weight = tf.ones_like(y, tf.float32)
        return self.record(self.loss_sums(x, y, weight, training=False),
                           self.loss_count(y, weight))

    def _update_metrics(self, loss, accuracy, count):
        # The unscaled loss, weighted by tokens, so the reported value is the
        # true mean whatever the number of replicas.
        finite = tf.math.is_finite(loss)
        weight = tf.where(finite, count, 0.0)
        self.loss_tracker.update_state(tf.where(finite, loss, 0.0), sample_weight=weight)
        self.accuracy_tracker.update_state(accuracy, sample_weight=weight)
        self.nonfinite_tracker.update_state(1.0 - tf.cast(finite, tf.float32))
        return self.metric_results()

    def metric_results(self):
        loss = self.loss_tracker.result()
        return {
            "loss": loss,
            "perplexity": tf.exp(tf.minimum(loss, 80.0)),
            "accuracy": self.accuracy_tracker.result(),
            "nonfinite_steps": self.nonfinite_tracker.result(),
            "useful_fraction": self.useful_tracker.result(),
        }

    def get_config(self):
        config = super().get_config()
        config["backbone"] = keras.saving.serialize_keras_object(self.backbone)
        config["grad_accumulation_steps"] = self.grad_accumulation_steps
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfchat")
class CausalLM(Task):
    """Next-token prediction on a backbone that maps token ids to logits.

    Data: (inputs [B, T], targets [B, T]) or (inputs, targets, weights [B, T]);
    inputs may be {"token_ids", "segment_ids"} [B, T] each, a packed batch.
    Metrics: `loss` and `accuracy`, token-weighted means, and `perplexity`.

    Example:
    ```python
    model = CausalLM(GPT(vocabulary_size=65, num_layers=2, num_heads=2,
                         hidden_dim=32, block_size=64))
    model.compile(optimizer=build_optimizer(config.train, model))
    model.fit(causal_lm_dataset(...), steps_per_epoch=100)
    ```
    """

    def call(self, inputs, training=None):
        return gpt_logits(self.backbone, inputs, training)


def gpt_logits(gpt, inputs, training=None):
    """A GPT's logits for [B, T] ids or a packed batch {"token_ids",
    "segment_ids"} (see GPT)."""
    if isinstance(inputs, dict):
        return gpt(inputs["token_ids"], segment_ids=inputs["segment_ids"], training=training)
    return gpt(inputs, training=training)


@keras.saving.register_keras_serializable(package="tfchat")
class MaskedLM(Task):
    """Masked-token prediction on a `BertEncoder`, with a tied
    `MaskedLMHead`.

    Data: (x, mask_ids [B, P], mask_weights [B, P]) with x a dict of
    `token_ids` [B, T] (already masked), `padding_mask` [B, T] and
    `mask_positions` [B, P]; `tfchat.data.pipeline.masked_lm_dataset` makes
    it. Metrics: `loss`, `accuracy` and `perplexity` over masked tokens.

    Example:
    ```python
    model = MaskedLM(BertEncoder(vocabulary_size=100, num_layers=2,
                                 num_heads=2, hidden_dim=32,
                                 block_size=16))
    logits = model(x)   # [B, P, V] at x["mask_positions"]
    ```
    """

    def __init__(self, backbone, grad_accumulation_steps=1, **kwargs):
        super().__init__(backbone, grad_accumulation_steps, **kwargs)
        # Without BERT's next-sentence task nothing trains the pooler here;
        # freezing it keeps it out of the gradient (a classifier trains it).
        backbone.pooler.trainable = False
        self.mlm_head = MaskedLMHead(
            backbone.vocabulary_size, backbone.hidden_dim,
            dtype=backbone.dtype_policy, name="mlm_head",
        )

    def call(self, inputs, training=None):
        encoded = self.backbone(inputs, training=training)["sequence_output"]
        return self.mlm_head(
            encoded, inputs["mask_positions"], self.backbone.token_embedding.embeddings
        )


@keras.saving.register_keras_serializable(package="tfchat")
class TextClassifier(Task):
    """Text classification on a `BertEncoder`'s pooled ([CLS]) output.

    Args:
        backbone: a `BertEncoder`, usually pretrained by `MaskedLM`.
        num_classes: int K.
        dropout: float. Dropout on the pooled output; None = the
            backbone's.

    Data: (x, labels [B]) with x a dict of `token_ids` and `padding_mask`
    [B, T]; `tfchat.data.pipeline.classification_dataset` makes it.
    Metrics: `loss` and `accuracy`. Call returns float32 logits [B, K].
    """

    def __init__(self, backbone, num_classes, dropout=None,
                 grad_accumulation_steps=1, **kwargs):
        super().__init__(backbone, grad_accumulation_steps, **kwargs)
        self.num_classes = num_classes
        self.dropout = backbone.dropout if dropout is None else dropout
        self.classifier_dropout = keras.layers.Dropout(self.dropout, dtype=backbone.dtype_policy)
        self.classifier = keras.layers.Dense(
            num_classes, kernel_initializer=normal(),
            dtype=backbone.dtype_policy, name="classifier",
        )

    def call(self, inputs, training=None):
        pooled = self.backbone(inputs, training=training)["pooled_output"]
        pooled = self.classifier_dropout(pooled, training=training)
        return ops.cast(self.classifier(pooled), "float32")

    def metric_results(self):
        # Task's, less perplexity, which means nothing over classes.
        results = dict(super().metric_results())
        results.pop("perplexity")
        return results

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, dropout=self.dropout)
        return config
