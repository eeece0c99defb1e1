"""A run as a Hugging Face checkpoint or a keras-hub preset, for the tools
outside TensorFlow Serving (`python -m tfchat.export --format hf|keras-hub`).

    hf         config.json (with "architectures"), model.safetensors and the
               tokenizer's files: for transformers, vLLM, llama.cpp's
               convert_hf_to_gguf.py
    keras-hub  a keras-hub preset (metadata.json, config.json,
               model.weights.h5, tokenizer.json, preprocessor.json,
               task.json, assets/): `keras_hub.models.CausalLM.from_preset`

Runs of the families keras-hub writes can go: GPT-2, Llama (Llama 3's
byte-level BPE as `Llama3Backbone`; Llama 2's SentencePiece as a keras-hub
preset only) and Qwen2, with the checkpoint's own tokenizer (runs made by
`tfchat.convert` or fine-tuned from one). The family is the one whose
decoder options the run has (`keras_hub_weights.family_of_decoder`).

The way out is the way in reversed: `keras_hub_weights` copies the GPT's
weights into a freshly built keras-hub backbone of the family, keras-hub's
CausalLM gets the run's own keras-hub tokenizer in the family's
preprocessor, and keras-hub writes it (`save_to_preset`,
`export_to_transformers`). Then what keras-hub 0.32 leaves out is added:

  * Hugging Face `config.json`: "architectures" (keras-hub's own loader
    needs it), the context the run records as "max_position_embeddings"
    (rope families), Qwen2's "use_sliding_window": false, "sliding_window"
    and "max_window_layers", "torch_dtype";
  * Qwen2's `tokenizer.json` (keras-hub writes vocab.json and merges.txt;
    its reader, and real Qwen2 checkpoints, have tokenizer.json);
  * a Llama preset's "tie_word_embeddings" (`LlamaBackbone.get_config`
    omits it from config.json and task.json, so keras-hub would reload a
    tied Llama untied and fail).

A LoRA run is exported merged: pass `tfchat.run.merged_run(run)` (the
command does). The output is written beside its place and renamed into it,
so a failure leaves no half-written folder.
"""

import json
import os
import shutil
import tempfile

from tfchat.errors import TfchatError
from tfchat.model.keras_hub_weights import exportable_families, family_of_decoder
from tfchat.model.lora import lora_layers
from tfchat.serving.export import replace_dir

FORMATS = {"hf": "a Hugging Face checkpoint", "keras-hub": "a keras-hub preset"}
# Qwen2's pre-tokenizer regex, as in its tokenizer.json.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def check_exportable(config, fmt, path="the run"):
    """The `Family` a run's config exports as in `fmt`, checked from the
    config alone (before any weight loads); raises `TfchatError` naming what
    can be exported."""
    if fmt not in FORMATS:
        raise TfchatError(f"--format must be saved_model, {' or '.join(FORMATS)}. Received: {fmt!r}")
    if config.tokenizer.kind != "pretrained":
        raise TfchatError(
            f"--format {fmt} exports runs of a pretrained checkpoint's family with its own "
            f"tokenizer (made by python -m tfchat.convert, or fine-tuned from one); {path} has "
            f"tfchat's own {config.tokenizer.kind} tokenizer, which keras-hub and Hugging Face "
            "tools cannot read. Export it for TF Serving with --format saved_model."
        )
    family = family_of_decoder(config.model)
    if family is None:
        m = config.model
        raise TfchatError(
            f"{path} has a decoder (norm {m.norm}, position {m.position}, mlp {m.mlp}, "
            f"qkv_bias {str(m.qkv_bias).lower()}, use_bias {str(m.use_bias).lower()}, "
            f"tie_embeddings {str(m.tie_embeddings).lower()}) of no family keras-hub writes; "
            f"--format {fmt} exports {exportable_families()}."
        )
    return family


def _hub_classes(run, family, fmt):
    """(backbone, CausalLM, preprocessor) keras-hub classes for `run`."""
    import keras_hub  # pylint: disable=import-outside-toplevel  (slow; after the checks)

    name = type(run.tokenizer.hub_tokenizer).__name__
    classes = family.hub_classes.get(name)
    if classes is None:
        raise TfchatError(
            f"{run.path} has a {family.name} decoder but a keras-hub {name} tokenizer; "
            f"a {family.name} exports with {' or '.join(family.hub_classes)}."
        )
    *names, writes_hugging_face = classes
    if fmt == "hf" and not writes_hugging_face:
        raise TfchatError(
            f"keras-hub cannot write a {names[0]} with a {name} in Hugging Face form; "
            f"export {run.path} with --format keras-hub."
        )
    return [getattr(keras_hub.models, n) for n in names]


def hub_causal_lm(run, fmt="keras-hub"):
    """keras-hub's CausalLM of a run without LoRA adapters: a fresh backbone
    of the run's family holding the run's weights, with the run's own
    keras-hub tokenizer in the family's preprocessor (its sequence length
    the run's block size)."""
    family = check_exportable(run.config, fmt, run.path)
    if lora_layers(run.backbone):
        raise TfchatError(
            f"{run.path} has LoRA adapters; export tfchat.run.merged_run(run), its merged model."
        )
    backbone_cls, task_cls, preprocessor_cls = _hub_classes(run, family, fmt)
    gpt = run.backbone
    backbone = backbone_cls(**family.hub_args(gpt), dtype=gpt.token_embedding.embeddings.dtype)
    family.copy_weights_back(gpt, backbone)
    preprocessor = preprocessor_cls(tokenizer=run.tokenizer.hub_tokenizer,
                                    sequence_length=gpt.block_size)
    return task_cls(backbone=backbone, preprocessor=preprocessor)


def check_out(out, overwrite):
    """Raises unless `out` may be written (absent, or `overwrite`)."""
    if os.path.exists(out) and not overwrite:
        raise TfchatError(f"{out} already exists; pass --force to replace it.")
    if os.path.exists(out) and not os.path.isdir(out):
        raise TfchatError(f"{out} exists and is not a folder.")


def export_hub(run, out, fmt, overwrite=False):
    """Writes `run` (no LoRA adapters: see module docs) to the folder `out`
    in `fmt` ("hf" or "keras-hub"). Returns `out`."""
    check_exportable(run.config, fmt, run.path)
    check_out(out, overwrite)
    causal_lm = hub_causal_lm(run, fmt)
    parent = os.path.dirname(os.path.abspath(out))
    name = os.path.basename(os.path.normpath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{name}.exporting-", dir=parent)
    except OSError as e:
        raise TfchatError(f"Cannot write to {parent}: {e.strerror or e}.") from None
    try:
        try:
            if fmt == "keras-hub":
                causal_lm.save_to_preset(staging)
            else:
                causal_lm.export_to_transformers(staging)
        except (ValueError, TypeError, KeyError, NotImplementedError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise TfchatError(f"keras-hub could not write {run.path} as {FORMATS[fmt]}: {first}") from None
        if fmt == "keras-hub":
            _complete_preset(staging, causal_lm.backbone)
        else:
            _complete_hugging_face(staging, run, causal_lm)
        replace_dir(staging, os.path.abspath(out), f"{staging}.old")
    except OSError as e:
        raise TfchatError(f"Cannot write to {out}: {e.strerror or e}.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)


def _complete_preset(path, backbone):
    """keras-hub 0.32's `LlamaBackbone.get_config` leaves out
    `tie_word_embeddings`: written here into the backbone's config, in
    config.json and in task.json, so keras-hub (and tfchat.convert) reload
    a tied Llama tied."""
    if not hasattr(backbone, "tie_word_embeddings"):
        return
    tied = bool(backbone.tie_word_embeddings)
    for name, keys in (("config.json", ("config",)), ("task.json", ("config", "backbone", "config"))):
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            continue
        document = _read(file_path)
        config = document
        for key in keys:
            config = config[key]
        if "tie_word_embeddings" not in config:
            config["tie_word_embeddings"] = tied
            _write(file_path, document)


def _complete_hugging_face(path, run, causal_lm):
    """What real checkpoints' config.json and tokenizer files have and
    keras-hub 0.32's exporter leaves out (module docs)."""
    family = family_of_decoder(run.backbone)
    config_path = os.path.join(path, "config.json")
    config = _read(config_path)
    config["architectures"] = [family.architecture]
    config.setdefault("torch_dtype", run.backbone.token_embedding.embeddings.dtype)
    context = run.config.model.max_positions or run.backbone.block_size
    if run.backbone.position == "rope":
        config["max_position_embeddings"] = context
    if family.name == "qwen2":
        config.update(use_sliding_window=False, sliding_window=context,
                      max_window_layers=run.backbone.num_layers)
    _write(config_path, config)
    tokenizer = causal_lm.preprocessor.tokenizer
    # The run's chat template, as the Jinja that Hugging Face tools render.
    tokenizer_config_path = os.path.join(path, "tokenizer_config.json")
    tokenizer_config = _read(tokenizer_config_path) if os.path.isfile(tokenizer_config_path) else {}
    tokenizer_config["chat_template"] = run.tokenizer.chat_template.to_jinja()
    _write(tokenizer_config_path, tokenizer_config)
    if family.name == "qwen2" and not os.path.exists(os.path.join(path, "tokenizer.json")):
        _write(os.path.join(path, "tokenizer.json"), qwen2_tokenizer_json(
            tokenizer.vocabulary, tokenizer.merges, _special_tokens(tokenizer)))


def _special_tokens(tokenizer):
    """A keras-hub byte-pair tokenizer's special (unsplittable) tokens."""
    return sorted(set(getattr(tokenizer, "unsplittable_tokens", None) or [])
                  | set(getattr(tokenizer, "special_tokens", None) or []))


def qwen2_tokenizer_json(vocabulary, merges, special_tokens):
    """Qwen2's tokenizer.json in the Hugging Face `tokenizers` layout: its
    pre-tokenizer regex and byte-level BPE over `vocabulary` ({token: id})
    and `merges` (["a b", ...]), `special_tokens` as added tokens."""
    vocabulary = dict(vocabulary)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocabulary[t], "content": t, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for t in sorted(special_tokens, key=vocabulary.get)
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
        "model": {"type": "BPE", "vocab": vocabulary, "merges": list(merges), "dropout": None,
                  "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False},
    }
