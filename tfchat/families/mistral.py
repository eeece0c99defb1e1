"""Mistral (keras-hub `MistralBackbone`, Hugging Face `mistral`): the Llama
layout with sliding-window attention (Mistral 7B v0.1: 4096; none from
v0.2), heads of their own width (`head_dim`), an untied head.

Its chat format, Mistral Instruct's: `<s>[INST] Hi! [/INST]Hello.</s>`, no
system turn (its Jinja template refuses one); the reply ends with the end
token </s> itself.

keras-hub 0.32 reads Hugging Face Mistral weights through float16 and its
exporter derives `head_dim` from the width, so tfchat reads and writes the
Hugging Face form itself (`tfchat.families.weights`), and a keras-hub preset
through keras-hub (which is right). SentencePiece (v0.1-v0.3) tokenizers
only: the Tekken byte-level BPE of newer checkpoints is not supported.
"""

from tfchat.data.chat_format import ROLES, ChatTemplate
from tfchat.families.base import Family, HuggingFaceForm
from tfchat.families.weights import (
    attention_head_dim, copy_rms_decoder, copy_rms_decoder_back, rms_decoder_args,
    rms_decoder_common_args, rms_decoder_common_hub_args, rms_decoder_config,
    sentencepiece_tokenizer_files,
)

MISTRAL_TEMPLATE = ChatTemplate(
    "mistral",
    prefixes={"system": "", "user": "[INST] ", "assistant": ""},
    suffixes={"system": "", "user": " [/INST]", "assistant": "</s>"},
    end_of_turn="</s>",
    markers=("[INST]", "[/INST]"),
    system_role=False,
)
assert set(MISTRAL_TEMPLATE.prefixes) == set(ROLES)


def _no_rope_scaling(factor):
    if factor not in (None, 1.0):
        raise ValueError(f"Rope scaling is not supported. Received: {factor}")


def gpt_args(backbone, block_size):
    _no_rope_scaling(backbone.rope_scaling_factor)
    return dict(rms_decoder_common_args(backbone, block_size), qkv_bias=False,
                tie_embeddings=False, head_dim=int(attention_head_dim_of(backbone)),
                sliding_window=int(backbone.sliding_window or 0))


def attention_head_dim_of(backbone):
    return backbone.head_dim or backbone.hidden_dim // backbone.num_query_heads


def hub_args(gpt):
    return dict(rms_decoder_common_hub_args(gpt), head_dim=attention_head_dim(gpt),
                sliding_window=gpt.sliding_window or None)


def hugging_face_gpt_args(config, block_size):
    _no_rope_scaling((config.get("rope_scaling") or {}).get("factor"))
    return dict(rms_decoder_args(config, block_size), norm="rmsnorm", mlp="swiglu",
                qkv_bias=False, tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                sliding_window=int(config.get("sliding_window") or 0))


def hugging_face_config(gpt, context, dtype):
    return dict(rms_decoder_config(gpt, context, dtype), model_type="mistral",
                architectures=["MistralForCausalLM"], hidden_act="silu",
                sliding_window=gpt.sliding_window or None)


def write_tokenizer(hub_tokenizer, directory, tokenizer_config):
    sentencepiece_tokenizer_files(hub_tokenizer, directory, tokenizer_config, "LlamaTokenizer")


FAMILY = Family(
    name="mistral",
    backbones=("MistralBackbone",),
    model_types=("mistral",),
    examples="Mistral 7B v0.1-v0.3 and its fine-tunes (MistralForCausalLM)",
    architecture="MistralForCausalLM",
    gpt_args=gpt_args,
    copy_weights=copy_rms_decoder,
    hub_args=hub_args,
    copy_weights_back=copy_rms_decoder_back,
    hub_classes={"MistralTokenizer": ("MistralBackbone", "MistralCausalLM",
                                      "MistralCausalLMPreprocessor", False)},
    decoder=dict(norm="rmsnorm", position="rope", mlp="swiglu", use_bias=False, qkv_bias=False,
                 tie_embeddings=False),
    chat_templates=(MISTRAL_TEMPLATE,),
    limits="rope scaling; Tekken (byte-level BPE) tokenizers.",
    hugging_face=HuggingFaceForm(hugging_face_gpt_args, hugging_face_config, write_tokenizer),
)
