"""The BERT encoder, the tied masked-LM head, and the encoder tasks' steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfchat.model.bert import BertEncoder, MaskedLMHead
from tfchat.run import build_model
from tfchat.model.tasks import MaskedLM, TextClassifier
from tfchat.train.optim import build_optimizer

V, T, C, P = 50, 12, 32, 4


def encoder(**kwargs):
    return BertEncoder(vocabulary_size=V, num_layers=2, num_heads=2, hidden_dim=C,
                       block_size=T, **kwargs)


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def inputs(seed=0, lengths=(T, 7)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(9, V, size=(len(lengths), T)).astype("int32")
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
    ids[~mask] = 0
    return {"token_ids": ids, "padding_mask": mask}


def test_shapes_and_bidirectional_attention():
    model = encoder()
    x = inputs()
    model(x)
    randomize(model)
    out = model(x)
    assert tuple(out["sequence_output"].shape) == (2, T, C)
    assert tuple(out["pooled_output"].shape) == (2, C)
    # Changing the last real token changes the first position's output: no
    # causal mask.
    changed = {**x, "token_ids": x["token_ids"].copy()}
    changed["token_ids"][:, 6] = (changed["token_ids"][:, 6] + 1 - 9) % (V - 9) + 9
    after = model(changed)["sequence_output"].numpy()
    assert np.abs(after[:, 0] - out["sequence_output"].numpy()[:, 0]).max() > 1e-4


def test_padding_is_invisible():
    model = encoder()
    x = inputs(lengths=(7, 7))
    model(x)
    randomize(model)
    before = model(x)
    garbage = {**x, "token_ids": x["token_ids"].copy()}
    garbage["token_ids"][:, 7:] = np.random.default_rng(5).integers(9, V, size=(2, T - 7))
    after = model(garbage)
    np.testing.assert_allclose(after["sequence_output"].numpy()[:, :7],
                               before["sequence_output"].numpy()[:, :7], atol=1e-5)
    np.testing.assert_allclose(after["pooled_output"].numpy(), before["pooled_output"].numpy(), atol=1e-5)


def test_segment_embeddings_are_optional():
    plain = encoder()
    plain(inputs())
    with_segments = encoder(num_segments=2)
    x = {**inputs(), "segment_ids": np.zeros((2, T), "int32")}
    with_segments(x)
    assert len(with_segments.weights) == len(plain.weights) + 1
    randomize(with_segments)
    other = {**x, "segment_ids": np.ones((2, T), "int32")}
    assert not np.allclose(with_segments(x)["pooled_output"], with_segments(other)["pooled_output"])


def test_get_config_round_trip():
    model = encoder(dropout=0.2, intermediate_dim=48, num_segments=2)
    config = model.get_config()
    clone = BertEncoder.from_config(config)
    assert clone.get_config() == config
    assert clone.intermediate_dim == 48 and clone.num_segments == 2
    head = MaskedLMHead(V, C, layer_norm_epsilon=1e-6)
    assert MaskedLMHead.from_config(head.get_config()).get_config() == head.get_config()


@pytest.mark.parametrize("objective", ["mlm", "classify"])
def test_checkpoint_restores_every_weight(make_config, objective, tmp_path):
    config = make_config({"objective": objective, "tokenizer.kind": "wordpiece"})
    model = build_model(config, V, labels=("a", "b", "c"))
    randomize(model)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = build_model(config, V, labels=("a", "b", "c"))
    status = tf.train.Checkpoint(model=fresh).restore(path)
    status.assert_consumed()
    assert len(fresh.weights) == len(model.weights) > 2 * 12
    for a, b in zip(model.weights, fresh.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # Every block is in the checkpoint (a list of layers would not be).
    names = [name for name, _ in tf.train.list_variables(path)]
    assert any("block_1" in name for name in names)


def test_mlm_head_is_tied_to_the_token_embedding():
    backbone = encoder()
    model = MaskedLM(backbone)
    x = {**inputs(), "mask_positions": np.array([[1, 2, 3, 4], [0, 5, 6, 0]], "int32")}
    model(x)
    randomize(model)
    head = model.mlm_head
    assert not any(w is backbone.token_embedding.embeddings for w in head.weights)
    # The logits are the transformed hidden states against the embeddings.
    hidden = backbone(x)["sequence_output"].numpy()
    gathered = np.take_along_axis(hidden, x["mask_positions"][..., None], axis=1)
    transformed = head.norm(keras.activations.gelu(head.transform(gathered), approximate=True))
    expected = transformed.numpy() @ backbone.token_embedding.embeddings.numpy().T + head.output_bias.numpy()
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-4, atol=1e-4)
    # And the loss trains the embedding through the head as well.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x))
    grad = tape.gradient(loss, backbone.token_embedding.embeddings)
    assert np.abs(tf.convert_to_tensor(grad).numpy()[:9]).sum() > 0  # ids < 9 appear only in the head


def mlm_batch(seed=0):
    x = inputs(seed)
    x["mask_positions"] = np.array([[1, 3, 5, 0], [2, 4, 0, 0]], "int32")
    y = np.random.default_rng(seed + 1).integers(9, V, size=(2, P)).astype("int32")
    w = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], "float32")
    return x, y, w


def trained_copy(make_config, batch, steps=2, **overrides):
    """A fresh seeded MaskedLM after `steps` train steps on `batch` (eager:
    cheaper than tracing for a few steps of a tiny model)."""
    keras.utils.set_random_seed(0)
    config = make_config({"objective": "mlm", "tokenizer.kind": "wordpiece", "model.block_size": T,
                          "mlm.max_predictions": P, **overrides})
    model = build_model(config, V)
    model.compile(optimizer=build_optimizer(config.train, model))
    logs = {}
    for _ in range(steps):
        logs = model.train_step(batch)
    return model, {k: float(v) for k, v in logs.items()}


@pytest.mark.slow
def test_loss_ignores_unmasked_positions(make_config):
    x, y, w = mlm_batch()
    fresh, _ = trained_copy(make_config, (x, y, w), steps=0)
    # The loss is the mean cross-entropy over the used slots only.
    losses = -tf.nn.log_softmax(fresh(x)).numpy()
    per_slot = np.take_along_axis(losses, y[..., None], axis=-1)[..., 0]
    logs = fresh.test_step((x, y, w))
    assert float(logs["loss"]) == pytest.approx((per_slot * w).sum() / w.sum(), rel=1e-5)
    assert float(logs["perplexity"]) == pytest.approx(np.exp(float(logs["loss"])), rel=1e-5)

    # Targets in unused slots change nothing: same loss, same weights after
    # training; a used slot's target does.
    model, logs = trained_copy(make_config, (x, y, w))
    other, other_logs = trained_copy(make_config, (x, np.where(w > 0, y, (y + 7) % V), w))
    assert other_logs["loss"] == pytest.approx(logs["loss"], rel=1e-6)
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    y_used = y.copy()
    y_used[0, 0] = (y_used[0, 0] + 1 - 9) % (V - 9) + 9
    _, used_logs = trained_copy(make_config, (x, y_used, w))
    assert used_logs["loss"] != pytest.approx(logs["loss"], rel=1e-6)


def test_mlm_gradient_accumulation_matches_one_batch(make_config):
    x, y, w = mlm_batch()
    x = {k: np.concatenate([v, v[::-1]]) for k, v in x.items()}
    y, w = np.concatenate([y, y[::-1]]), np.concatenate([w, w[::-1]])
    big, big_logs = trained_copy(make_config, (x, y, w), **{"train.batch_size": 4})
    acc, acc_logs = trained_copy(make_config, (x, y, w), **{"train.batch_size": 4,
                                                            "train.grad_accumulation_steps": 2})
    assert acc_logs["loss"] == pytest.approx(big_logs["loss"], rel=1e-5)
    for a, b in zip(big.weights, acc.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-6)


@pytest.mark.slow
def test_classifier_step_and_metrics(make_config):
    keras.utils.set_random_seed(0)
    config = make_config({"objective": "classify", "tokenizer.kind": "wordpiece", "model.block_size": T,
                          "train.learning_rate": 1e-2, "train.warmup_steps": 0})
    model = build_model(config, V, labels=("a", "b", "c"))
    assert isinstance(model, TextClassifier) and model.classifier.units == 3
    model.compile(optimizer=build_optimizer(config.train, model))
    x = inputs(lengths=(T, 7))
    labels = np.array([2, 0], "int32")
    step = tf.function(model.train_step)
    losses = [float(step((x, labels))["loss"]) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]
    logs = model.metric_results()
    assert "perplexity" not in logs and {"loss", "accuracy"} <= set(logs)
    np.testing.assert_array_equal(np.argmax(model(x).numpy(), axis=-1), labels)
