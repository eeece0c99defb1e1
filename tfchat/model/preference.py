"""Preference tuning: the DPO losses and `PreferenceLM`, the task that
trains a GPT on pairs of a chosen and a rejected reply.

Direct Preference Optimisation (Rafailov et al., 2023) needs no reward
model: with log-probabilities summed over each reply's tokens, under the
policy (pc, pr) and the frozen reference (rc, rr), the implicit rewards are

    chosen_reward   = beta * (pc - rc)
    rejected_reward = beta * (pr - rr)
    margin          = chosen_reward - rejected_reward

and the losses (`dpo.loss`, TRL's names and formulas) are

    sigmoid  -log sigmoid(margin) * (1 - eps) - log sigmoid(-margin) * eps
             (eps = dpo.label_smoothing: conservative DPO; 0 = DPO)
    ipo      ((pc - rc) - (pr - rr) - 1 / (2 beta))^2, with each
             log-probability averaged over its reply's tokens (IPO, Azar et
             al., 2023, as TRL computes it)
    apo_zero (1 - sigmoid(beta (pc - rc))) + sigmoid(beta (pr - rr)): the
             chosen reply made likelier and the rejected one less likely,
             each on its own (APO-zero, D'Oosterlinck et al., 2024)

Plain DPO only ranks the pair: on little data it can widen the margin by
making every reply unlikely, the chosen one too, while reward accuracy
reads 1.0. `rpo_alpha` adds the chosen reply's negative
log-likelihood, per token, times alpha (RPO, Pang et al., 2024; TRL's
`rpo_alpha`), which holds the chosen reply up; `chosen_logp_change`, the
chosen reply's log-probability against the reference per token, shows
whether it is held.

The reference's log-probabilities are inputs (`reference_logps`), computed
once before training from the starting weights (`tfchat.objectives.dpo`),
so no second model is held while the policy trains.
"""

import keras
import tensorflow as tf

from tfchat.config import DPO_LOSSES as LOSSES
from tfchat.model.tasks import CausalLM


def sequence_logps(logits, targets, weights):
    """Summed log-probabilities of the weighted targets of each row, and how
    many targets were weighted. logits [N, T, V] float32, targets [N, T],
    weights [N, T]. Returns (logps [N], counts [N]) float32."""
    weights = tf.cast(weights, tf.float32)
    token_logps = -tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.int32), logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(token_logps * weights, axis=-1), tf.reduce_sum(weights, axis=-1)


def pair_logps(backbone, x, targets, weights, training=False):
    """A GPT's log-probabilities of each pair's chosen and rejected reply,
    both rows in one forward pass. x["token_ids"], targets and weights
    [B, 2, T] (`tfchat.data.pipeline.preference_dataset`). Returns
    ((chosen, rejected), (chosen tokens, rejected tokens)), [B] each."""
    tokens = x["token_ids"]
    length = tf.shape(tokens)[-1]
    logits = backbone(tf.reshape(tokens, [-1, length]), training=training)  # [2B, T, V]
    logps, counts = sequence_logps(logits, tf.reshape(targets, [-1, length]),
                                   tf.reshape(weights, [-1, length]))
    logps, counts = tf.reshape(logps, [-1, 2]), tf.reshape(counts, [-1, 2])
    return (logps[:, 0], logps[:, 1]), (counts[:, 0], counts[:, 1])


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
             beta, loss="sigmoid", label_smoothing=0.0):
    """Per-pair losses and rewards of `dpo.loss` (see the module docs).
    All inputs [B] float32 log-probabilities (length-averaged for ipo).
    Returns (losses [B], chosen_rewards [B], rejected_rewards [B])."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    if loss == "sigmoid":
        margin = beta * (chosen_ratio - rejected_ratio)
        losses = (-tf.math.log_sigmoid(margin) * (1.0 - label_smoothing)
                  - tf.math.log_sigmoid(-margin) * label_smoothing)
    elif loss == "ipo":
        losses = tf.square(chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta))
    elif loss == "apo_zero":
        losses = (1.0 - tf.sigmoid(beta * chosen_ratio)) + tf.sigmoid(beta * rejected_ratio)
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}. Received: loss={loss!r}")
    return (losses, tf.stop_gradient(beta * chosen_ratio),
            tf.stop_gradient(beta * rejected_ratio))


@keras.saving.register_keras_serializable(package="tfchat")
class PreferenceLM(CausalLM):
    """A GPT trained on preference pairs with a DPO loss; otherwise a
    `CausalLM` (the same backbone and checkpoint layout, so a DPO run
    chats, generates and exports as a chat run does).

    Args:
        backbone: a `tfchat.model.gpt.GPT`.
        beta: float, `dpo.beta`.
        loss: "sigmoid" | "ipo" | "apo_zero".
        label_smoothing: float, sigmoid only.
        rpo_alpha: float, the weight of the chosen reply's negative
            log-likelihood per token added to each pair's loss (0 = none).

    Data (`tfchat.data.pipeline.preference_dataset`): (x, targets [B, 2, T],
    weights [B, 2, T]) with x {"token_ids" [B, 2, T], "padding_mask" [B, 2,
    T], "reference_logps" [B, 2]}; row 0 of each pair is the chosen reply,
    row 1 the rejected. The loss is the mean over pairs of the global batch.

    Metrics: `loss`; `reward_chosen`, `reward_rejected` and `reward_margin`
    (means over pairs), and `reward_accuracy`, the share of pairs whose
    chosen reward is higher, a tie counting half (before any step the policy
    is the reference and every pair ties: 0.5); `chosen_logp_change`, the
    mean over pairs of (pc - rc) / the chosen reply's tokens: how much
    likelier (above 0) or less likely the policy finds the chosen reply
    than the reference did, in nats per token; `chosen_nll`, the mean over
    pairs of the chosen reply's negative log-likelihood per token (what
    `rpo_alpha` weighs).

    Example:
    ```python
    model = PreferenceLM(GPT(vocabulary_size=65, num_layers=2, num_heads=2,
                             hidden_dim=32, block_size=64), beta=0.1)
    model.compile(optimizer=build_optimizer(config.train, model))
    model.fit(preference_dataset(pairs, 64, 8, reference_logps=ref), steps_per_epoch=50)
    ```
    """

    # Rows the model reads per example, for tokens/s (`tfchat.train.trainer`).
    sequences_per_example = 2

    def __init__(self, backbone, beta=0.1, loss="sigmoid", label_smoothing=0.0, rpo_alpha=0.0,
                 grad_accumulation_steps=1, **kwargs):
        super().__init__(backbone, grad_accumulation_steps, **kwargs)
        self.beta = beta
        self.loss_type = loss
        self.label_smoothing = label_smoothing
        self.rpo_alpha = rpo_alpha
        self.reward_trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy",
                         "chosen_logp_change", "chosen_nll")
        }

    @property
    def metrics(self):
        return [self.loss_tracker, *self.reward_trackers.values(), self.nonfinite_tracker,
                self.useful_tracker]

    def loss_sums(self, x, y, weight, training):
        (chosen, rejected), (chosen_n, rejected_n) = pair_logps(
            self.backbone, x, y, weight, training)
        reference = tf.cast(x["reference_logps"], tf.float32)
        ref_chosen, ref_rejected = reference[:, 0], reference[:, 1]
        tokens = tf.maximum(chosen_n, 1.0)
        chosen_change = tf.stop_gradient((chosen - ref_chosen) / tokens)
        chosen_nll = -chosen / tokens
        if self.loss_type == "ipo":
            chosen, ref_chosen = chosen / chosen_n, ref_chosen / chosen_n
            rejected, ref_rejected = rejected / rejected_n, ref_rejected / rejected_n
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_type,
            self.label_smoothing,
        )
        if self.rpo_alpha:
            losses += self.rpo_alpha * chosen_nll
        margin = chosen_rewards - rejected_rewards
        correct = tf.cast(margin > 0, tf.float32) + 0.5 * tf.cast(tf.equal(margin, 0.0), tf.float32)
        return tuple(tf.reduce_sum(v) for v in (
            losses, chosen_rewards, rejected_rewards, margin, correct, chosen_change,
            tf.stop_gradient(chosen_nll)))

    def loss_count(self, y, weight):
        return tf.cast(tf.shape(y)[0], tf.float32)  # pairs

    def record(self, sums, count):
        safe = tf.maximum(count, 1.0)
        loss = sums[0] / safe
        finite = tf.math.is_finite(loss)
        weight = tf.where(finite, count, 0.0)
        self.loss_tracker.update_state(tf.where(finite, loss, 0.0), sample_weight=weight)
        for tracker, value in zip(self.reward_trackers.values(), sums[1:]):
            tracker.update_state(tf.where(finite, value / safe, 0.0), sample_weight=weight)
        self.nonfinite_tracker.update_state(1.0 - tf.cast(finite, tf.float32))
        return self.metric_results()

    def metric_results(self):
        results = {"loss": self.loss_tracker.result()}
        results.update({t.name: t.result() for t in self.reward_trackers.values()})
        results["nonfinite_steps"] = self.nonfinite_tracker.result()
        results["useful_fraction"] = self.useful_tracker.result()
        return results

    def get_config(self):
        config = super().get_config()
        config.update(beta=self.beta, loss=self.loss_type, label_smoothing=self.label_smoothing,
                      rpo_alpha=self.rpo_alpha)
        return config
