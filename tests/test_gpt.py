import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfchat.model.gpt import GPT

V, T = 50, 16
KWARGS = dict(vocabulary_size=V, num_layers=2, num_heads=2, hidden_dim=32,
              block_size=T)


# The decoder options of Llama-style checkpoints (tests/test_decoder_options.py
# checks them against keras-hub); the cache tests below run both layouts.
LLAMA_STYLE = dict(norm="rmsnorm", position="rope", mlp="swiglu", num_kv_heads=1,
                   tie_embeddings=False, qkv_bias=False, use_bias=False,
                   rope_scaling_factor=8.0, rope_original_max_positions=8)
LAYOUTS = pytest.mark.parametrize("layout", [{}, LLAMA_STYLE], ids=["gpt2", "llama"])


def make_gpt(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    gpt = GPT(**{**KWARGS, **kwargs})
    gpt.build()
    # Weights larger than the 0.02 init, so attention is far from uniform and
    # every position's influence is visible.
    rng = np.random.default_rng(seed)
    gpt.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32")
                     for w in gpt.get_weights()])
    return gpt


def token_ids(batch=2, length=T, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(batch, length)).astype("int32")


def test_output_shape_and_dtype():
    gpt = GPT(**KWARGS)
    logits = gpt(token_ids())
    assert tuple(logits.shape) == (2, T, V)
    assert logits.dtype == "float32"


def test_causal():
    gpt = make_gpt()
    ids = token_ids()
    position = 9
    changed = ids.copy()
    changed[:, position] = (changed[:, position] + 1) % V
    before, after = gpt(ids).numpy(), gpt(changed).numpy()
    np.testing.assert_allclose(after[:, :position], before[:, :position], atol=1e-5)
    # Every later position sees the change.
    assert np.abs(after[:, position:] - before[:, position:]).max(axis=-1).min() > 1e-3


def test_lm_head_is_tied_to_token_embedding():
    gpt = GPT(**KWARGS)
    gpt.build()
    assert not any(tuple(w.shape) in ((32, V), (V, 32)) for w in gpt.weights
                   if w is not gpt.token_embedding.embeddings)
    counted = sum(math.prod(w.shape) for w in gpt.weights)
    assert gpt.num_params(non_embedding=False) == counted
    assert gpt.num_params() == counted - T * 32


def test_get_config_round_trip():
    gpt = make_gpt(intermediate_dim=48, dropout=0.1)
    ids = token_ids()
    expected = gpt(ids).numpy()
    config = gpt.get_config()
    assert config["intermediate_dim"] == 48 and config["dropout"] == 0.1
    clone = GPT.from_config(config)
    clone.build()
    clone.set_weights(gpt.get_weights())
    np.testing.assert_allclose(clone(ids).numpy(), expected, atol=1e-5)
    assert clone.get_config() == config


def test_save_and_load_keras_file(tmp_path):
    gpt = make_gpt()
    ids = token_ids()
    path = str(tmp_path / "gpt.keras")
    gpt.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, GPT)
    np.testing.assert_allclose(loaded(ids).numpy(), gpt(ids).numpy(), atol=1e-5)


@LAYOUTS
def test_call_with_cache_token_by_token_matches_full_pass(layout):
    gpt = make_gpt(**layout)
    ids = token_ids(length=12)
    full = gpt(ids).numpy()
    cache = gpt.build_cache(batch_size=2, max_length=T)
    # [layers, B, keys and values, S, key/value heads, D]
    assert tuple(cache.shape) == (2, 2, 2, T, layout.get("num_kv_heads", 2), 16)
    steps = []
    for t in range(ids.shape[1]):
        logits, cache = gpt.call_with_cache(ids[:, t : t + 1], cache, t)
        steps.append(logits.numpy())
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)


@LAYOUTS
def test_call_with_cache_prefill_then_steps_in_tf_function(layout):
    gpt = make_gpt(**layout)
    ids = token_ids(length=10)
    full = gpt(ids).numpy()
    step = tf.function(gpt.call_with_cache)
    cache = gpt.build_cache(batch_size=2, max_length=T)
    logits, cache = step(ids[:, :6], cache, tf.constant(0))
    np.testing.assert_allclose(logits.numpy(), full[:, :6], atol=1e-4)
    for t in range(6, 10):
        logits, cache = step(ids[:, t : t + 1], cache, tf.constant(t))
        np.testing.assert_allclose(logits.numpy()[:, 0], full[:, t], atol=1e-4)


def test_mixed_precision_logits_are_float32():
    gpt = GPT(**KWARGS, dtype="mixed_bfloat16")
    ids = token_ids()
    assert gpt(ids).dtype == "float32"
    cache = gpt.build_cache(batch_size=2, max_length=T)
    logits, _ = gpt.call_with_cache(ids[:, :1], cache, 0)
    assert logits.dtype == "float32"


def test_dropout_changes_training_outputs_only():
    gpt = make_gpt(dropout=0.5)
    ids = token_ids()
    np.testing.assert_allclose(gpt(ids).numpy(), gpt(ids, training=False).numpy())
    assert not np.allclose(gpt(ids, training=True).numpy(), gpt(ids).numpy())


def test_bad_hidden_dim_raises():
    with pytest.raises(ValueError, match="divisible"):
        GPT(**{**KWARGS, "hidden_dim": 30, "num_heads": 4})
