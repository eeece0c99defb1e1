"""Export a trained run as a SavedModel that stock TF Serving serves as is
(the default), or, for runs of a pretrained family, as a Hugging Face
checkpoint or a keras-hub preset.

    python -m tfchat.export --run runs/default                # saved_models/default/<next>/
    python -m tfchat.export --run runs/default --name chat --version 3 --force
    python -m tfchat.export --run runs/smollm2 --format hf --out exports/smollm2
    python -m tfchat.export --run runs/smollm2 --format keras-hub --out exports/smollm2_preset
    python -m tfchat.export --run runs/default --quantize int8 --name default_int8

Formats (`--format`):

  * `saved_model` (default): TF Serving's SavedModel, below.
  * `hf`: a Hugging Face checkpoint in `--out` (config.json with
    "architectures", model.safetensors, the tokenizer's files) for
    transformers, vLLM or llama.cpp's convert_hf_to_gguf.py.
  * `keras-hub`: a keras-hub preset in `--out`, for
    `keras_hub.models.CausalLM.from_preset`.

`hf` and `keras-hub` take runs of the families keras-hub writes, GPT-2,
Llama (Llama 2's SentencePiece tokenizer: keras-hub only) and Qwen2, with the
checkpoint's own tokenizer: runs made by `python -m tfchat.convert` or
fine-tuned from one (`fit --init_from`). A LoRA run is exported with its
adapters merged. `--out` is written whole or not at all; an existing one is
replaced only with `--force`.

The SavedModel lands in TF Serving's base-path layout,
`saved_models/<name>/<version>/`: point TF Serving's `--model_base_path` at
`saved_models/<name>` and it loads the highest version. Signatures (tag
`serve`) take and return strings; the tokenizer, the sampling loop and the
detokenizer run inside the graph with core TensorFlow and tensorflow-text ops
only (no `py_function`, no XLA), so no tfchat, Keras or Python is needed to
serve. The first signature of each objective is also `serving_default`.

Causal (GPT) runs; chat runs add `chat` (roles, contents -> the reply):

  * `generate`: `prompt` [B] string, and optionally `max_new_tokens`,
    `temperature`, `top_k`, `top_p`, `seed` (one value, or one per prompt)
    -> `text`, `num_tokens`, `num_prompt_tokens`.
  * `score`: `text` [B] string -> `log_likelihood` (mean per token),
    `perplexity`, `num_tokens`.

Masked-LM (mlm) runs:

  * `fill_mask`: `text` [B] string with `[MASK]` markers, optional `top_k`
    (default 5; one value, or one per text) -> `tokens` [B, M, K] string and
    `probabilities` [B, M, K] float (the top-k pieces for every [MASK],
    best first, padded with "" and 0.0), `num_masks` [B], `filled` [B] (the
    text with each [MASK] replaced by its best piece). A text without a
    [MASK] gets no candidates and comes back unchanged.

Classify runs:

  * `classify`: `text` [B] string -> `label` [B] string, `probabilities`
    [B, K] float, `labels` [B, K] string (the label names, in the order of
    `probabilities`).

An encoder reads `[CLS] text [SEP]`; a text longer than the context is cut
at the end, as in training (a [MASK] past the cut is not read).

`--quantize int8` stores every Dense kernel and embedding table of a causal
or chat run as int8 with abs-max scales (one per output column, one per
embedding row: Keras' int8 scheme with its activation quantizer off), about a
quarter of the float32 size. Matmuls still run in floating point on the
dequantized weights, with core ops only, so the same TF Serving runs it.
`chat`, `generate` and `evaluate` take `--quantize int8` too, to try the
quantized model before exporting it.

`<version>/assets.extra/tfchat.json` records what was exported: tfchat
version, config, tokenizer, training step, validation metrics, signatures,
the quantization (method, and each weight's scales: min, median, max), and
the label names (classify) or the mask token (mlm).
A version is written to a temporary folder and renamed into place, so TF
Serving never sees half a model; an existing version is replaced only with
`--force`.
"""

import argparse
import json
import os
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

from tfchat import cli
from tfchat.errors import TfchatError

DEFAULT_SAVED_MODELS_DIR = "saved_models"
FORMATS = ("saved_model", "hf", "keras-hub")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, help="Run folder, e.g. runs/default.")
    cli.add_checkpoint_flag(parser)
    parser.add_argument("--name", default=None,
                        help="Model name (folder under the saved models folder). Default: the run's name.")
    parser.add_argument("--version", type=int, default=None,
                        help="Integer version folder. Default: one above the highest existing.")
    parser.add_argument("--saved-models-dir", default=DEFAULT_SAVED_MODELS_DIR,
                        help="Where model folders live (TF Serving's model base paths).")
    parser.add_argument("--force", action="store_true",
                        help="Replace the version (or --out) if it already exists.")
    parser.add_argument("--format", default="saved_model", choices=FORMATS,
                        help="saved_model (default: TF Serving), hf (a Hugging Face checkpoint) "
                             "or keras-hub (a keras-hub preset).")
    parser.add_argument("--out", default=None,
                        help="The folder to write, for --format hf and keras-hub.")
    cli.add_quantize_flag(parser, help="SavedModel with int8 weights: every Dense kernel (one "
                          "scale per output column) and embedding table (one per row) of a "
                          "causal or chat run; computation stays in floating point, core "
                          "ops only. The method and scales go into tfchat.json.")
    quiet.add_verbose_flag(parser)
    return parser


def export_hub_format(args):
    """`--format hf|keras-hub`: the run checked from its config first, then
    loaded, LoRA adapters merged in memory, and written to `--out`."""
    if args.quantize:
        raise TfchatError(f"--quantize is for --format saved_model; --format {args.format} "
                          "writes float weights.")
    if args.out is None:
        raise TfchatError(f"--format {args.format} needs --out DIR, the folder to write.")
    if args.name is not None or args.version is not None:
        raise TfchatError("--name and --version are for --format saved_model; "
                          f"--format {args.format} writes --out.")
    from tfchat.run import load_config, load_run, merged_run
    from tfchat.serving.hub_export import check_exportable, check_out, export_hub

    family = check_exportable(load_config(args.run), args.format, args.run)
    check_out(args.out, args.force)
    run = load_run(args.run, checkpoint=args.checkpoint)  # built as merged_run builds its model: the same weight names
    merged = bool(run.config.model.lora_rank)
    if merged:
        run = merged_run(run)
    export_hub(run, args.out, args.format, overwrite=args.force)
    what = "a Hugging Face checkpoint" if args.format == "hf" else "a keras-hub preset"
    print(f"Exported {args.run} (a {family.name} model, {run.checkpoint} checkpoint, step {run.step}"
          f"{', LoRA adapters merged' if merged else ''}) to {args.out} as {what}.")
    if args.format == "hf":
        print("Load it with transformers.AutoModelForCausalLM.from_pretrained"
              f"({args.out!r}), vLLM, or llama.cpp's convert_hf_to_gguf.py {args.out}")
    else:
        print(f"Load it with keras_hub.models.CausalLM.from_preset({args.out!r})")


@cli.command
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.format != "saved_model":
        export_hub_format(args)
        return 0
    if args.out is not None:
        raise TfchatError("--out is for --format hf and keras-hub; a SavedModel goes to "
                          "--saved-models-dir/<name>/<version>.")
    # Here, not at the top: --help and argument errors answer without
    # loading TensorFlow.
    from tfchat.serving.export import METADATA_DIR, METADATA_FILE, export_run

    run = cli.load_command_run(args.run, args.checkpoint, args.quantize)
    path = export_run(run, args.saved_models_dir, args.name, args.version, args.force)
    with open(os.path.join(path, METADATA_DIR, METADATA_FILE), encoding="utf-8") as f:
        signatures = json.load(f)["signatures"]
    print(f"Exported {args.run} ({run.checkpoint} checkpoint, step {run.step}) to {path}")
    for key, spec in sorted(signatures.items()):
        inputs = ", ".join(f"{k}: {v}" for k, v in sorted(spec["inputs"].items()))
        outputs = ", ".join(sorted(spec["outputs"]))
        print(f"  {key}({inputs}) -> {outputs}")
    base = os.path.abspath(os.path.dirname(path))
    name = os.path.basename(base)
    print(
        "Serve it with:\n"
        f"  docker run -p 8501:8501 -v {base}:/models/{name} "
        f"-e MODEL_NAME={name} tensorflow/serving"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
