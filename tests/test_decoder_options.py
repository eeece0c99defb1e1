"""The decoder options of issue 15 (RMSNorm, rope with Llama 3 scaling,
SwiGLU, grouped-query attention, an untied head, optional biases): logits
equal keras-hub's Llama 3 and Qwen2, the KV cache equals a full pass,
configs round-trip, a llama-style run trains (with LoRA too)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfchat import config as config_lib
from tfchat.errors import TfchatError
from tfchat.inference.generator import Generator, greedy_uncached
from tfchat.model.gpt import GPT
from tfchat.families import llama, qwen2
from tfchat.model.layers import rope_inverse_frequencies

V, T = 97, 16
SHAPE = dict(vocabulary_size=V, num_layers=2, hidden_dim=32, intermediate_dim=64)
# A llama-style tfchat decoder: 4 query heads, 2 key/value heads.
LLAMA = dict(
    SHAPE, num_heads=4, num_kv_heads=2, block_size=T, norm="rmsnorm",
    norm_epsilon=1e-6, position="rope", mlp="swiglu", tie_embeddings=False,
    qkv_bias=False, use_bias=False,
)


def scale_up(model, seed, std=0.2):
    """Random weights far larger than an init (norm scales around 1), so
    attention is peaked and the logits are far from zero."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if len(v.shape) == 1 and "scale" in v.path:
            v.assign(1 + rng.normal(0, std, v.shape).astype("float32"))
        else:
            v.assign(rng.normal(0, std, v.shape).astype("float32"))


def token_ids(batch=2, length=12, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(batch, length)).astype("int32")


def keras_hub_logits(backbone, ids):
    """What keras-hub's CausalLM computes: the backbone's output times the
    (reverse or tied) token embedding."""
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return backbone.token_embedding(hidden, reverse=True).numpy()


def test_llama3_logits_equal_keras_hub():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.Llama3Backbone(
        **SHAPE, num_query_heads=4, num_key_value_heads=2,
        rope_max_wavelength=10000, rope_frequency_adjustment_factor=8.0,
        rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        # Wavelengths 6, 63, 628, 6283 against 128/4 and 128/1: one high,
        # one medium (smoothed) and two low (scaled) frequencies.
        rope_pretraining_sequence_length=128, layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
    )
    scale_up(backbone, seed=1)
    args = llama.gpt_args(backbone, block_size=T)
    assert args["rope_scaling_factor"] == 8.0 and not args["tie_embeddings"]
    gpt = GPT(**args)
    gpt.build()
    llama.FAMILY.copy_weights(backbone, gpt)
    ids = token_ids()
    expected = keras_hub_logits(backbone, ids)
    got = gpt(ids).numpy()
    diff = np.abs(got - expected).max()
    print(f"llama3 max abs diff {diff:.2e} (logits std {expected.std():.2f})")
    assert expected.std() > 1.0
    assert diff < 1e-4


def test_qwen2_logits_equal_keras_hub():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.Qwen2Backbone(
        **SHAPE, num_query_heads=4, num_key_value_heads=2,
        rope_max_wavelength=10000, layer_norm_epsilon=1e-6, tie_word_embeddings=True,
    )
    scale_up(backbone, seed=2)
    args = qwen2.gpt_args(backbone, block_size=T)
    assert args["qkv_bias"] and not args["use_bias"] and args["tie_embeddings"]
    gpt = GPT(**args)
    gpt.build()
    qwen2.FAMILY.copy_weights(backbone, gpt)
    ids = token_ids(seed=1)
    expected = keras_hub_logits(backbone, ids)
    got = gpt(ids).numpy()
    diff = np.abs(got - expected).max()
    print(f"qwen2 max abs diff {diff:.2e} (logits std {expected.std():.2f})")
    assert expected.std() > 1.0
    assert diff < 1e-4


def test_llama3_rope_scaling_changes_only_low_frequencies():
    plain = rope_inverse_frequencies(8)
    scaled = rope_inverse_frequencies(8, scaling_factor=8.0, original_max_positions=128)
    assert scaled[0] == plain[0]  # high frequency: kept
    assert plain[1] / 8 < scaled[1] < plain[1]  # medium: smoothed
    np.testing.assert_allclose(scaled[2:], plain[2:] / 8, rtol=1e-6)  # low: scaled


def make_llama(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    gpt = GPT(**{**LLAMA, **overrides})
    gpt.build()
    scale_up(gpt, seed, std=0.3)
    return gpt


def test_layout_of_a_llama_style_gpt():
    gpt = make_llama()
    names = {w.path for w in gpt.weights}
    assert any(n.endswith("lm_head/kernel") for n in names)
    assert not any("position_embedding" in n or n.endswith("bias") for n in names)
    qkv = gpt.blocks[0].attention.qkv.kernel
    assert tuple(qkv.shape) == (32, (4 + 2 * 2) * 8)
    assert tuple(gpt.build_cache(2, T).shape) == (2, 2, 2, T, 2, 8)  # [B, L, 2, S, K, D]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_cached_greedy_equals_uncached_greedy(jit_compile):
    from tfchat.data.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz .,!?"])
    keras.utils.set_random_seed(0)
    gpt = GPT(**{**LLAMA, "vocabulary_size": tokenizer.vocabulary_size, "block_size": 48})
    gpt.build()
    scale_up(gpt, 0, std=0.5)
    generator = Generator(gpt, tokenizer, jit_compile=jit_compile)
    prompts = [tokenizer.tokenize(tf.constant(p)).numpy().tolist()
               for p in ("hello world", "a", "the quick brown fox")]
    cached = generator.generate_ids(prompts, 20, generator.sampler(0.0), stop_at_eos=False)
    for prompt, row in zip(prompts, cached):
        assert row == greedy_uncached(gpt, [prompt], 20).numpy()[0].tolist()
        assert len(set(row)) > 3


def test_get_config_round_trip():
    gpt = make_llama(rope_theta=500000.0, rope_scaling_factor=8.0,
                     rope_original_max_positions=64, qkv_bias=True)
    ids = token_ids()
    config = gpt.get_config()
    assert (config["norm"], config["position"], config["mlp"]) == ("rmsnorm", "rope", "swiglu")
    assert (config["num_kv_heads"], config["tie_embeddings"], config["rope_theta"]) == (2, False, 500000.0)
    clone = GPT.from_config(config)
    clone.build()
    clone.set_weights(gpt.get_weights())
    np.testing.assert_allclose(clone(ids).numpy(), gpt(ids).numpy(), atol=1e-5)
    assert clone.get_config() == config


def test_mixed_precision_llama_logits_are_float32():
    gpt = GPT(**LLAMA, dtype="mixed_bfloat16")
    ids = token_ids()
    assert gpt(ids).dtype == "float32"
    logits, _ = gpt.call_with_cache(ids[:, :1], gpt.build_cache(2, T), 0)
    assert logits.dtype == "float32"


@pytest.mark.parametrize("overrides, message", [
    ({"norm": "batchnorm"}, "layernorm, rmsnorm"),
    ({"position": "alibi"}, "learned, rope"),
    ({"mlp": "relu"}, "gelu, swiglu"),
    ({"num_heads": 4, "num_kv_heads": 3}, "divisible by model.num_kv_heads"),
    ({"lora_targets": "qkv,mlp_gate"}, "mlp_gate needs model.mlp swiglu"),
])
def test_config_rejects_bad_decoder_options(overrides, message):
    with pytest.raises(TfchatError, match=message):
        config_lib.validate(config_lib.build_config(overrides={"model": overrides}))


def test_gpt_rejects_bad_options():
    with pytest.raises(ValueError, match="layernorm, rmsnorm"):
        GPT(**{**LLAMA, "norm": "batchnorm"})
    with pytest.raises(ValueError, match="divisible by num_kv_heads"):
        GPT(**{**LLAMA, "num_kv_heads": 3})


LLAMA_SETTINGS = {
    "model.norm": "rmsnorm", "model.position": "rope", "model.mlp": "swiglu",
    "model.num_heads": 4, "model.num_kv_heads": 2, "model.tie_embeddings": False,
    "model.qkv_bias": False, "model.use_bias": False, "model.norm_epsilon": 1e-6,
}


@pytest.mark.slow
def test_llama_style_training_run_loss_falls_then_lora_fine_tunes(make_config):
    from tfchat.job import train
    from tfchat.model.lora import lora_layers
    from tfchat.run import load_run

    config = make_config({**LLAMA_SETTINGS, "name": "llama"})
    history = train(config, verbose=0)
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    run = load_run(config.run_dir)
    assert (run.backbone.position, run.backbone.num_kv_heads) == ("rope", 2)
    assert run.backbone.lm_head is not None

    lora = make_config({
        **LLAMA_SETTINGS, "name": "llama_lora", "init_from": config.run_dir,
        "model.lora_rank": 2, "model.lora_targets": "qkv,proj,mlp_in,mlp_out,mlp_gate",
    })
    tuned = train(lora, verbose=0)
    assert tuned[-1]["loss"] < tuned[0]["loss"]
    # Five adapted layers in each of the two blocks.
    assert len(lora_layers(load_run(lora.run_dir).backbone)) == 10


def test_init_from_rejects_another_decoder_layout(make_config):
    from tfchat.job import train

    config = make_config({**LLAMA_SETTINGS, "name": "llama", "train.max_steps": 2,
                          "train.eval_interval": 2, "train.log_interval": 1,
                          "train.warmup_steps": 1})
    train(config, verbose=0)
    other = make_config({**LLAMA_SETTINGS, "name": "gqa1", "init_from": config.run_dir,
                         "model.num_kv_heads": 1, "train.max_steps": 2,
                         "train.warmup_steps": 1})
    with pytest.raises(TfchatError, match="model.num_kv_heads is 1 but init_from"):
        train(other, verbose=0)


@pytest.mark.slow
def test_llama_style_export_serves_without_xla_ops(make_config, tmp_path):
    """An exported llama-style causal run loads in a fresh process without
    Keras or tfchat and generates the Keras model's greedy text; its op set
    is core TensorFlow, nothing XLA-only (`serve_in_fresh_process` checks)."""
    from serving_calls import serve_in_fresh_process
    from tfchat.job import train
    from tfchat.run import load_run
    from tfchat.serving.export import export_run

    config = make_config({**LLAMA_SETTINGS, "name": "llama_export", "train.max_steps": 10,
                          "train.eval_interval": 10})
    train(config, verbose=0)
    run = load_run(config.run_dir)
    path = export_run(run, saved_models_dir=str(tmp_path / "saved"))
    prompts = ["the quick", "dog. the"]
    greedy = Generator(run.backbone, run.tokenizer).generate(prompts, 5, temperature=0)
    inputs = {"prompt": (prompts, "string"), "max_new_tokens": ([5], "int32"),
              "temperature": ([0.0], "float32"), "top_k": ([0], "int32"),
              "top_p": ([1.0], "float32"), "seed": ([0], "int64")}
    out = serve_in_fresh_process(path, [("signature", "generate", inputs)])
    assert out["not_core"] == []
    # The KV cache is written with the core op, not XlaDynamicUpdateSlice.
    assert "TensorStridedSliceUpdate" in out["ops"]
    assert [t.decode() if isinstance(t, bytes) else t for t in out["calls"][0]["text"]] == greedy
