"""Qwen2 and Qwen2.5 (keras-hub `QwenBackbone`, Hugging Face `qwen2`): the
Llama layout with biases on q, k and v, and an optional sliding attention
window (applied in every layer, as keras-hub does). Weights map as
`tfchat.families.weights` describes. Its chat format is ChatML (generic:
`tfchat.data.chat_format`), with a default system message read from its
Jinja template.

keras-hub 0.32's exporter writes vocab.json and merges.txt but no
tokenizer.json, which keras-hub's own reader and real Qwen2 checkpoints
have (`qwen2_tokenizer_json`), and no sliding-window keys.
"""

import os

from tfchat.families.base import Family
from tfchat.families.weights import (
    copy_rms_decoder, copy_rms_decoder_back, rms_decoder_common_args,
    read_json_file, rms_decoder_common_hub_args, write_json,
)

# Qwen2's pre-tokenizer regex, as in its tokenizer.json.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def gpt_args(backbone, block_size):
    """No linear rope scaling (tfchat has none)."""
    if getattr(backbone, "rope_scaling_factor", 1.0) != 1.0:
        raise ValueError(
            "Linear rope scaling is not supported. Received: "
            f"rope_scaling_factor={backbone.rope_scaling_factor}"
        )
    window = backbone.sliding_window_size if backbone.use_sliding_window_attention else 0
    return dict(rms_decoder_common_args(backbone, block_size), qkv_bias=True,
                sliding_window=int(window or 0))


def hub_args(gpt):
    return dict(rms_decoder_common_hub_args(gpt), tie_word_embeddings=bool(gpt.tie_embeddings),
                rope_scaling_factor=1.0, use_sliding_window_attention=bool(gpt.sliding_window),
                sliding_window_size=gpt.sliding_window or 32768)


def missing_backbone_args(kind, path):
    """keras-hub 0.32's Hugging Face reader passes Qwen2's window under a
    name `QwenBackbone` does not take, so a windowed checkpoint would load
    unwindowed: the window is passed here. Hugging Face windows the layers
    from `max_window_layers` on; tfchat (like keras-hub) windows all or none."""
    if kind != "hugging-face":
        return {}
    config = read_json_file(os.path.join(path, "config.json"))
    if not config.get("use_sliding_window"):
        return {}
    layers = config.get("max_window_layers", 0) or 0
    if 0 < layers < config["num_hidden_layers"]:
        raise ValueError(f"a sliding window in layers {layers} and up only is not supported "
                         "(tfchat windows every layer or none)")
    if layers >= config["num_hidden_layers"]:
        return {}  # no layer is windowed
    return {"use_sliding_window_attention": True, "sliding_window_size": int(config["sliding_window"])}


def special_tokens(tokenizer):
    """A keras-hub byte-pair tokenizer's special (unsplittable) tokens."""
    return sorted(set(getattr(tokenizer, "unsplittable_tokens", None) or [])
                  | set(getattr(tokenizer, "special_tokens", None) or []))


def qwen2_tokenizer_json(vocabulary, merges, special, merges_as_pairs=False):
    """Qwen2's tokenizer.json in the Hugging Face `tokenizers` layout: its
    pre-tokenizer regex and byte-level BPE over `vocabulary` ({token: id})
    and `merges` (["a b", ...]; written as [["a", "b"], ...] with
    `merges_as_pairs`, as newer `tokenizers` releases and Qwen3 do),
    `special` tokens as added tokens."""
    vocabulary = dict(vocabulary)
    merges = [m.split(" ") for m in merges] if merges_as_pairs else list(merges)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocabulary[t], "content": t, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for t in sorted(special, key=vocabulary.get)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "vocab": vocabulary, "merges": merges, "dropout": None,
                  "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False},
    }


def write_tokenizer_json(path, hub_tokenizer, merges_as_pairs=False):
    """tokenizer.json beside keras-hub's vocab.json and merges.txt."""
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        write_json(os.path.join(path, "tokenizer.json"), qwen2_tokenizer_json(
            hub_tokenizer.vocabulary, hub_tokenizer.merges, special_tokens(hub_tokenizer),
            merges_as_pairs))


def complete_hugging_face(path, config, gpt, context, hub_tokenizer):
    config.update(use_sliding_window=bool(gpt.sliding_window),
                  sliding_window=gpt.sliding_window or context,
                  # Hugging Face windows the layers from this index on.
                  max_window_layers=0 if gpt.sliding_window else gpt.num_layers)
    write_tokenizer_json(path, hub_tokenizer)


FAMILY = Family(
    name="qwen2",
    backbones=("QwenBackbone",),
    model_types=("qwen2",),
    examples="Qwen2, Qwen2.5 (Qwen2ForCausalLM)",
    architecture="Qwen2ForCausalLM",
    gpt_args=gpt_args,
    copy_weights=copy_rms_decoder,
    hub_args=hub_args,
    copy_weights_back=copy_rms_decoder_back,
    hub_classes={"QwenTokenizer": ("QwenBackbone", "QwenCausalLM", "QwenCausalLMPreprocessor", True)},
    decoder=dict(norm="rmsnorm", position="rope", mlp="swiglu", use_bias=False, qkv_bias=True,
                 rope_scaling_factor=1.0),
    limits="linear rope scaling; a sliding window only in some layers (max_window_layers).",
    complete_hugging_face=complete_hugging_face,
    missing_backbone_args=missing_backbone_args,
)
