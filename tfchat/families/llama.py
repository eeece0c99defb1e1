"""Llama 2 and 3.x (keras-hub `LlamaBackbone` / `Llama3Backbone`, Hugging
Face `llama`; SmolLM2 and TinyLlama have its layout): RMSNorm, rope with
Llama 3's frequency scaling, SwiGLU, grouped-query attention, no biases, a
tied or untied head. Weights map as `tfchat.families.weights` describes.

Its chat format, Llama 3 Instruct's header markers:
    <|start_header_id|>user<|end_header_id|>\\n\\nHi!<|eot_id|>...
(contents trimmed, as its Jinja template does; <|begin_of_text|> first).

keras-hub 0.32 drops two things when it reads a Llama (`missing_backbone_args`)
and one when it writes a preset (`complete_preset`).
"""

import os

from tfchat.data.chat_format import ChatTemplate, same_for_roles
from tfchat.families.base import Family
from tfchat.families.weights import (
    copy_rms_decoder, copy_rms_decoder_back, read_json_file, rms_decoder_common_args,
    rms_decoder_common_hub_args, write_json,
)

LLAMA3_TEMPLATE = ChatTemplate(
    "llama3", *same_for_roles("<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>"),
    end_of_turn="<|eot_id|>", strip_content=True,
    markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)


def gpt_args(backbone, block_size):
    """Llama 3 rope scaling included when it has one; linear position
    scaling is not supported."""
    linear = getattr(backbone, "rope_position_scaling_factor", 1.0)
    if linear != 1.0:
        raise ValueError(
            f"Linear rope scaling is not supported. Received: rope_position_scaling_factor={linear}"
        )
    args = dict(rms_decoder_common_args(backbone, block_size), qkv_bias=False)
    if backbone.rope_frequency_adjustment_factor is not None:
        args.update(
            rope_scaling_factor=float(backbone.rope_frequency_adjustment_factor),
            rope_low_freq_factor=float(backbone.rope_low_freq_factor),
            rope_high_freq_factor=float(backbone.rope_high_freq_factor),
            rope_original_max_positions=int(backbone.rope_pretraining_sequence_length),
        )
    return args


def hub_args(gpt):
    """Llama 3's rope scaling when `rope_scaling_factor` is above 1."""
    args = dict(rms_decoder_common_hub_args(gpt), tie_word_embeddings=bool(gpt.tie_embeddings))
    if gpt.rope_scaling_factor != 1.0:
        args.update(
            rope_frequency_adjustment_factor=float(gpt.rope_scaling_factor),
            rope_low_freq_factor=float(gpt.rope_low_freq_factor),
            rope_high_freq_factor=float(gpt.rope_high_freq_factor),
            rope_pretraining_sequence_length=int(gpt.rope_original_max_positions),
        )
    return args


def missing_backbone_args(kind, path):
    """What keras-hub 0.32 drops from a Llama's config when it reads one.

    A Hugging Face Llama: its converter ignores `rms_norm_eps` (every Llama
    would get keras-hub's default 1e-6; Llama 3 and SmolLM2 use 1e-5), so it
    is passed here.

    A keras-hub preset: `LlamaBackbone.get_config` does not write
    `tie_word_embeddings`, so a tied Llama (SmolLM2, Llama 3.2 1B) saved as a
    preset reloads untied and fails, in keras-hub too, for want of
    `reverse_embeddings`. The weights file tells: a tied embedding has one
    variable, an untied one two."""
    if kind == "hugging-face":
        eps = read_json_file(os.path.join(path, "config.json")).get("rms_norm_eps")
        return {} if eps is None else {"layer_norm_epsilon": float(eps)}
    if kind != "keras-hub":
        return {}
    config = read_json_file(os.path.join(path, "config.json")).get("config", {})
    if "tie_word_embeddings" in config:
        return {}
    import h5py  # pylint: disable=import-outside-toplevel  (Keras' own dependency)

    with h5py.File(os.path.join(path, "model.weights.h5"), "r") as weights:
        group = weights.get("layers/reversible_embedding/vars")
        if group is None:
            return {}
        return {"tie_word_embeddings": len(group) == 1}


def complete_preset(path, backbone):
    """`LlamaBackbone.get_config` leaves out `tie_word_embeddings`: written
    into config.json and task.json, so keras-hub (and tfchat.convert)
    reload a tied Llama tied."""
    tied = bool(backbone.tie_word_embeddings)
    for name, keys in (("config.json", ("config",)), ("task.json", ("config", "backbone", "config"))):
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            continue
        document = read_json_file(file_path)
        config = document
        for key in keys:
            config = config[key]
        if "tie_word_embeddings" not in config:
            config["tie_word_embeddings"] = tied
            write_json(file_path, document)


FAMILY = Family(
    name="llama",
    backbones=("LlamaBackbone", "Llama3Backbone"),
    model_types=("llama",),
    examples="Llama 2/3.x, SmolLM2, TinyLlama (LlamaForCausalLM)",
    architecture="LlamaForCausalLM",
    gpt_args=gpt_args,
    copy_weights=copy_rms_decoder,
    hub_args=hub_args,
    copy_weights_back=copy_rms_decoder_back,
    hub_classes={
        "Llama3Tokenizer": ("Llama3Backbone", "Llama3CausalLM", "Llama3CausalLMPreprocessor", True),
        # Llama 2's SentencePiece: keras-hub 0.32 writes it as a preset only.
        "LlamaTokenizer": ("LlamaBackbone", "LlamaCausalLM", "LlamaCausalLMPreprocessor", False),
    },
    decoder=dict(norm="rmsnorm", position="rope", mlp="swiglu", use_bias=False, qkv_bias=False),
    chat_templates=(LLAMA3_TEMPLATE,),
    limits="linear rope position scaling; Llama 2's SentencePiece exports as a keras-hub preset only.",
    missing_backbone_args=missing_backbone_args,
    complete_preset=complete_preset,
)
