"""Weight copies every family shares: keras-hub's split q/k/v EinsumDense
kernels to tfchat's fused `qkv` and back, and the Hugging Face safetensors
layout of the RMSNorm decoders (Llama, Qwen, Mistral, Gemma), read and
written here rather than through keras-hub, whose 0.32 writer and readers
are wrong for some of them (see `tfchat.families`).

tfchat's `GPT` per block: `attention.qkv` [C, (H + 2K) D] (columns q, then
k, then v; head-major), `attention.proj` [H D, C], `attention.q_norm` /
`k_norm` [D], `attention_norm`, `mlp_norm`, `mlp_gate`, `mlp_in` (the "up"),
`mlp_out` (the "down"); then `final_norm` and, untied, `lm_head` [C, V].

Every family here uses the same rotary convention as tfchat (rotate-half,
angles from positions times theta^(-2i/D)), so no q/k columns move. Only
numpy arrays are read and written; keras-hub itself is not imported.
"""

import glob
import json
import os

import numpy as np


def numpy(variable):
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)


def check_shapes(backbone, gpt, tied_by_default=False):
    """Raises ValueError naming what differs between a keras-hub backbone
    and a GPT meant to hold its weights (`tied_by_default`: whether the
    backbone's head is tied when it has no `tie_word_embeddings`)."""
    heads = getattr(backbone, "num_query_heads", None) or backbone.num_heads
    kv_heads = getattr(backbone, "num_key_value_heads", None) or heads
    tied = bool(getattr(backbone, "tie_word_embeddings", tied_by_default))
    head_dim = getattr(backbone, "head_dim", None)
    mismatched = [
        name for name in ("vocabulary_size", "num_layers", "hidden_dim")
        if getattr(backbone, name) != getattr(gpt, name)
    ]
    for name, theirs, mine in (("num_heads", heads, gpt.num_heads),
                               ("num_kv_heads", kv_heads, gpt.num_kv_heads),
                               ("tie_embeddings", tied, gpt.tie_embeddings),
                               ("head_dim", head_dim, attention_head_dim(gpt))):
        if theirs is not None and theirs != mine:
            mismatched.append(name)
    if mismatched:
        raise ValueError(f"The GPT differs from the backbone in: {', '.join(mismatched)}")


def attention_head_dim(gpt):
    return gpt.head_dim or gpt.hidden_dim // gpt.num_heads


def fused_qkv(denses, hidden, bias, heads_first=False):
    """q, k, v EinsumDense layers -> one [C, (H + 2K) D] kernel and, with
    `bias`, its [(H + 2K) D] bias. Their kernels are [C, heads, D], or
    [heads, C, D] with `heads_first` (Gemma)."""
    kernels = [numpy(d.kernel) for d in denses]
    if heads_first:
        kernels = [k.transpose(1, 0, 2) for k in kernels]
    kernel = np.concatenate([k.reshape(hidden, -1) for k in kernels], axis=1)
    if not bias:
        return kernel, None
    return kernel, np.concatenate([numpy(d.bias).reshape(-1) for d in denses])


def split_qkv(gpt, block):
    """tfchat's fused qkv kernel [C, (H + 2K) D] (and bias) -> q [C, H, D],
    k and v [C, K, D] kernels and [H, D] / [K, D] biases (None without)."""
    heads, kv_heads, head_dim = gpt.num_heads, gpt.num_kv_heads, attention_head_dim(gpt)
    kernel = numpy(block.attention.qkv.kernel)
    ends = np.cumsum([heads * head_dim, kv_heads * head_dim])
    shapes = ((heads, head_dim), (kv_heads, head_dim), (kv_heads, head_dim))
    kernels = [k.reshape(gpt.hidden_dim, *shape)
               for k, shape in zip(np.split(kernel, ends, axis=1), shapes)]
    if not gpt.qkv_bias:
        return kernels, None
    bias = numpy(block.attention.qkv.bias)
    return kernels, [b.reshape(shape) for b, shape in zip(np.split(bias, ends), shapes)]


def assign_qkv(denses, kernels, biases, heads_first=False):
    for i, dense in enumerate(denses):
        kernel = kernels[i].transpose(1, 0, 2) if heads_first else kernels[i]
        dense.kernel.assign(kernel)
        if biases is not None:
            dense.bias.assign(biases[i])


# --- The Hugging Face layout of the RMSNorm decoders ---

def hugging_face_tensors(gpt):
    """{safetensors name: array} of a GPT with RMSNorm, rope and a gated
    MLP, in the layout `LlamaForCausalLM` and its relatives use (torch
    Linear weights are [out, in])."""
    head_dim = attention_head_dim(gpt)
    q_width, kv_width = gpt.num_heads * head_dim, gpt.num_kv_heads * head_dim
    tensors = {"model.embed_tokens.weight": numpy(gpt.token_embedding.embeddings),
               "model.norm.weight": numpy(gpt.final_norm.scale)}
    if not gpt.tie_embeddings:
        tensors["lm_head.weight"] = numpy(gpt.lm_head.kernel).T
    for i, block in enumerate(gpt.blocks):
        prefix = f"model.layers.{i}."
        attention = block.attention
        kernel = numpy(attention.qkv.kernel)
        parts = np.split(kernel, [q_width, q_width + kv_width], axis=1)
        for name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
            tensors[f"{prefix}self_attn.{name}.weight"] = part.T
        if gpt.qkv_bias:
            biases = np.split(numpy(attention.qkv.bias), [q_width, q_width + kv_width])
            for name, part in zip(("q_proj", "k_proj", "v_proj"), biases):
                tensors[f"{prefix}self_attn.{name}.bias"] = part
        tensors[f"{prefix}self_attn.o_proj.weight"] = numpy(attention.proj.kernel).T
        if gpt.qk_norm:
            tensors[f"{prefix}self_attn.q_norm.weight"] = numpy(attention.q_norm.scale)
            tensors[f"{prefix}self_attn.k_norm.weight"] = numpy(attention.k_norm.scale)
        tensors[f"{prefix}input_layernorm.weight"] = numpy(block.attention_norm.scale)
        tensors[f"{prefix}post_attention_layernorm.weight"] = numpy(block.mlp_norm.scale)
        tensors[f"{prefix}mlp.gate_proj.weight"] = numpy(block.mlp_gate.kernel).T
        tensors[f"{prefix}mlp.up_proj.weight"] = numpy(block.mlp_in.kernel).T
        tensors[f"{prefix}mlp.down_proj.weight"] = numpy(block.mlp_out.kernel).T
    return {name: np.ascontiguousarray(value) for name, value in tensors.items()}


def read_safetensors(directory):
    """{name: numpy array} of every *.safetensors file in `directory`, in
    their stored dtype (bfloat16 read as float32: numpy has no bfloat16)."""
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    tensors = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def load_hugging_face_tensors(tensors, gpt):
    """Fills a built GPT from `hugging_face_tensors`' layout; raises
    ValueError naming a missing tensor or a wrong shape."""
    def take(name, shape, transpose=False):
        if name not in tensors:
            raise ValueError(f"the checkpoint has no tensor {name}")
        value = np.asarray(tensors[name], dtype="float32")
        value = value.T if transpose else value
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{name} is {tuple(value.shape)}, expected {tuple(shape)}")
        return value

    def fill(variable, name, transpose=False):
        variable.assign(take(name, variable.shape, transpose))

    fill(gpt.token_embedding.embeddings, "model.embed_tokens.weight")
    fill(gpt.final_norm.scale, "model.norm.weight")
    if not gpt.tie_embeddings:
        fill(gpt.lm_head.kernel, "lm_head.weight", transpose=True)
    head_dim = attention_head_dim(gpt)
    widths = (gpt.num_heads * head_dim, gpt.num_kv_heads * head_dim, gpt.num_kv_heads * head_dim)
    for i, block in enumerate(gpt.blocks):
        prefix = f"model.layers.{i}."
        attention = block.attention
        names = ("q_proj", "k_proj", "v_proj")
        attention.qkv.kernel.assign(np.concatenate([
            take(f"{prefix}self_attn.{n}.weight", (gpt.hidden_dim, w), transpose=True)
            for n, w in zip(names, widths)], axis=1))
        if gpt.qkv_bias:
            attention.qkv.bias.assign(np.concatenate([
                take(f"{prefix}self_attn.{n}.bias", (w,)) for n, w in zip(names, widths)]))
        fill(attention.proj.kernel, f"{prefix}self_attn.o_proj.weight", transpose=True)
        if gpt.qk_norm:
            fill(attention.q_norm.scale, f"{prefix}self_attn.q_norm.weight")
            fill(attention.k_norm.scale, f"{prefix}self_attn.k_norm.weight")
        fill(block.attention_norm.scale, f"{prefix}input_layernorm.weight")
        fill(block.mlp_norm.scale, f"{prefix}post_attention_layernorm.weight")
        fill(block.mlp_gate.kernel, f"{prefix}mlp.gate_proj.weight", transpose=True)
        fill(block.mlp_in.kernel, f"{prefix}mlp.up_proj.weight", transpose=True)
        fill(block.mlp_out.kernel, f"{prefix}mlp.down_proj.weight", transpose=True)


def read_json_file(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)


def rms_decoder_config(gpt, context, dtype):
    """The config.json keys every RMSNorm decoder's Hugging Face config has."""
    return {
        "vocab_size": gpt.vocabulary_size,
        "hidden_size": gpt.hidden_dim,
        "intermediate_size": gpt.intermediate_dim,
        "num_hidden_layers": gpt.num_layers,
        "num_attention_heads": gpt.num_heads,
        "num_key_value_heads": gpt.num_kv_heads,
        "head_dim": attention_head_dim(gpt),
        "rms_norm_eps": gpt.norm_epsilon,
        "rope_theta": gpt.rope_theta,
        "max_position_embeddings": context,
        "tie_word_embeddings": bool(gpt.tie_embeddings),
        "torch_dtype": dtype,
    }


def rms_decoder_args(config, block_size):
    """`GPT` arguments from those keys (`rms_decoder_config`'s inverse)."""
    heads = int(config["num_attention_heads"])
    return dict(
        vocabulary_size=int(config["vocab_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        hidden_dim=int(config["hidden_size"]),
        intermediate_dim=int(config["intermediate_size"]),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
        block_size=block_size,
        norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        position="rope",
        rope_theta=float(config.get("rope_theta", 10000.0)),
        use_bias=False,
    )


# --- keras-hub's RMSNorm decoders (Llama, Qwen2, Mistral, Qwen3) ---
#
#     self_attention_layernorm.scale      -> attention_norm.scale      [C]
#     self_attention.query  [C, H, D]  \
#     self_attention.key    [C, K, D]   > attention.qkv.kernel [C, (H + 2K) D]
#     self_attention.value  [C, K, D]  /   (their biases where the family has them)
#     self_attention.attention_output [H, D, C] -> attention.proj.kernel [H D, C]
#     (Qwen3: self_attention.query_dense_layernorm / key_dense_layernorm -> q_norm / k_norm)
#     feedforward_layernorm.scale         -> mlp_norm.scale
#     feedforward_gate_dense.kernel       -> mlp_gate.kernel [C, F]
#     feedforward_intermediate_dense.kernel -> mlp_in.kernel [C, F]  (the "up")
#     feedforward_output_dense.kernel     -> mlp_out.kernel  [F, C]  (the "down")
#
# and token_embedding.embeddings -> token_embedding.embeddings [V, C],
# sequence_output_layernorm.scale -> final_norm.scale, and, untied,
# token_embedding.reverse_embeddings [C, V] -> lm_head.kernel [C, V].


def rms_decoder_common_args(backbone, block_size):
    """The `GPT` arguments every keras-hub RMSNorm decoder backbone gives."""
    return dict(
        vocabulary_size=backbone.vocabulary_size,
        num_layers=backbone.num_layers,
        num_heads=backbone.num_query_heads,
        num_kv_heads=backbone.num_key_value_heads,
        hidden_dim=backbone.hidden_dim,
        intermediate_dim=backbone.intermediate_dim,
        block_size=block_size,
        norm="rmsnorm",
        norm_epsilon=backbone.layer_norm_epsilon,
        position="rope",
        rope_theta=float(backbone.rope_max_wavelength),
        mlp="swiglu",
        tie_embeddings=bool(getattr(backbone, "tie_word_embeddings", False)),
        use_bias=False,
    )


def rms_decoder_common_hub_args(gpt):
    return dict(
        vocabulary_size=gpt.vocabulary_size,
        num_layers=gpt.num_layers,
        num_query_heads=gpt.num_heads,
        num_key_value_heads=gpt.num_kv_heads,
        hidden_dim=gpt.hidden_dim,
        intermediate_dim=gpt.intermediate_dim,
        rope_max_wavelength=gpt.rope_theta,
        layer_norm_epsilon=gpt.norm_epsilon,
        dropout=0.0,
    )


def _attention_denses(attention):
    return attention._query_dense, attention._key_dense, attention._value_dense


def copy_rms_decoder(backbone, gpt):
    """keras-hub RMSNorm decoder -> GPT (q/k/v biases and q/k norms where
    the GPT has them)."""
    check_shapes(backbone, gpt)
    hidden = gpt.hidden_dim
    gpt.token_embedding.embeddings.assign(numpy(backbone.token_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        kernel, bias = fused_qkv(_attention_denses(attention), hidden, gpt.qkv_bias)
        block.attention.qkv.kernel.assign(kernel)
        if gpt.qkv_bias:
            block.attention.qkv.bias.assign(bias)
        if gpt.qk_norm:
            block.attention.q_norm.scale.assign(numpy(attention._query_dense_layer_norm.scale))
            block.attention.k_norm.scale.assign(numpy(attention._key_dense_layer_norm.scale))
        output = numpy(attention._output_dense.kernel)  # [H, D, C]
        block.attention.proj.kernel.assign(output.reshape(-1, hidden))  # [H D, C]
        block.attention_norm.scale.assign(numpy(layer._self_attention_layernorm.scale))
        block.mlp_norm.scale.assign(numpy(layer._feedforward_layernorm.scale))
        block.mlp_gate.kernel.assign(numpy(layer._feedforward_gate_dense.kernel))
        block.mlp_in.kernel.assign(numpy(layer._feedforward_intermediate_dense.kernel))
        block.mlp_out.kernel.assign(numpy(layer._feedforward_output_dense.kernel))
    gpt.final_norm.scale.assign(numpy(backbone.layer_norm.scale))
    if not gpt.tie_embeddings:
        gpt.lm_head.kernel.assign(numpy(backbone.token_embedding.reverse_embeddings))


def copy_rms_decoder_back(gpt, backbone):
    """The inverse of `copy_rms_decoder`."""
    check_shapes(backbone, gpt)
    backbone.token_embedding.embeddings.assign(numpy(gpt.token_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        assign_qkv(_attention_denses(attention), *split_qkv(gpt, block))
        if gpt.qk_norm:
            attention._query_dense_layer_norm.scale.assign(numpy(block.attention.q_norm.scale))
            attention._key_dense_layer_norm.scale.assign(numpy(block.attention.k_norm.scale))
        output = attention._output_dense.kernel  # [H, D, C]
        output.assign(numpy(block.attention.proj.kernel).reshape(output.shape))
        layer._self_attention_layernorm.scale.assign(numpy(block.attention_norm.scale))
        layer._feedforward_layernorm.scale.assign(numpy(block.mlp_norm.scale))
        layer._feedforward_gate_dense.kernel.assign(numpy(block.mlp_gate.kernel))
        layer._feedforward_intermediate_dense.kernel.assign(numpy(block.mlp_in.kernel))
        layer._feedforward_output_dense.kernel.assign(numpy(block.mlp_out.kernel))
    backbone.layer_norm.scale.assign(numpy(gpt.final_norm.scale))
    if not gpt.tie_embeddings:
        backbone.token_embedding.reverse_embeddings.assign(numpy(gpt.lm_head.kernel))


def sentencepiece_tokenizer_files(hub_tokenizer, directory, tokenizer_config, tokenizer_class,
                                  extra_special=()):
    """A SentencePiece family's Hugging Face tokenizer files: its model as
    tokenizer.model, and tokenizer_config.json / special_tokens_map.json
    naming its start, end and padding tokens."""
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(hub_tokenizer.proto)
    special = {}
    for key, attribute in (("bos_token", "start_token"), ("eos_token", "end_token"),
                           ("pad_token", "pad_token")):
        token = getattr(hub_tokenizer, attribute, None)
        if token is not None:
            special[key] = token
    config = dict(tokenizer_config, **special,
                  tokenizer_class=tokenizer_class,
                  add_bos_token="bos_token" in special, add_eos_token=False,
                  additional_special_tokens=list(extra_special))
    write_json(os.path.join(directory, "tokenizer_config.json"),
               {k: v for k, v in config.items() if v is not None})
    write_json(os.path.join(directory, "special_tokens_map.json"), special)
