"""Tiny random checkpoints made by keras-hub itself, for the pretrained-model
tests: per family a keras-hub `CausalLM` (the reference), saved as a
keras-hub preset and exported in Hugging Face form. Nothing is downloaded.

Random weights are redrawn with a larger spread than keras-hub's
initializers, so greedy decoding writes varied text rather than one token
over and over (a weak comparison; ../shared/research/verified-pitfalls.md #9).
"""

import json
import os

import keras
import keras_hub
import numpy as np
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

from tfchat.families.qwen2 import qwen2_tokenizer_json

FAMILIES = ("gpt2", "llama", "qwen2")
# Llama 2's layout with its SentencePiece tokenizer (keras-hub's LlamaBackbone
# and LlamaTokenizer; keras-hub exports it as a preset only).
SENTENCEPIECE_LLAMA = "llama_sentencepiece"
# SmolLM2-Instruct's layout: a Llama with ChatML's markers as special tokens.
CHATML_LLAMA = "llama_chatml"
# Byte-level BPE: every byte is a token, so any text tokenizes; a few merges
# make multi-byte tokens, as in a real vocabulary.
_BYTE_SYMBOLS = list(bytes_to_unicode()[1])
MERGES = [
    "Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "e d", "Ġ w",
    "o u", "Ġ h", "l l", "Ġ b", "i s", "Ċ Ċ", "Ġ Ġ",
]
_SPECIALS = {
    "gpt2": ["<|endoftext|>"],
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eot_id|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}
_SPECIALS[CHATML_LLAMA] = _SPECIALS["llama"] + ["<|im_start|>", "<|im_end|>"]
# What real checkpoints' config.json has and keras-hub 0.32's exporter leaves
# out (verified-pitfalls #7; Qwen2's loader reads use_sliding_window).
_HF_CONFIG_EXTRAS = {
    "gpt2": {"architectures": ["GPT2LMHeadModel"]},
    "llama": {"architectures": ["LlamaForCausalLM"]},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False,
              "sliding_window": 4096, "max_window_layers": 2},
}


def vocabulary(family):
    tokens = list(_BYTE_SYMBOLS)
    for merge in MERGES:
        if merge.replace(" ", "") not in tokens:
            tokens.append(merge.replace(" ", ""))
    tokens += _SPECIALS[family]
    return {token: i for i, token in enumerate(tokens)}


def make_causal_lm(family, seed=0, scale=0.3, **overrides):
    """A keras-hub CausalLM of `family` with random weights (std `scale`;
    norms left at one) and its tokenizer in its preprocessor."""
    keras.utils.set_random_seed(seed)
    vocab = vocabulary(family) if family in _SPECIALS else None
    if family == "gpt2":
        tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=MERGES)
        # GPT-2's exporter assumes a 4x MLP (verified-pitfalls #8).
        backbone = keras_hub.models.GPT2Backbone(**{
            "vocabulary_size": len(vocab), "num_layers": 2, "num_heads": 2,
            "hidden_dim": 32, "intermediate_dim": 128, "max_sequence_length": 64,
            **overrides})
        preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=32)
        model = keras_hub.models.GPT2CausalLM(backbone, preprocessor)
    elif family == "llama":
        tokenizer = keras_hub.models.Llama3Tokenizer(vocabulary=vocab, merges=MERGES)
        backbone = keras_hub.models.Llama3Backbone(**{
            "vocabulary_size": len(vocab), "num_layers": 2, "num_query_heads": 4,
            "num_key_value_heads": 2, "hidden_dim": 32, "intermediate_dim": 48,
            "rope_max_wavelength": 500000, "tie_word_embeddings": False, **overrides})
        preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(tokenizer, sequence_length=32)
        model = keras_hub.models.Llama3CausalLM(backbone, preprocessor)
    elif family == "qwen2":
        # Every special token is one token, chat markers included, as keras-hub
        # reads Qwen2's own tokenizer (its added tokens are unsplittable).
        tokenizer = keras_hub.models.QwenTokenizer(
            vocabulary=vocab, merges=MERGES, unsplittable_tokens=_SPECIALS["qwen2"])
        backbone = keras_hub.models.QwenBackbone(**{
            "vocabulary_size": len(vocab), "num_layers": 2, "num_query_heads": 4,
            "num_key_value_heads": 2, "hidden_dim": 32, "intermediate_dim": 48,
            "tie_word_embeddings": True, **overrides})
        preprocessor = keras_hub.models.QwenCausalLMPreprocessor(tokenizer, sequence_length=32)
        model = keras_hub.models.QwenCausalLM(backbone, preprocessor)
    elif family == CHATML_LLAMA:
        tokenizer = keras_hub.models.Llama3Tokenizer(
            vocabulary=vocab, merges=MERGES,
            misc_special_tokens={"<|start_header_id|>", "<|end_header_id|>", "<|im_start|>",
                                 "<|im_end|>"})
        backbone = keras_hub.models.Llama3Backbone(**{
            "vocabulary_size": len(vocab), "num_layers": 2, "num_query_heads": 4,
            "num_key_value_heads": 2, "hidden_dim": 32, "intermediate_dim": 48,
            "tie_word_embeddings": True, **overrides})
        preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(tokenizer, sequence_length=32)
        model = keras_hub.models.Llama3CausalLM(backbone, preprocessor)
    elif family == SENTENCEPIECE_LLAMA:
        tokenizer = keras_hub.models.LlamaTokenizer(proto=sentencepiece_proto())
        backbone = keras_hub.models.LlamaBackbone(**{
            "vocabulary_size": tokenizer.vocabulary_size(), "num_layers": 2,
            "num_query_heads": 4, "num_key_value_heads": 2, "hidden_dim": 32,
            "intermediate_dim": 48, **overrides})
        preprocessor = keras_hub.models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=32)
        model = keras_hub.models.LlamaCausalLM(backbone, preprocessor)
    else:
        raise ValueError(family)
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        if weight.path.endswith(("gamma", "beta", "scale")):
            continue  # norms stay at identity
        weight.assign(rng.normal(0.0, scale, weight.shape).astype("float32"))
    return model


# keras-hub's own GPT-2 conventions (its tests' vocabularies): <|endoftext|>
# is id 0 and is the start, end and padding token at once. A vocabulary just
# large enough for a prompt and the plain chat template.
GPT2_END_FIRST_TOKENS = [
    "<|endoftext|>", "Ġ", "Ċ", "t", "h", "e", "c", "a", "s", "o", "n", "U", "r", ":", "A", "i",
    ".", "Ġt", "he", "Ġthe", "at", "Ġc", "Ġs", "Ġo",
]
GPT2_END_FIRST_MERGES = ["Ġ t", "h e", "Ġt he", "a t", "Ġ c", "Ġ s", "Ġ o"]


def make_gpt2_end_first(seed=14):
    """A keras-hub GPT2CausalLM whose end token is id 0, as in keras-hub's own
    tests. With seed 14 its greedy continuations of "the cat sat on" end at
    a generated end token after a few tokens (the tests check that)."""
    keras.utils.set_random_seed(seed)
    vocab = {token: i for i, token in enumerate(GPT2_END_FIRST_TOKENS)}
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=GPT2_END_FIRST_MERGES)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocab), num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=128, max_sequence_length=64)
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        if not weight.path.endswith(("gamma", "beta")):
            weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=32)
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor)


def save_checkpoints(model, family, root):
    """Writes `model` as a keras-hub preset and in Hugging Face form under
    `root`; returns (preset_dir, hugging_face_dir)."""
    preset = os.path.join(root, f"{family}_preset")
    model.save_to_preset(preset)
    hugging_face = os.path.join(root, f"{family}_hf")
    model.export_to_transformers(hugging_face)
    config_path = os.path.join(hugging_face, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config.update(_HF_CONFIG_EXTRAS[family])
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    if family == "qwen2":
        # keras-hub writes Qwen2's vocab.json and merges.txt; its reader (like
        # real Qwen2 checkpoints) has tokenizer.json, written here in the
        # Hugging Face tokenizers layout (as tfchat's export writes it), with
        # every special token as an added token.
        tokenizer_json = qwen2_tokenizer_json(vocabulary(family), MERGES, _SPECIALS[family])
        with open(os.path.join(hugging_face, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_json, f)
    return preset, hugging_face


def keras_hub_logits(model, ids):
    """keras-hub's own logits of a CausalLM on `ids` [B, T] (no padding)."""
    hidden = model.backbone({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})
    return np.asarray(model.backbone.token_embedding(hidden, reverse=True))


def keras_hub_greedy(model, prompt_ids, new_tokens):
    """keras-hub's own `CausalLM.generate` with the greedy sampler, on ids
    (no preprocessor, never stopping early)."""
    bare = type(model)(backbone=model.backbone, preprocessor=None)
    bare.compile(sampler="greedy")
    length = len(prompt_ids) + new_tokens
    ids = np.zeros((1, length), np.int32)
    ids[0, : len(prompt_ids)] = prompt_ids
    mask = np.zeros((1, length), bool)
    mask[0, : len(prompt_ids)] = True
    out = bare.generate({"token_ids": ids, "padding_mask": mask}, max_length=length,
                        stop_token_ids=None)
    return np.asarray(out["token_ids"])[0, len(prompt_ids):].tolist()


def sentencepiece_proto():
    """A small SentencePiece BPE model in Llama 2's conventions (<unk> 0,
    <s> 1, </s> 2, byte fallback), trained here on a few sentences."""
    import io

    import sentencepiece as spm

    text = ["the cat sat on the mat", "hello world, how are you?", "héllo wörld 中文",
            "a quick brown fox jumps over the lazy dog"] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, model_type="bpe", vocab_size=300,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
        character_coverage=1.0, minloglevel=2,
    )
    return model.getvalue()


# --- The families of issue 29, built by keras-hub, in their own conventions ---

NEW_FAMILIES = ("mistral", "gemma", "qwen3")
# Shapes that catch what keras-hub's exporters get wrong: heads 12 wide on a
# 32-wide model (H * D != C), grouped or single key/value heads, and a
# Mistral window shorter than the prompts the tests use.
MISTRAL_WINDOW = 6
_QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def gemma_sentencepiece_proto():
    """A SentencePiece model in Gemma's conventions: <pad> 0, <eos> 1,
    <bos> 2, <unk> 3, its turn markers as user-defined symbols (one token
    each, read from text), no dummy prefix, byte fallback."""
    import io

    import sentencepiece as spm

    text = ["the cat sat on the mat", "hello world, how are you?", "héllo wörld 中文",
            "a quick brown fox jumps over the lazy dog"] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, model_type="bpe", vocab_size=300,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        add_dummy_prefix=False, byte_fallback=True, character_coverage=1.0, minloglevel=2,
    )
    return model.getvalue()


# Seeds whose greedy continuations of the tests' prompt are varied text.
_NEW_FAMILY_SEEDS = {"mistral": 0, "gemma": 1, "qwen3": 0}


def make_new_family_lm(family, seed=None, scale=0.3):
    """A keras-hub CausalLM of a new family with random weights (norm
    scales drawn around their identity value too, so a misplaced norm
    shows). Mistral's weights are float16 values (keras-hub's Hugging Face
    reader casts to float16, so the reference reads them exactly)."""
    seed = _NEW_FAMILY_SEEDS[family] if seed is None else seed
    keras.utils.set_random_seed(seed)
    shape = dict(num_layers=2, num_query_heads=4, hidden_dim=32, head_dim=12)
    if family == "mistral":
        tokenizer = keras_hub.models.MistralTokenizer(proto=sentencepiece_proto())
        backbone = keras_hub.models.MistralBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_key_value_heads=2,
            intermediate_dim=48, sliding_window=MISTRAL_WINDOW, **shape)
        classes = keras_hub.models.MistralCausalLMPreprocessor, keras_hub.models.MistralCausalLM
    elif family == "gemma":
        tokenizer = keras_hub.models.GemmaTokenizer(proto=gemma_sentencepiece_proto())
        backbone = keras_hub.models.GemmaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_key_value_heads=1,
            intermediate_dim=96, **shape)
        classes = keras_hub.models.GemmaCausalLMPreprocessor, keras_hub.models.GemmaCausalLM
    elif family == "qwen3":
        vocab = vocabulary("gpt2")
        for token in _QWEN3_SPECIALS:
            vocab.setdefault(token, len(vocab))
        tokenizer = keras_hub.models.Qwen3Tokenizer(
            vocabulary=vocab, merges=MERGES, unsplittable_tokens=_QWEN3_SPECIALS)
        backbone = keras_hub.models.Qwen3Backbone(
            vocabulary_size=len(vocab), num_key_value_heads=2, intermediate_dim=48,
            tie_word_embeddings=False, **shape)
        classes = keras_hub.models.Qwen3CausalLMPreprocessor, keras_hub.models.Qwen3CausalLM
    else:
        raise ValueError(family)
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        value = rng.normal(0.0, scale, weight.shape)
        if weight.path.endswith("scale"):
            value = np.asarray(weight.numpy()) + rng.normal(0.0, 0.2, weight.shape)
        value = value.astype("float16").astype("float32") if family == "mistral" else value
        weight.assign(value.astype("float32"))
    preprocessor_cls, task_cls = classes
    return task_cls(backbone, preprocessor_cls(tokenizer, sequence_length=32))


def _torch_linear(kernel):
    """A keras [in, ...out] kernel as a torch Linear weight [out, in]."""
    kernel = np.asarray(kernel)
    return kernel.reshape(kernel.shape[0], -1).T


def write_hugging_face_checkpoint(model, family, directory):
    """`model` (a keras-hub CausalLM of a new family) as a Hugging Face
    checkpoint, written here straight from keras-hub's own weights in the
    layout transformers reads (not with tfchat's writer, nor with keras-hub
    0.32's exporter, which is wrong for these shapes). The tests check
    keras-hub's own reader gets the same model back."""
    from safetensors.numpy import save_file

    backbone = model.backbone
    os.makedirs(directory, exist_ok=True)
    weights = {"model.embed_tokens.weight": np.asarray(backbone.token_embedding.embeddings),
               "model.norm.weight": np.asarray(backbone.layer_norm.scale)}
    for i, layer in enumerate(backbone.transformer_layers):
        prefix = f"model.layers.{i}."
        if family == "gemma":
            attention = layer.attention
            q, k, v = (np.asarray(d.kernel).transpose(0, 2, 1).reshape(-1, backbone.hidden_dim)
                       for d in (attention.query_dense, attention.key_dense, attention.value_dense))
            o = np.asarray(attention.output_dense.kernel)  # [H, D, C]
            weights.update({
                prefix + "self_attn.o_proj.weight": o.reshape(-1, backbone.hidden_dim).T,
                prefix + "input_layernorm.weight": np.asarray(layer.pre_attention_norm.scale),
                prefix + "post_attention_layernorm.weight": np.asarray(layer.pre_ffw_norm.scale),
                prefix + "mlp.gate_proj.weight": _torch_linear(layer.gating_ffw.kernel),
                prefix + "mlp.up_proj.weight": _torch_linear(layer.gating_ffw_2.kernel),
                prefix + "mlp.down_proj.weight": _torch_linear(layer.ffw_linear.kernel),
            })
        else:
            attention = layer._self_attention_layer
            q, k, v = (_torch_linear(d.kernel) for d in
                       (attention._query_dense, attention._key_dense, attention._value_dense))
            o = np.asarray(attention._output_dense.kernel)  # [H, D, C]
            weights.update({
                prefix + "self_attn.o_proj.weight": o.reshape(-1, backbone.hidden_dim).T,
                prefix + "input_layernorm.weight": np.asarray(layer._self_attention_layernorm.scale),
                prefix + "post_attention_layernorm.weight": np.asarray(layer._feedforward_layernorm.scale),
                prefix + "mlp.gate_proj.weight": _torch_linear(layer._feedforward_gate_dense.kernel),
                prefix + "mlp.up_proj.weight": _torch_linear(layer._feedforward_intermediate_dense.kernel),
                prefix + "mlp.down_proj.weight": _torch_linear(layer._feedforward_output_dense.kernel),
            })
            if family == "qwen3":
                weights[prefix + "self_attn.q_norm.weight"] = np.asarray(attention._query_dense_layer_norm.scale)
                weights[prefix + "self_attn.k_norm.weight"] = np.asarray(attention._key_dense_layer_norm.scale)
        weights.update({prefix + "self_attn.q_proj.weight": q, prefix + "self_attn.k_proj.weight": k,
                        prefix + "self_attn.v_proj.weight": v})
    if family != "gemma":
        weights["lm_head.weight"] = np.asarray(backbone.token_embedding.reverse_embeddings).T
    save_file({n: np.ascontiguousarray(w, dtype="float32") for n, w in weights.items()},
              os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "vocab_size": backbone.vocabulary_size, "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers, "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads, "head_dim": backbone.head_dim,
        "rms_norm_eps": backbone.layer_norm_epsilon, "max_position_embeddings": 64,
        "torch_dtype": "float32",
    }
    tokenizer = model.preprocessor.tokenizer
    if family == "mistral":
        config.update(model_type="mistral", architectures=["MistralForCausalLM"],
                      intermediate_size=backbone.intermediate_dim, rope_theta=10000.0,
                      sliding_window=backbone.sliding_window, tie_word_embeddings=False)
    elif family == "gemma":
        config.update(model_type="gemma", architectures=["GemmaForCausalLM"],
                      intermediate_size=backbone.intermediate_dim // 2, rope_theta=10000.0,
                      hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")
    else:
        config.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"],
                      intermediate_size=backbone.intermediate_dim,
                      rope_theta=float(backbone.rope_max_wavelength), use_sliding_window=False,
                      sliding_window=None, tie_word_embeddings=False)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    if family == "qwen3":
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(qwen2_tokenizer_json(tokenizer.vocabulary, MERGES, _QWEN3_SPECIALS,
                                           merges_as_pairs=True), f)
    else:
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(tokenizer.proto)
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"bos_token": tokenizer.start_token, "eos_token": tokenizer.end_token}, f)
    return directory
