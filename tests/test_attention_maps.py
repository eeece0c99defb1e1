"""The attention probabilities the layers return when asked (issue 32,
pictures): each equals softmax(Q K^T / sqrt(D) + mask) written out in NumPy
from the layer's own projection weights, with learned and rotary positions,
packed segments and grouped key/value heads; and asking for them changes
no output."""

import keras
import numpy as np
import pytest

from tfchat.model.gpt import GPT
from tfchat.model.layers import CausalSelfAttention

V, T = 37, 12


def randomize(model, seed, std=0.3):
    """Weights far from an init, so attention is peaked and a wrong mask or
    a wrong rotation shows."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0, std, v.shape).astype("float32"))


def numpy_segment_positions(segment_ids):
    positions = np.zeros_like(segment_ids)
    for b, row in enumerate(segment_ids):
        for t in range(1, len(row)):
            positions[b, t] = positions[b, t - 1] + 1 if row[t] == row[t - 1] else 0
    return positions


def numpy_rope(x, inverse_frequencies, positions):
    """x [B, T, N, D] rotated in the rotate-half convention (dims i, i + D/2)."""
    freq = positions[..., None].astype("float64") * inverse_frequencies  # [B, T, D/2]
    angles = np.concatenate([freq, freq], axis=-1)[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def direct_probabilities(layer, x, segment_ids=None, padding_mask=None):
    """softmax(Q K^T / sqrt(D) + mask) [B, H, T, T] from the fused q/k/v
    kernel: grouped heads repeated, rotary positions restarting in each
    segment, a causal mask within segments, padded keys hidden."""
    H, K, D = layer.num_heads, layer.num_kv_heads, layer.head_dim
    B, L, _ = x.shape
    qkv = x.astype("float64") @ layer.qkv.kernel.numpy()
    if layer.qkv_bias:
        qkv = qkv + layer.qkv.bias.numpy()
    q = qkv[..., : H * D].reshape(B, L, H, D)
    k = qkv[..., H * D : (H + K) * D].reshape(B, L, K, D)
    if layer.rope:
        positions = (np.tile(np.arange(L), (B, 1)) if segment_ids is None
                     else numpy_segment_positions(segment_ids))
        q = numpy_rope(q, layer.inverse_frequencies, positions)
        k = numpy_rope(k, layer.inverse_frequencies, positions)
    k = np.repeat(k, H // K, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D)
    visible = np.broadcast_to(np.arange(L)[None, :] <= np.arange(L)[:, None], (B, 1, L, L))
    if segment_ids is not None:
        visible = visible & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    if padding_mask is not None:
        visible = visible & padding_mask.astype(bool)[:, None, None, :]
    scores = np.where(visible, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


# Two packed rows: three segments, then two (the second row's first one long).
SEGMENTS = np.array([[1] * 4 + [2] * 5 + [3] * 3, [1] * 8 + [2] * 4], "int32")


@pytest.mark.parametrize("rope", [False, True], ids=["no_rope", "rope"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("packed", [False, True], ids=["one_sequence", "packed"])
def test_layer_probabilities_equal_direct_softmax(rope, kv_heads, packed):
    keras.utils.set_random_seed(0)
    layer = CausalSelfAttention(num_heads=4, hidden_dim=32, num_kv_heads=kv_heads, rope=rope)
    x = np.random.default_rng(1).normal(size=(2, T, 32)).astype("float32")
    segment_ids = SEGMENTS if packed else None
    layer(x)
    randomize(layer, seed=2)
    plain = layer(x, segment_ids=segment_ids).numpy()
    y, probs = layer(x, segment_ids=segment_ids, return_attention=True)
    assert probs.shape == (2, 4, T, T)
    expected = direct_probabilities(layer, x, segment_ids)
    assert np.abs(probs.numpy() - expected).max() < 1e-5
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, atol=1e-5)
    assert np.array_equal(y.numpy(), plain)  # asking changes nothing
    if packed:
        # No query sees another segment's keys.
        other = SEGMENTS[:, :, None] != SEGMENTS[:, None, :]
        assert np.all(probs.numpy()[np.broadcast_to(other[:, None], probs.shape)] == 0)


def test_layer_probabilities_with_padding_and_a_cache():
    """Padded keys get no weight; with a cache the probabilities span all S
    cached positions, and the output and cache are those of the plain call."""
    keras.utils.set_random_seed(0)
    layer = CausalSelfAttention(num_heads=4, hidden_dim=32, num_kv_heads=2, rope=True)
    x = np.random.default_rng(3).normal(size=(2, T, 32)).astype("float32")
    layer(x)
    randomize(layer, seed=4)
    padding = np.ones((2, T), "int32")
    padding[1, -3:] = 0
    _, probs = layer(x, padding_mask=padding, return_attention=True)
    expected = direct_probabilities(layer, x, padding_mask=padding)
    assert np.abs(probs.numpy() - expected).max() < 1e-5

    cache = np.zeros((2, 2, 16, 2, 8), "float32")
    y, new_cache = layer(x[:, :5], cache=cache, cache_update_index=0)
    y2, new_cache2, probs = layer(x[:, :5], cache=cache, cache_update_index=0,
                                  return_attention=True)
    assert probs.shape == (2, 4, 5, 16)
    assert np.array_equal(y.numpy(), y2.numpy())
    assert np.array_equal(new_cache.numpy(), new_cache2.numpy())
    assert np.abs(probs.numpy()[..., :5] - direct_probabilities(layer, x[:, :5])).max() < 1e-5
    assert np.all(probs.numpy()[..., 5:] == 0)  # empty cache slots are future positions


def make_gpt(position, kv_heads=0, seed=0):
    keras.utils.set_random_seed(seed)
    gpt = GPT(vocabulary_size=V, num_layers=2, num_heads=4, hidden_dim=32, block_size=T,
              position=position, num_kv_heads=kv_heads)
    gpt.build()
    randomize(gpt, seed=seed + 1, std=0.2)
    return gpt


@pytest.mark.parametrize("position,kv_heads", [("learned", 0), ("rope", 2)])
@pytest.mark.parametrize("packed", [False, True], ids=["one_sequence", "packed"])
def test_gpt_attention_maps_equal_direct_softmax_and_change_no_logits(position, kv_heads,
                                                                      packed):
    """Each block's map from the block's own input (embedding, or the block
    before it) through its norm and q/k projections; logits as `call`'s."""
    gpt = make_gpt(position, kv_heads)
    ids = np.random.default_rng(5).integers(0, V, size=(2, T)).astype("int32")
    segment_ids = SEGMENTS if packed else None
    logits, maps = gpt.call_with_attention(ids, segment_ids=segment_ids)
    assert len(maps) == gpt.num_layers
    assert np.array_equal(logits.numpy(), gpt(ids, segment_ids=segment_ids).numpy())
    x = gpt._embed(ids, 0, False, segment_ids)
    for block, probs in zip(gpt.blocks, maps):
        normed = block.attention_norm(x).numpy()
        expected = direct_probabilities(block.attention, normed, segment_ids)
        assert probs.shape == (2, 4, T, T)
        assert np.abs(probs.numpy() - expected).max() < 1e-5
        x = block(x, segment_ids=segment_ids)
    maps_only = gpt.attention_maps(ids, segment_ids=segment_ids)
    for a, b in zip(maps_only, maps):
        assert np.array_equal(a.numpy(), b.numpy())
    # Learned positions restart per segment as rope's do: a packed segment's
    # map is the one it gets alone.
    if packed:
        alone = gpt.attention_maps(ids[:1, 4:9])
        np.testing.assert_allclose(maps[1].numpy()[0, :, 4:9, 4:9], alone[1].numpy()[0],
                                   atol=1e-5)


def test_default_call_graph_has_no_attention_output():
    """The traced default call is untouched: the same ops with the flag
    absent as with it off, and fewer outputs than with it on."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    layer = CausalSelfAttention(num_heads=4, hidden_dim=32)
    layer.build((None, None, 32))
    spec = tf.TensorSpec((None, None, 32), tf.float32)

    def ops_of(**kwargs):
        graph = tf.function(lambda x: layer(x, **kwargs)).get_concrete_function(spec).graph
        return sorted(op.type for op in graph.get_operations())

    assert ops_of() == ops_of(return_attention=False)
    on = tf.function(lambda x: layer(x, return_attention=True)).get_concrete_function(spec)
    assert len(on.outputs) == 2
