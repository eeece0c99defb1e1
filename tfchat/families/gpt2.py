"""GPT-2 (keras-hub `GPT2Backbone`, Hugging Face `gpt2`): learned positions,
LayerNorm, GELU, biases everywhere, a tied head.

Per block (keras-hub name -> tfchat):

    self_attention_layer_norm.{gamma,beta} -> attention_norm.{gamma,beta}
    self_attention.{query,key,value} kernels [C, H, D], biases [H, D]
                                       -> attention.qkv.{kernel,bias}
    self_attention.attention_output [H, D, C] (+ bias) -> attention.proj
    feedforward_layer_norm              -> mlp_norm
    feedforward_intermediate_dense      -> mlp_in
    feedforward_output_dense            -> mlp_out

with position_embedding.embeddings [S, C] -> position_embedding.embeddings
and layer_norm -> final_norm. Its one special token, <|endoftext|>, is the
start, end and padding token at once (see tfchat.inference.generator).
"""

from tfchat.families.base import Family
from tfchat.families.weights import assign_qkv, check_shapes, fused_qkv, numpy, split_qkv


def gpt_args(backbone, block_size=None):
    """Its context is its position table's length (`block_size` may only
    shorten it)."""
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


def _denses(attention):
    return attention._query_dense, attention._key_dense, attention._value_dense


def _pairs(layer, block):
    norms = ((layer._self_attention_layer_norm, block.attention_norm),
             (layer._feedforward_layer_norm, block.mlp_norm))
    denses = ((layer._feedforward_intermediate_dense, block.mlp_in),
              (layer._feedforward_output_dense, block.mlp_out))
    return norms, denses


def copy_weights(backbone, gpt):
    check_shapes(backbone, gpt, tied_by_default=True)
    hidden = gpt.hidden_dim
    gpt.token_embedding.embeddings.assign(numpy(backbone.token_embedding.embeddings))
    positions = numpy(backbone.position_embedding.position_embeddings)  # [S, C]
    gpt.position_embedding.embeddings.assign(positions[: gpt.block_size])
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        kernel, bias = fused_qkv(_denses(attention), hidden, bias=True)
        block.attention.qkv.kernel.assign(kernel)
        block.attention.qkv.bias.assign(bias)
        block.attention.proj.kernel.assign(numpy(attention._output_dense.kernel).reshape(-1, hidden))
        block.attention.proj.bias.assign(numpy(attention._output_dense.bias))
        norms, denses = _pairs(layer, block)
        for theirs, mine in norms:
            mine.gamma.assign(numpy(theirs.gamma))
            mine.beta.assign(numpy(theirs.beta))
        for theirs, mine in denses:
            mine.kernel.assign(numpy(theirs.kernel))
            mine.bias.assign(numpy(theirs.bias))
    gpt.final_norm.gamma.assign(numpy(backbone.layer_norm.gamma))
    gpt.final_norm.beta.assign(numpy(backbone.layer_norm.beta))


def hub_args(gpt):
    """Its position table is `block_size` long."""
    return dict(
        vocabulary_size=gpt.vocabulary_size,
        num_layers=gpt.num_layers,
        num_heads=gpt.num_heads,
        hidden_dim=gpt.hidden_dim,
        intermediate_dim=gpt.intermediate_dim,
        max_sequence_length=gpt.block_size,
        dropout=0.0,
    )


def copy_weights_back(gpt, backbone):
    check_shapes(backbone, gpt, tied_by_default=True)
    backbone.token_embedding.embeddings.assign(numpy(gpt.token_embedding.embeddings))
    backbone.position_embedding.position_embeddings.assign(
        numpy(gpt.position_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        attention = layer._self_attention_layer
        assign_qkv(_denses(attention), *split_qkv(gpt, block))
        output = attention._output_dense
        output.kernel.assign(numpy(block.attention.proj.kernel).reshape(output.kernel.shape))
        output.bias.assign(numpy(block.attention.proj.bias))
        norms, denses = _pairs(layer, block)
        for theirs, mine in norms:
            theirs.gamma.assign(numpy(mine.gamma))
            theirs.beta.assign(numpy(mine.beta))
        for theirs, mine in denses:
            theirs.kernel.assign(numpy(mine.kernel))
            theirs.bias.assign(numpy(mine.bias))
    backbone.layer_norm.gamma.assign(numpy(gpt.final_norm.gamma))
    backbone.layer_norm.beta.assign(numpy(gpt.final_norm.beta))


FAMILY = Family(
    name="gpt2",
    backbones=("GPT2Backbone",),
    model_types=("gpt2",),
    examples="GPT-2 (124M to 1.5B), DistilGPT-2",
    architecture="GPT2LMHeadModel",
    gpt_args=gpt_args,
    copy_weights=copy_weights,
    hub_args=hub_args,
    copy_weights_back=copy_weights_back,
    hub_classes={"GPT2Tokenizer": ("GPT2Backbone", "GPT2CausalLM", "GPT2CausalLMPreprocessor", True)},
    decoder=dict(norm="layernorm", norm_epsilon=1e-5, position="learned", mlp="gelu",
                 tie_embeddings=True, qkv_bias=True, use_bias=True),
    multi_head_only=True,
    limits="exporting an MLP other than 4x the width (keras-hub's GPT-2 reader assumes 4x).",
)
