"""A run as a Hugging Face checkpoint or a keras-hub preset, for the tools
outside TensorFlow Serving (`python -m tfchat.export --format hf|keras-hub`).

    hf         config.json (with "architectures"), model.safetensors and the
               tokenizer's files: for transformers, vLLM, llama.cpp's
               convert_hf_to_gguf.py
    keras-hub  a keras-hub preset (metadata.json, config.json,
               model.weights.h5, tokenizer.json, preprocessor.json,
               task.json, assets/): `keras_hub.models.CausalLM.from_preset`

Runs of a pretrained family with the checkpoint's own tokenizer can go (runs
made by `tfchat.convert` or fine-tuned from one); the family is the one the
run's config records (`model.family`, `tfchat.families`).

A keras-hub preset is the way in reversed: the family's module copies the
GPT's weights into a freshly built keras-hub backbone of the family,
keras-hub's CausalLM gets the run's own keras-hub tokenizer in the family's
preprocessor, and keras-hub writes it (`save_to_preset`; the family adds
what keras-hub leaves out, `Family.complete_preset`).

The Hugging Face form is keras-hub's `export_to_transformers` for the
families it writes correctly (GPT-2, Llama, Qwen2), completed with
"architectures" (keras-hub's own loader needs it), the context the run
records as "max_position_embeddings" (rope families), "torch_dtype" and the
family's own additions (`Family.complete_hugging_face`: Qwen2's sliding
window keys and tokenizer.json). The families keras-hub 0.32 writes wrongly
or not at all are written by tfchat itself (`Family.hugging_face`:
config.json, model.safetensors in the shared layout, the tokenizer's files).
Either way tokenizer_config.json gets the run's chat template as Jinja.

A LoRA run is exported merged: pass `tfchat.run.merged_run(run)` (the
command does). The output is written beside its place and renamed into it,
so a failure leaves no half-written folder.
"""

import json
import os
import shutil
import tempfile

from tfchat.errors import TfchatError
from tfchat.families import REGISTRY, exportable_families, of_run
from tfchat.families.weights import hugging_face_tensors
from tfchat.model.lora import lora_layers
from tfchat.serving.export import replace_dir

FORMATS = {"hf": "a Hugging Face checkpoint", "keras-hub": "a keras-hub preset"}


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
    m = config.model
    family = of_run(m)
    if family is None:
        raise TfchatError(
            f"{path} is of no pretrained family (model.family none: a decoder of tfchat's "
            f"own); --format {fmt} exports runs converted from a checkpoint of "
            f"{', '.join(REGISTRY)} (python -m tfchat.convert) or fine-tuned from one."
        )
    differing = [f"{k} {getattr(m, k)} (not {v})" for k, v in family.decoder.items()
                 if getattr(m, k) != v]
    if differing or not family.has_decoder(m):
        raise TfchatError(
            f"{path} records model.family {family.name} but its decoder is not one "
            f"({', '.join(differing) or 'grouped-query attention'}); --format {fmt} exports "
            f"{exportable_families()}."
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
    if fmt == "hf" and not writes_hugging_face and family.hugging_face is None:
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
    family = check_exportable(run.config, fmt, run.path)
    try:
        try:
            if fmt == "keras-hub":
                causal_lm.save_to_preset(staging)
                family.complete_preset(staging, causal_lm.backbone)
            elif family.hugging_face is not None:
                _write_hugging_face(staging, run, family, causal_lm.preprocessor.tokenizer)
            else:
                causal_lm.export_to_transformers(staging)
                _complete_hugging_face(staging, run, family, causal_lm)
        except (ValueError, TypeError, KeyError, NotImplementedError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise TfchatError(f"keras-hub could not write {run.path} as {FORMATS[fmt]}: {first}") from None
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


def _context(run):
    return run.config.model.max_positions or run.backbone.block_size


def _complete_hugging_face(path, run, family, causal_lm):
    """What real checkpoints' config.json and tokenizer files have and
    keras-hub 0.32's exporter leaves out (module docs)."""
    config_path = os.path.join(path, "config.json")
    config = _read(config_path)
    config["architectures"] = [family.architecture]
    config.setdefault("torch_dtype", run.backbone.token_embedding.embeddings.dtype)
    if run.backbone.position == "rope":
        config["max_position_embeddings"] = _context(run)
    family.complete_hugging_face(path, config, run.backbone, _context(run),
                                 causal_lm.preprocessor.tokenizer)
    _write(config_path, config)
    # The run's chat template, as the Jinja that Hugging Face tools render.
    tokenizer_config_path = os.path.join(path, "tokenizer_config.json")
    tokenizer_config = _read(tokenizer_config_path) if os.path.isfile(tokenizer_config_path) else {}
    tokenizer_config["chat_template"] = run.tokenizer.chat_template.to_jinja()
    _write(tokenizer_config_path, tokenizer_config)


def _write_hugging_face(path, run, family, hub_tokenizer):
    """A family tfchat writes itself: config.json, model.safetensors (one
    file) and the tokenizer's files, the chat template included."""
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    gpt = run.backbone
    dtype = gpt.token_embedding.embeddings.dtype
    config = family.hugging_face.config(gpt, _context(run), dtype)
    config.update(bos_token_id=run.tokenizer.bos_id, eos_token_id=run.tokenizer.eos_id,
                  pad_token_id=run.tokenizer.pad_id)
    _write(os.path.join(path, "config.json"), config)
    save_file(hugging_face_tensors(gpt), os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    family.hugging_face.write_tokenizer(
        hub_tokenizer, path, {"chat_template": run.tokenizer.chat_template.to_jinja(),
                              "model_max_length": _context(run)})
