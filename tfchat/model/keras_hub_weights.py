"""Copies the weights of a keras-hub GPT-2, Llama / Llama 3 or Qwen2 backbone
into a tfchat `GPT` configured the same way, and back (`FAMILIES`: per
family, the GPT arguments of a backbone and the weight copy; the decoder
options that make a GPT one of the family, the backbone arguments of a GPT
and the copy back, for export).

GPT-2, per block (keras-hub name -> tfchat):

    self_attention_layer_norm.{gamma,beta} -> attention_norm.{gamma,beta}
    self_attention.{query,key,value} kernels [C, H, D], biases [H, D]
                                       -> attention.qkv.{kernel,bias}
    self_attention.attention_output [H, D, C] (+ bias) -> attention.proj
    feedforward_layer_norm              -> mlp_norm
    feedforward_intermediate_dense      -> mlp_in
    feedforward_output_dense            -> mlp_out

with position_embedding.embeddings [S, C] -> position_embedding.embeddings
and layer_norm -> final_norm; the head is tied.

Llama and Qwen2, per block:

    self_attention_layernorm.scale      -> attention_norm.scale      [C]
    self_attention.query  [C, H, D]  \\
    self_attention.key    [C, K, D]   > attention.qkv.kernel [C, (H + 2K) D]
    self_attention.value  [C, K, D]  /   (columns q, then k, then v; head-major)
    (Qwen2: their biases [H, D], [K, D] -> attention.qkv.bias [(H + 2K) D])
    self_attention.attention_output [H, D, C] -> attention.proj.kernel [H D, C]
    feedforward_layernorm.scale         -> mlp_norm.scale
    feedforward_gate_dense.kernel       -> mlp_gate.kernel [C, F]
    feedforward_intermediate_dense.kernel -> mlp_in.kernel [C, F]  (the "up")
    feedforward_output_dense.kernel     -> mlp_out.kernel  [F, C]  (the "down")

and token_embedding.embeddings -> token_embedding.embeddings [V, C],
sequence_output_layernorm.scale -> final_norm.scale, and, untied,
token_embedding.reverse_embeddings [C, V] -> lm_head.kernel [C, V].

Both use the same rotary convention as tfchat (rotate-half, angles from
positions times theta^(-2i/D)), so no permutation of q/k columns is needed.
The copy back (`gpt_to_*_weights`) is the same table read right to left,
into a backbone built from `*_hub_args(gpt)`. Only the weights are read and
written; keras-hub itself is not imported.

Example:
```python
backbone = keras_hub.models.Llama3Backbone.from_preset(...)
gpt = GPT(**llama_gpt_args(backbone, block_size=2048))
gpt.build()
llama_weights_to_gpt(backbone, gpt)
fresh = keras_hub.models.Llama3Backbone(**llama_hub_args(gpt))
gpt_to_llama_weights(gpt, fresh)          # fresh computes what gpt does
```
"""

import dataclasses
import typing

import numpy as np


def _numpy(variable):
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)


def _common_args(backbone, block_size):
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
        tie_embeddings=bool(backbone.tie_word_embeddings),
        use_bias=False,
    )


def llama_gpt_args(backbone, block_size):
    """`GPT` keyword arguments for a keras-hub `LlamaBackbone` /
    `Llama3Backbone` (Llama 3 rope scaling included when it has one; linear
    position scaling is not supported)."""
    linear = getattr(backbone, "rope_position_scaling_factor", 1.0)
    if linear != 1.0:
        raise ValueError(
            f"Linear rope scaling is not supported. Received: rope_position_scaling_factor={linear}"
        )
    args = dict(_common_args(backbone, block_size), qkv_bias=False)
    if backbone.rope_frequency_adjustment_factor is not None:
        args.update(
            rope_scaling_factor=float(backbone.rope_frequency_adjustment_factor),
            rope_low_freq_factor=float(backbone.rope_low_freq_factor),
            rope_high_freq_factor=float(backbone.rope_high_freq_factor),
            rope_original_max_positions=int(backbone.rope_pretraining_sequence_length),
        )
    return args


def qwen2_gpt_args(backbone, block_size):
    """`GPT` keyword arguments for a keras-hub `Qwen2Backbone` (no sliding
    window, no linear rope scaling: tfchat has neither)."""
    if getattr(backbone, "use_sliding_window_attention", False):
        raise ValueError("Sliding-window attention is not supported.")
    if getattr(backbone, "rope_scaling_factor", 1.0) != 1.0:
        raise ValueError(
            "Linear rope scaling is not supported. Received: "
            f"rope_scaling_factor={backbone.rope_scaling_factor}"
        )
    return dict(_common_args(backbone, block_size), qkv_bias=True)


def gpt2_gpt_args(backbone, block_size=None):
    """`GPT` keyword arguments for a keras-hub `GPT2Backbone`. Its context is
    its position table's length (`block_size` may only shorten it)."""
    return dict(
        vocabulary_size=backbone.vocabulary_size,
        num_layers=backbone.num_layers,
        num_heads=backbone.num_heads,
        hidden_dim=backbone.hidden_dim,
        intermediate_dim=backbone.intermediate_dim,
        block_size=min(block_size or backbone.max_sequence_length, backbone.max_sequence_length),
        norm="layernorm",
        norm_epsilon=1e-5,  # keras-hub's GPT-2 decoder layers
        position="learned",
        mlp="gelu",
        tie_embeddings=True,
        qkv_bias=True,
        use_bias=True,
    )


def _check_shapes(backbone, gpt):
    heads = getattr(backbone, "num_query_heads", None) or backbone.num_heads
    kv_heads = getattr(backbone, "num_key_value_heads", None) or heads
    tied = bool(getattr(backbone, "tie_word_embeddings", True))
    mismatched = [
        name for name in ("vocabulary_size", "num_layers", "hidden_dim", "intermediate_dim")
        if getattr(backbone, name) != getattr(gpt, name)
    ]
    if heads != gpt.num_heads:
        mismatched.append("num_heads")
    if kv_heads != gpt.num_kv_heads:
        mismatched.append("num_kv_heads")
    if tied != gpt.tie_embeddings:
        mismatched.append("tie_embeddings")
    if mismatched:
        raise ValueError(f"The GPT differs from the backbone in: {', '.join(mismatched)}")


def _fused_qkv(attention, hidden, bias):
    """q, k, v EinsumDense weights -> one [C, (H + 2K) D] kernel (columns q,
    then k, then v; head-major) and, with `bias`, its [(H + 2K) D] bias."""
    denses = (attention._query_dense, attention._key_dense, attention._value_dense)
    kernel = np.concatenate([_numpy(d.kernel).reshape(hidden, -1) for d in denses], axis=1)
    if not bias:
        return kernel, None
    return kernel, np.concatenate([_numpy(d.bias).reshape(-1) for d in denses])


def gpt2_weights_to_gpt(backbone, gpt):
    """Copies a keras-hub `GPT2Backbone`'s weights into a built
    `GPT(**gpt2_gpt_args(backbone))`."""
    _check_shapes(backbone, gpt)
    hidden = gpt.hidden_dim
    gpt.token_embedding.embeddings.assign(_numpy(backbone.token_embedding.embeddings))
    positions = _numpy(backbone.position_embedding.position_embeddings)  # [S, C]
    gpt.position_embedding.embeddings.assign(positions[: gpt.block_size])
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        kernel, bias = _fused_qkv(attention, hidden, bias=True)
        block.attention.qkv.kernel.assign(kernel)
        block.attention.qkv.bias.assign(bias)
        block.attention.proj.kernel.assign(_numpy(attention._output_dense.kernel).reshape(-1, hidden))
        block.attention.proj.bias.assign(_numpy(attention._output_dense.bias))
        for theirs, mine in (
            (layer._self_attention_layer_norm, block.attention_norm),
            (layer._feedforward_layer_norm, block.mlp_norm),
        ):
            mine.gamma.assign(_numpy(theirs.gamma))
            mine.beta.assign(_numpy(theirs.beta))
        for theirs, mine in (
            (layer._feedforward_intermediate_dense, block.mlp_in),
            (layer._feedforward_output_dense, block.mlp_out),
        ):
            mine.kernel.assign(_numpy(theirs.kernel))
            mine.bias.assign(_numpy(theirs.bias))
    gpt.final_norm.gamma.assign(_numpy(backbone.layer_norm.gamma))
    gpt.final_norm.beta.assign(_numpy(backbone.layer_norm.beta))


def _copy(backbone, gpt, qkv_bias):
    """The shared mapping; `qkv_bias` copies the q/k/v biases (Qwen2)."""
    _check_shapes(backbone, gpt)
    hidden = gpt.hidden_dim
    gpt.token_embedding.embeddings.assign(_numpy(backbone.token_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        kernel, bias = _fused_qkv(attention, hidden, qkv_bias)
        block.attention.qkv.kernel.assign(kernel)
        if qkv_bias:
            block.attention.qkv.bias.assign(bias)
        output = _numpy(attention._output_dense.kernel)  # [H, D, C]
        block.attention.proj.kernel.assign(output.reshape(-1, hidden))  # [H D, C]
        block.attention_norm.scale.assign(_numpy(layer._self_attention_layernorm.scale))
        block.mlp_norm.scale.assign(_numpy(layer._feedforward_layernorm.scale))
        block.mlp_gate.kernel.assign(_numpy(layer._feedforward_gate_dense.kernel))
        block.mlp_in.kernel.assign(_numpy(layer._feedforward_intermediate_dense.kernel))
        block.mlp_out.kernel.assign(_numpy(layer._feedforward_output_dense.kernel))
    gpt.final_norm.scale.assign(_numpy(backbone.layer_norm.scale))
    if not gpt.tie_embeddings:
        gpt.lm_head.kernel.assign(_numpy(backbone.token_embedding.reverse_embeddings))


def llama_weights_to_gpt(backbone, gpt):
    """Copies a keras-hub `LlamaBackbone` / `Llama3Backbone`'s weights into a
    built `GPT(**llama_gpt_args(backbone, ...))` (no biases anywhere)."""
    _copy(backbone, gpt, qkv_bias=False)


def qwen2_weights_to_gpt(backbone, gpt):
    """Copies a keras-hub `Qwen2Backbone`'s weights into a built
    `GPT(**qwen2_gpt_args(backbone, ...))` (biases on q, k and v only)."""
    _copy(backbone, gpt, qkv_bias=True)


# --- back: a GPT's weights into a fresh keras-hub backbone (export) ---


def gpt2_hub_args(gpt):
    """`GPT2Backbone` keyword arguments for a GPT of the GPT-2 layout (the
    inverse of `gpt2_gpt_args`: its position table is `block_size` long)."""
    return dict(
        vocabulary_size=gpt.vocabulary_size,
        num_layers=gpt.num_layers,
        num_heads=gpt.num_heads,
        hidden_dim=gpt.hidden_dim,
        intermediate_dim=gpt.intermediate_dim,
        max_sequence_length=gpt.block_size,
        dropout=0.0,
    )


def _common_hub_args(gpt):
    return dict(
        vocabulary_size=gpt.vocabulary_size,
        num_layers=gpt.num_layers,
        num_query_heads=gpt.num_heads,
        num_key_value_heads=gpt.num_kv_heads,
        hidden_dim=gpt.hidden_dim,
        intermediate_dim=gpt.intermediate_dim,
        rope_max_wavelength=gpt.rope_theta,
        layer_norm_epsilon=gpt.norm_epsilon,
        tie_word_embeddings=bool(gpt.tie_embeddings),
        dropout=0.0,
    )


def llama_hub_args(gpt):
    """`LlamaBackbone` / `Llama3Backbone` keyword arguments for a GPT of the
    Llama layout (the inverse of `llama_gpt_args`; Llama 3's rope scaling
    when `rope_scaling_factor` is above 1)."""
    args = _common_hub_args(gpt)
    if gpt.rope_scaling_factor != 1.0:
        args.update(
            rope_frequency_adjustment_factor=float(gpt.rope_scaling_factor),
            rope_low_freq_factor=float(gpt.rope_low_freq_factor),
            rope_high_freq_factor=float(gpt.rope_high_freq_factor),
            rope_pretraining_sequence_length=int(gpt.rope_original_max_positions),
        )
    return args


def qwen2_hub_args(gpt):
    """`QwenBackbone` keyword arguments for a GPT of the Qwen2 layout (the
    inverse of `qwen2_gpt_args`: no sliding window, no rope scaling)."""
    return dict(_common_hub_args(gpt), rope_scaling_factor=1.0,
                use_sliding_window_attention=False)


def _split_qkv(gpt, block):
    """tfchat's fused qkv kernel [C, (H + 2K) D] (and bias) -> keras-hub's
    q [C, H, D], k and v [C, K, D] kernels and [H, D] / [K, D] biases."""
    heads, kv_heads = gpt.num_heads, gpt.num_kv_heads
    head_dim = gpt.hidden_dim // heads
    kernel = _numpy(block.attention.qkv.kernel)
    ends = np.cumsum([heads * head_dim, kv_heads * head_dim])
    shapes = ((heads, head_dim), (kv_heads, head_dim), (kv_heads, head_dim))
    kernels = [k.reshape(gpt.hidden_dim, *shape)
               for k, shape in zip(np.split(kernel, ends, axis=1), shapes)]
    if not gpt.qkv_bias:
        return kernels, None
    bias = _numpy(block.attention.qkv.bias)
    return kernels, [b.reshape(shape) for b, shape in zip(np.split(bias, ends), shapes)]


def _assign_qkv(attention, kernels, biases):
    denses = (attention._query_dense, attention._key_dense, attention._value_dense)
    for i, dense in enumerate(denses):
        dense.kernel.assign(kernels[i])
        if biases is not None:
            dense.bias.assign(biases[i])


def gpt_to_gpt2_weights(gpt, backbone):
    """Copies a GPT-2-layout `GPT`'s weights into a built keras-hub
    `GPT2Backbone(**gpt2_hub_args(gpt))` (the inverse of
    `gpt2_weights_to_gpt`)."""
    _check_shapes(backbone, gpt)
    backbone.token_embedding.embeddings.assign(_numpy(gpt.token_embedding.embeddings))
    backbone.position_embedding.position_embeddings.assign(
        _numpy(gpt.position_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        _assign_qkv(attention, *_split_qkv(gpt, block))
        output = attention._output_dense
        output.kernel.assign(_numpy(block.attention.proj.kernel).reshape(output.kernel.shape))
        output.bias.assign(_numpy(block.attention.proj.bias))
        for theirs, mine in (
            (layer._self_attention_layer_norm, block.attention_norm),
            (layer._feedforward_layer_norm, block.mlp_norm),
        ):
            theirs.gamma.assign(_numpy(mine.gamma))
            theirs.beta.assign(_numpy(mine.beta))
        for theirs, mine in (
            (layer._feedforward_intermediate_dense, block.mlp_in),
            (layer._feedforward_output_dense, block.mlp_out),
        ):
            theirs.kernel.assign(_numpy(mine.kernel))
            theirs.bias.assign(_numpy(mine.bias))
    backbone.layer_norm.gamma.assign(_numpy(gpt.final_norm.gamma))
    backbone.layer_norm.beta.assign(_numpy(gpt.final_norm.beta))


def _copy_back(gpt, backbone):
    """The inverse of `_copy` (q/k/v biases when the GPT has them)."""
    _check_shapes(backbone, gpt)
    backbone.token_embedding.embeddings.assign(_numpy(gpt.token_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        _assign_qkv(attention, *_split_qkv(gpt, block))
        output = attention._output_dense.kernel  # [H, D, C]
        output.assign(_numpy(block.attention.proj.kernel).reshape(output.shape))
        layer._self_attention_layernorm.scale.assign(_numpy(block.attention_norm.scale))
        layer._feedforward_layernorm.scale.assign(_numpy(block.mlp_norm.scale))
        layer._feedforward_gate_dense.kernel.assign(_numpy(block.mlp_gate.kernel))
        layer._feedforward_intermediate_dense.kernel.assign(_numpy(block.mlp_in.kernel))
        layer._feedforward_output_dense.kernel.assign(_numpy(block.mlp_out.kernel))
    backbone.layer_norm.scale.assign(_numpy(gpt.final_norm.scale))
    if not gpt.tie_embeddings:
        backbone.token_embedding.reverse_embeddings.assign(_numpy(gpt.lm_head.kernel))


def gpt_to_llama_weights(gpt, backbone):
    """Copies a Llama-layout `GPT`'s weights into a built keras-hub
    `Llama3Backbone` / `LlamaBackbone(**llama_hub_args(gpt))`."""
    _copy_back(gpt, backbone)


def gpt_to_qwen2_weights(gpt, backbone):
    """Copies a Qwen2-layout `GPT`'s weights into a built keras-hub
    `QwenBackbone(**qwen2_hub_args(gpt))`."""
    _copy_back(gpt, backbone)


@dataclasses.dataclass(frozen=True)
class Family:
    """A checkpoint family tfchat can start from, and export back to.

    name: tfchat's name for it, in messages and `--help`. No setting takes
        it: a checkpoint's family follows from its backbone class or
        `model_type`, a run's from its decoder options (`decoder`).
    backbones: the keras-hub backbone classes it reads.
    model_types: the Hugging Face `config.json` `model_type`s keras-hub
        converts to those backbones.
    examples: checkpoints of the family, for `--help`.
    gpt_args(backbone, block_size) -> `GPT` keyword arguments.
    copy_weights(backbone, gpt): fills a built GPT with the backbone's weights.
    decoder: the GPT decoder options (`model.*`) every model of the family
        has; a run whose options are these is of the family.
    hub_args(gpt) -> keyword arguments of the keras-hub backbone it exports to.
    copy_weights_back(gpt, backbone): fills that built backbone with the
        GPT's weights (the inverse of `copy_weights`).
    architecture: the Hugging Face `architectures` entry of its config.json.
    hub_classes: the keras-hub tokenizer classes of its runs, each with the
        (backbone, CausalLM, CausalLMPreprocessor) classes it exports with
        and whether keras-hub writes those in Hugging Face form.
    """

    name: str
    backbones: typing.Tuple[str, ...]
    model_types: typing.Tuple[str, ...]
    examples: str
    gpt_args: typing.Callable
    copy_weights: typing.Callable
    decoder: typing.Mapping[str, object]
    hub_args: typing.Callable
    copy_weights_back: typing.Callable
    architecture: str
    hub_classes: typing.Mapping[str, typing.Tuple[str, str, str, bool]]

    def describe_decoder(self):
        return ", ".join(
            f"{k} {str(v).lower() if isinstance(v, bool) else v}" for k, v in self.decoder.items()
        ) + ("" if self.name != "gpt2" else ", num_kv_heads = num_heads")


_SWIGLU = dict(norm="rmsnorm", position="rope", mlp="swiglu", use_bias=False)
FAMILIES = (
    Family("gpt2", ("GPT2Backbone",), ("gpt2",), "GPT-2 (124M to 1.5B), DistilGPT-2",
           gpt2_gpt_args, gpt2_weights_to_gpt,
           dict(norm="layernorm", norm_epsilon=1e-5, position="learned", mlp="gelu",
                tie_embeddings=True, qkv_bias=True, use_bias=True),
           gpt2_hub_args, gpt_to_gpt2_weights, "GPT2LMHeadModel",
           {"GPT2Tokenizer": ("GPT2Backbone", "GPT2CausalLM", "GPT2CausalLMPreprocessor", True)}),
    Family("llama", ("LlamaBackbone", "Llama3Backbone"), ("llama",),
           "Llama 2/3.x, SmolLM2, TinyLlama (LlamaForCausalLM)",
           llama_gpt_args, llama_weights_to_gpt,
           dict(_SWIGLU, qkv_bias=False),
           llama_hub_args, gpt_to_llama_weights, "LlamaForCausalLM",
           {"Llama3Tokenizer": ("Llama3Backbone", "Llama3CausalLM", "Llama3CausalLMPreprocessor", True),
            # Llama 2's SentencePiece: keras-hub 0.32 writes it as a preset only.
            "LlamaTokenizer": ("LlamaBackbone", "LlamaCausalLM", "LlamaCausalLMPreprocessor", False)}),
    Family("qwen2", ("QwenBackbone",), ("qwen2",), "Qwen2, Qwen2.5 (Qwen2ForCausalLM)",
           qwen2_gpt_args, qwen2_weights_to_gpt,
           dict(_SWIGLU, qkv_bias=True, rope_scaling_factor=1.0),
           qwen2_hub_args, gpt_to_qwen2_weights, "Qwen2ForCausalLM",
           {"QwenTokenizer": ("QwenBackbone", "QwenCausalLM", "QwenCausalLMPreprocessor", True)}),
)


def family_of_decoder(model):
    """The `Family` whose decoder options `model` has (a `GPT`, or a
    config's `ModelConfig`), or None."""
    for family in FAMILIES:
        if all(getattr(model, k) == v for k, v in family.decoder.items()):
            if family.name == "gpt2" and (model.num_kv_heads or model.num_heads) != model.num_heads:
                continue
            return family
    return None


def exportable_families():
    """One phrase per family, for errors: its name and decoder options."""
    return "; ".join(f"{f.name} ({f.describe_decoder()})" for f in FAMILIES)


def family_of_backbone(class_name):
    """The `Family` that reads keras-hub backbones of `class_name`, or None."""
    for family in FAMILIES:
        if class_name in family.backbones:
            return family
    return None


def family_of_model_type(model_type):
    """The `Family` of a Hugging Face `model_type`, or None."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def supported_families():
    """One line per family, for `--help` and errors."""
    return "\n".join(
        f"  {f.name}: {f.examples}; keras-hub {', '.join(f.backbones)}; "
        f"Hugging Face model_type {', '.join(f.model_types)}"
        for f in FAMILIES
    )


def supported_model_types():
    return ", ".join(t for f in FAMILIES for t in f.model_types)


def supported_backbones():
    return ", ".join(b for f in FAMILIES for b in f.backbones)
