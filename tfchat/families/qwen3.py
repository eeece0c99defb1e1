"""Qwen3 (keras-hub `Qwen3Backbone`, Hugging Face `qwen3`): the Qwen2
layout without q/k/v biases but with an RMSNorm on each head's queries and
keys (before rope), heads of their own width (`head_dim`), a tied or untied
head. Weights map as `tfchat.families.weights` describes
(`query_dense_layernorm` / `key_dense_layernorm` -> `q_norm` / `k_norm`).
Its chat format is ChatML; <|im_end|> and <|endoftext|> both end a reply.

keras-hub 0.32 has no Hugging Face exporter for Qwen3, so tfchat writes the
Hugging Face form itself (its tokenizer.json as Qwen2's); keras-hub's
backbone always applies a sliding window (32768 by default), which tfchat
keeps from a preset and leaves off where the Hugging Face config has
`use_sliding_window` false.
"""

import json
import os

from tfchat.families.base import Family, HuggingFaceForm
from tfchat.families.qwen2 import special_tokens, write_tokenizer_json
from tfchat.families.weights import (
    attention_head_dim, copy_rms_decoder, copy_rms_decoder_back, rms_decoder_args,
    rms_decoder_common_args, rms_decoder_common_hub_args, rms_decoder_config, write_json,
)


def _no_rope_scaling(factor):
    if factor not in (None, 1.0):
        raise ValueError(f"Rope scaling is not supported. Received: {factor}")


def gpt_args(backbone, block_size):
    _no_rope_scaling(backbone.rope_scaling_factor)
    return dict(rms_decoder_common_args(backbone, block_size), qkv_bias=False, qk_norm=True,
                head_dim=int(backbone.head_dim),
                sliding_window=int(backbone.sliding_window_size or 0))


def hub_args(gpt):
    return dict(rms_decoder_common_hub_args(gpt), head_dim=attention_head_dim(gpt),
                tie_word_embeddings=bool(gpt.tie_embeddings),
                sliding_window_size=gpt.sliding_window or None)


def hugging_face_gpt_args(config, block_size):
    _no_rope_scaling((config.get("rope_scaling") or {}).get("factor"))
    window = config.get("sliding_window") if config.get("use_sliding_window") else 0
    return dict(rms_decoder_args(config, block_size), norm="rmsnorm", mlp="swiglu",
                qkv_bias=False, qk_norm=True,
                tie_embeddings=bool(config.get("tie_word_embeddings", True)),
                sliding_window=int(window or 0))


def hugging_face_config(gpt, context, dtype):
    return dict(rms_decoder_config(gpt, context, dtype), model_type="qwen3",
                architectures=["Qwen3ForCausalLM"], hidden_act="silu", attention_bias=False,
                use_sliding_window=bool(gpt.sliding_window),
                sliding_window=gpt.sliding_window or None,
                max_window_layers=0 if gpt.sliding_window else gpt.num_layers)


def write_tokenizer(hub_tokenizer, directory, tokenizer_config):
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(hub_tokenizer.vocabulary, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(hub_tokenizer.merges) + "\n")
    # keras-hub's Qwen3 reader takes the merges as pairs.
    write_tokenizer_json(directory, hub_tokenizer, merges_as_pairs=True)
    write_json(os.path.join(directory, "tokenizer_config.json"), dict(
        tokenizer_config, tokenizer_class="Qwen2Tokenizer", bos_token=None,
        eos_token=hub_tokenizer.end_token, pad_token=hub_tokenizer.pad_token,
        add_bos_token=False, additional_special_tokens=special_tokens(hub_tokenizer)))


FAMILY = Family(
    name="qwen3",
    backbones=("Qwen3Backbone",),
    model_types=("qwen3",),
    examples="Qwen3 0.6B to 32B dense (Qwen3ForCausalLM)",
    architecture="Qwen3ForCausalLM",
    gpt_args=gpt_args,
    copy_weights=copy_rms_decoder,
    hub_args=hub_args,
    copy_weights_back=copy_rms_decoder_back,
    hub_classes={"Qwen3Tokenizer": ("Qwen3Backbone", "Qwen3CausalLM",
                                    "Qwen3CausalLMPreprocessor", False)},
    decoder=dict(norm="rmsnorm", position="rope", mlp="swiglu", use_bias=False, qkv_bias=False,
                 qk_norm=True),
    limits="rope scaling (YaRN); the mixture-of-experts models.",
    hugging_face=HuggingFaceForm(hugging_face_gpt_args, hugging_face_config, write_tokenizer),
    stop_tokens=("<|endoftext|>",),
)
