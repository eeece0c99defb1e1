"""The decoder features newer families need (issue 29): a sliding attention
window, heads of their own width, RMSNorm on queries and keys, GeGLU,
RMSNorm scaled by 1 + weight and embeddings scaled by sqrt(width). Each is
checked against a direct NumPy computation, and the KV-cached generator
against a full forward pass."""

import keras
import numpy as np
import pytest

from tfchat import config as config_lib
from tfchat.errors import TfchatError
from tfchat.inference.generator import Generator, greedy_uncached
from tfchat.model.gpt import GPT
from tfchat.model.layers import CausalSelfAttention, RMSNorm, TransformerBlock

V, T = 61, 24


def randomize(model, seed, std=0.3):
    """Weights far from an init, so attention is peaked and a wrong mask or
    a wrong norm shows in the outputs."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0, std, v.shape).astype("float32"))


def rms_norm(x, scale, epsilon, unit_offset=False):
    x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + epsilon)
    return x * ((1 + scale) if unit_offset else scale)


def direct_attention(layer, x, window):
    """The attention layer's output written out in NumPy: q/k/v from the
    fused kernel, per-head RMSNorm, grouped heads, and a mask that is
    causal and, with `window`, a band: key s is seen by query t when
    t - window < s <= t."""
    H, K, D = layer.num_heads, layer.num_kv_heads, layer.head_dim
    B, L, _ = x.shape
    qkv = x @ layer.qkv.kernel.numpy()
    if layer.qkv_bias:
        qkv = qkv + layer.qkv.bias.numpy()
    q = qkv[..., : H * D].reshape(B, L, H, D)
    k = qkv[..., H * D : (H + K) * D].reshape(B, L, K, D)
    v = qkv[..., (H + K) * D :].reshape(B, L, K, D)
    if layer.qk_norm:
        q = rms_norm(q, layer.q_norm.scale.numpy(), layer.norm_epsilon)
        k = rms_norm(k, layer.k_norm.scale.numpy(), layer.norm_epsilon)
    k = np.repeat(k, H // K, axis=2)
    v = np.repeat(v, H // K, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D)
    t, s = np.arange(L)[:, None], np.arange(L)[None, :]
    visible = s <= t
    if window:
        visible &= s > t - window
    scores = np.where(visible, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    y = np.einsum("bhts,bshd->bthd", probs, v).reshape(B, L, H * D)
    y = y @ layer.proj.kernel.numpy()
    if layer.use_bias:
        y = y + layer.proj.bias.numpy()
    return y


@pytest.mark.parametrize("length", [5, 8, 20])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_sliding_window_attention_equals_direct_masked_computation(length, qk_norm):
    """Window 8: sequences shorter than it, as long, and longer (where the
    band cuts keys off); with 12-wide heads on a 32-wide model (H * D != C),
    grouped key/value heads and q/k norms."""
    keras.utils.set_random_seed(0)
    layer = CausalSelfAttention(
        num_heads=4, hidden_dim=32, num_kv_heads=2, head_dim=12, sliding_window=8,
        qk_norm=qk_norm, rope=False, qkv_bias=True, use_bias=False,
    )
    x = np.random.default_rng(1).normal(size=(2, length, 32)).astype("float32")
    layer(x)
    randomize(layer, seed=2)
    got = layer(x).numpy()
    expected = direct_attention(layer, x, window=8)
    assert np.abs(got - expected).max() < 1e-4
    if length > 8:
        # The band matters: without it the later positions differ.
        unbanded = direct_attention(layer, x, window=0)
        assert np.abs(unbanded[:, 8:] - expected[:, 8:]).max() > 1e-2
        assert np.abs(unbanded[:, :8] - expected[:, :8]).max() < 1e-4


def test_rmsnorm_plus_one_and_geglu_equal_direct_computation():
    keras.utils.set_random_seed(0)
    norm = RMSNorm(epsilon=1e-6, unit_offset=True)
    x = np.random.default_rng(0).normal(size=(3, 7, 16)).astype("float32")
    norm(x)
    assert np.all(norm.scale.numpy() == 0)  # starts as the identity scale
    norm.scale.assign(np.linspace(-0.5, 0.5, 16).astype("float32"))
    expected = rms_norm(x, norm.scale.numpy(), 1e-6, unit_offset=True)
    assert np.abs(norm(x).numpy() - expected).max() < 1e-5

    block = TransformerBlock(
        num_heads=2, hidden_dim=16, intermediate_dim=24, norm="rmsnorm_plus_one",
        mlp="geglu", rope=True, qkv_bias=False, use_bias=False, head_dim=8,
    )
    block(x)
    randomize(block, seed=3)
    attended = x + block.attention(block.attention_norm(x)).numpy()
    normed = block.mlp_norm(attended).numpy()
    gate = normed @ block.mlp_gate.kernel.numpy()
    gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
    expected = attended + (gelu * (normed @ block.mlp_in.kernel.numpy())) @ block.mlp_out.kernel.numpy()
    assert np.abs(block(x).numpy() - expected).max() < 1e-4


# A Gemma-like and a Mistral/Qwen3-like option set.
FEATURES = {
    "gemma_like": dict(norm="rmsnorm_plus_one", mlp="geglu", head_dim=12, num_kv_heads=1,
                       scale_embeddings=True, tie_embeddings=True),
    "windowed_qk_norm": dict(norm="rmsnorm", mlp="swiglu", head_dim=8, num_kv_heads=2,
                             sliding_window=5, qk_norm=True, tie_embeddings=False),
}


def make_gpt(features, seed=0, vocabulary_size=V):
    keras.utils.set_random_seed(seed)
    gpt = GPT(
        vocabulary_size=vocabulary_size, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=48,
        block_size=T, position="rope", qkv_bias=False, use_bias=False, **FEATURES[features],
    )
    gpt.build()
    randomize(gpt, seed=seed + 1, std=0.2)
    return gpt


def test_scale_embeddings_multiplies_the_embedding_by_sqrt_width():
    """With an untied head, a scaled model equals an unscaled one whose
    embedding table is multiplied by sqrt(32) (the head left alone)."""
    keras.utils.set_random_seed(0)
    options = dict(vocabulary_size=V, num_layers=2, num_heads=4, hidden_dim=32,
                   intermediate_dim=48, block_size=T, position="rope", norm="rmsnorm_plus_one",
                   mlp="geglu", tie_embeddings=False)
    scaled = GPT(**options, scale_embeddings=True)
    scaled.build()
    randomize(scaled, seed=4, std=0.2)
    plain = GPT(**options)
    plain.build()
    plain.set_weights(scaled.get_weights())
    ids = np.array([[3, 5, 7, 11]], "int32")
    assert np.abs(scaled(ids).numpy() - plain(ids).numpy()).max() > 1e-2
    plain.token_embedding.embeddings.assign(scaled.token_embedding.embeddings.numpy() * np.sqrt(32))
    np.testing.assert_allclose(plain(ids).numpy(), scaled(ids).numpy(), atol=1e-4)


@pytest.mark.parametrize("features", sorted(FEATURES))
def test_cached_generation_equals_full_forward(features):
    """Past the window too (the prompt plus 14 new tokens is longer than 5),
    so the band in the cached path is checked where it cuts keys off."""
    gpt = make_gpt(features)
    from tfchat.data.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz .,!?"])
    gpt = make_gpt(features, vocabulary_size=tokenizer.vocabulary_size)
    generator = Generator(gpt, tokenizer)
    prompts = [[4, 9, 2, 7], [1, 3], [5, 6, 7, 8, 9, 10]]
    cached = generator.generate_ids(prompts, 14, generator.sampler(0.0), stop_at_eos=False)
    for prompt, row in zip(prompts, cached):
        assert row == greedy_uncached(gpt, [prompt], 14).numpy()[0].tolist()
    # The last step's logits, one token at a time through the cache, against
    # a full pass.
    ids = np.array([prompts[2] + cached[2][:10]], "int32")
    full = gpt(ids).numpy()[0, -1]
    cache = gpt.build_cache(1, T)
    for index in range(ids.shape[1]):
        logits, cache = gpt.call_with_cache(ids[:, index : index + 1], cache, index)
    assert np.abs(logits.numpy()[0, -1] - full).max() < 1e-4


@pytest.mark.parametrize("features", sorted(FEATURES))
def test_config_round_trip_keeps_every_feature(features):
    gpt = make_gpt(features)
    again = GPT.from_config(gpt.get_config())
    again.build()
    again.set_weights(gpt.get_weights())
    for name, value in FEATURES[features].items():
        assert again.get_config()[name] == value
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]], "int32")
    np.testing.assert_allclose(again(ids).numpy(), gpt(ids).numpy(), atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"hidden_dim": 30, "num_heads": 4}, "divisible"),
    ({"head_dim": -1}, "head_dim"),
    ({"sliding_window": -2}, "sliding_window"),
    ({"mlp": "reglu"}, "geglu"),
    ({"lora_targets": "qkv,mlp_gate"}, "mlp_gate"),
])
def test_config_rejects_bad_feature_values(overrides, message):
    with pytest.raises(TfchatError, match=message):
        config_lib.validate(config_lib.build_config(overrides={"model": overrides}))
