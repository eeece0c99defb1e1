"""Gemma (keras-hub `GemmaBackbone`, Hugging Face `gemma`): token
embeddings scaled by sqrt(hidden), heads of their own width (`head_dim`:
Gemma 7B has 16 heads of 256 on a width of 3072), multi-query attention in
the 2B (one key/value head), a GeGLU MLP (tanh GELU), RMSNorm scaled by
(1 + weight), and a head tied to the embedding.

keras-hub's layout, per block (-> tfchat):

    pre_attention_norm.scale     -> attention_norm.scale (both 1 + weight)
    attention.query [H, C, D], key / value [K, C, D] (heads first)
                                 -> attention.qkv.kernel [C, (H + 2K) D]
    attention.attention_output [H, D, C] -> attention.proj.kernel [H D, C]
    pre_ffw_norm.scale           -> mlp_norm.scale
    ffw_gating [C, F]            -> mlp_gate (GELU applies to it)
    ffw_gating_2 [C, F]          -> mlp_in
    ffw_linear [F, C]            -> mlp_out

with final_normalization -> final_norm. keras-hub's `intermediate_dim` is
2F (both branches together); Hugging Face's `intermediate_size` and tfchat's
`intermediate_dim` are F. keras-hub interleaves the rotary halves of q and k
after rotating them; the same permutation on both leaves every q.k, so
tfchat's rotate-half gives the same attention.

Its chat format: `<bos><start_of_turn>user\\nHi!<end_of_turn>\\n<start_of_turn>model\\n`,
contents trimmed, no system turn (its Jinja template refuses one).

keras-hub 0.32's Hugging Face exporter writes `q_proj` wrongly when
H * D != C and only the first key/value head, so tfchat writes the Hugging
Face form itself; keras-hub's reader is right, and so is tfchat's.
Gemma 2 and 3 (post-norms, soft caps, alternating sliding windows) are not
supported.
"""

from tfchat.data.chat_format import ChatTemplate
from tfchat.families.base import Family, HuggingFaceForm
from tfchat.families.weights import (
    assign_qkv, check_shapes, fused_qkv, numpy, rms_decoder_args, rms_decoder_config,
    sentencepiece_tokenizer_files, split_qkv,
)

GEMMA_TEMPLATE = ChatTemplate(
    "gemma",
    prefixes={"system": "<start_of_turn>system\n", "user": "<start_of_turn>user\n",
              "assistant": "<start_of_turn>model\n"},
    suffixes={"system": "<end_of_turn>\n", "user": "<end_of_turn>\n",
              "assistant": "<end_of_turn>\n"},
    end_of_turn="<end_of_turn>",
    strip_content=True,
    markers=("<start_of_turn>", "<end_of_turn>"),
    system_role=False,
)
# keras-hub's Gemma rope base, fixed in its attention layer.
ROPE_THETA = 10000.0


def gpt_args(backbone, block_size):
    unsupported = [name for name in ("use_post_ffw_norm", "use_post_attention_norm",
                                     "attention_logit_soft_cap", "final_logit_soft_cap",
                                     "use_sliding_window_attention")
                   if getattr(backbone, name, None)]
    if unsupported or not backbone.query_head_dim_normalize:
        raise ValueError("Gemma 2 and 3 features are not supported (received "
                         f"{', '.join(unsupported) or 'query_head_dim_normalize false'})")
    return dict(
        vocabulary_size=backbone.vocabulary_size,
        num_layers=backbone.num_layers,
        num_heads=backbone.num_query_heads,
        num_kv_heads=backbone.num_key_value_heads,
        hidden_dim=backbone.hidden_dim,
        intermediate_dim=backbone.intermediate_dim // 2,
        head_dim=backbone.head_dim,
        block_size=block_size,
        **DECODER,
        norm_epsilon=backbone.layer_norm_epsilon,
        rope_theta=ROPE_THETA,
    )


def _denses(attention):
    return attention.query_dense, attention.key_dense, attention.value_dense


def copy_weights(backbone, gpt):
    check_shapes(backbone, gpt, tied_by_default=True)
    hidden = gpt.hidden_dim
    gpt.token_embedding.embeddings.assign(numpy(backbone.token_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        kernel, _ = fused_qkv(_denses(layer.attention), hidden, bias=False, heads_first=True)
        block.attention.qkv.kernel.assign(kernel)
        output = numpy(layer.attention.output_dense.kernel)  # [H, D, C]
        block.attention.proj.kernel.assign(output.reshape(-1, hidden))
        block.attention_norm.scale.assign(numpy(layer.pre_attention_norm.scale))
        block.mlp_norm.scale.assign(numpy(layer.pre_ffw_norm.scale))
        block.mlp_gate.kernel.assign(numpy(layer.gating_ffw.kernel))
        block.mlp_in.kernel.assign(numpy(layer.gating_ffw_2.kernel))
        block.mlp_out.kernel.assign(numpy(layer.ffw_linear.kernel))
    gpt.final_norm.scale.assign(numpy(backbone.layer_norm.scale))


def hub_args(gpt):
    return dict(
        vocabulary_size=gpt.vocabulary_size,
        num_layers=gpt.num_layers,
        num_query_heads=gpt.num_heads,
        num_key_value_heads=gpt.num_kv_heads,
        hidden_dim=gpt.hidden_dim,
        intermediate_dim=2 * gpt.intermediate_dim,
        head_dim=gpt.head_dim or gpt.hidden_dim // gpt.num_heads,
        layer_norm_epsilon=gpt.norm_epsilon,
        dropout=0.0,
    )


def copy_weights_back(gpt, backbone):
    check_shapes(backbone, gpt, tied_by_default=True)
    backbone.token_embedding.embeddings.assign(numpy(gpt.token_embedding.embeddings))
    for layer, block in zip(backbone.transformer_layers, gpt.blocks):
        kernels, _ = split_qkv(gpt, block)
        assign_qkv(_denses(layer.attention), kernels, None, heads_first=True)
        output = layer.attention.output_dense.kernel
        output.assign(numpy(block.attention.proj.kernel).reshape(output.shape))
        layer.pre_attention_norm.scale.assign(numpy(block.attention_norm.scale))
        layer.pre_ffw_norm.scale.assign(numpy(block.mlp_norm.scale))
        layer.gating_ffw.kernel.assign(numpy(block.mlp_gate.kernel))
        layer.gating_ffw_2.kernel.assign(numpy(block.mlp_in.kernel))
        layer.ffw_linear.kernel.assign(numpy(block.mlp_out.kernel))
    backbone.layer_norm.scale.assign(numpy(gpt.final_norm.scale))


def hugging_face_gpt_args(config, block_size):
    # Gemma's own configs say "gelu" and mean the tanh approximation.
    activation = config.get("hidden_activation") or config.get("hidden_act") or "gelu"
    if activation not in ("gelu_pytorch_tanh", "gelu"):
        raise ValueError(f"Only the tanh GELU is supported. Received: {activation}")
    if config.get("model_type", "gemma") != "gemma":
        raise ValueError(f"{config.get('model_type')} is not supported; Gemma 1 is")
    return dict(rms_decoder_args(config, block_size), **DECODER)


def hugging_face_config(gpt, context, dtype):
    return dict(rms_decoder_config(gpt, context, dtype), model_type="gemma",
                architectures=["GemmaForCausalLM"], hidden_act="gelu_pytorch_tanh",
                hidden_activation="gelu_pytorch_tanh", attention_bias=False)


def write_tokenizer(hub_tokenizer, directory, tokenizer_config):
    sentencepiece_tokenizer_files(hub_tokenizer, directory, tokenizer_config, "GemmaTokenizer",
                                  extra_special=("<start_of_turn>", "<end_of_turn>"))


DECODER = dict(norm="rmsnorm_plus_one", position="rope", mlp="geglu", use_bias=False,
               qkv_bias=False, tie_embeddings=True, scale_embeddings=True)

FAMILY = Family(
    name="gemma",
    backbones=("GemmaBackbone",),
    model_types=("gemma",),
    examples="Gemma 2B and 7B, CodeGemma (GemmaForCausalLM)",
    architecture="GemmaForCausalLM",
    gpt_args=gpt_args,
    copy_weights=copy_weights,
    hub_args=hub_args,
    copy_weights_back=copy_weights_back,
    hub_classes={"GemmaTokenizer": ("GemmaBackbone", "GemmaCausalLM",
                                    "GemmaCausalLMPreprocessor", False)},
    decoder=DECODER,
    chat_templates=(GEMMA_TEMPLATE,),
    limits="Gemma 2 and 3 (post-norms, logit soft caps, sliding windows).",
    hugging_face=HuggingFaceForm(hugging_face_gpt_args, hugging_face_config, write_tokenizer),
)
