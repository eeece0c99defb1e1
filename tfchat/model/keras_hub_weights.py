"""Copies the weights of a keras-hub Llama / Llama 3 or Qwen2 backbone into a
tfchat `GPT` configured the same way (see `llama_gpt_args` / `qwen2_gpt_args`).

One function per family. The mapping, per block (keras-hub name -> tfchat):

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
Only the weights are read; keras-hub itself is not imported.

Example:
```python
backbone = keras_hub.models.Llama3Backbone.from_preset(...)
gpt = GPT(**llama_gpt_args(backbone, block_size=2048))
gpt.build()
llama_weights_to_gpt(backbone, gpt)
```
"""

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
    `Llama3Backbone` (Llama 3 rope scaling included when it has one)."""
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


def _check_shapes(backbone, gpt):
    mismatched = [
        name for name in ("vocabulary_size", "num_layers", "hidden_dim", "intermediate_dim")
        if getattr(backbone, name) != getattr(gpt, name)
    ]
    if backbone.num_query_heads != gpt.num_heads:
        mismatched.append("num_heads")
    if backbone.num_key_value_heads != gpt.num_kv_heads:
        mismatched.append("num_kv_heads")
    if bool(backbone.tie_word_embeddings) != gpt.tie_embeddings:
        mismatched.append("tie_embeddings")
    if mismatched:
        raise ValueError(f"The GPT differs from the backbone in: {', '.join(mismatched)}")


def _copy(backbone, gpt, qkv_bias):
    """The shared mapping; `qkv_bias` copies the q/k/v biases (Qwen2)."""
    _check_shapes(backbone, gpt)
    hidden = gpt.hidden_dim
    gpt.token_embedding.embeddings.assign(_numpy(backbone.token_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        q = _numpy(attention._query_dense.kernel)  # [C, H, D]
        k = _numpy(attention._key_dense.kernel)  # [C, K, D]
        v = _numpy(attention._value_dense.kernel)  # [C, K, D]
        block.attention.qkv.kernel.assign(
            np.concatenate([w.reshape(hidden, -1) for w in (q, k, v)], axis=1)
        )  # [C, (H + 2K) D]
        if qkv_bias:
            biases = [
                _numpy(dense.bias).reshape(-1)
                for dense in (attention._query_dense, attention._key_dense, attention._value_dense)
            ]  # [H D], [K D], [K D]
            block.attention.qkv.bias.assign(np.concatenate(biases))
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
