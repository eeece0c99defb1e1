"""Export a trained run as a SavedModel that stock TF Serving serves as is
(the default), or, for runs of a pretrained family, as a Hugging Face
checkpoint or a keras-hub preset.

    python -m tfchat.export --run runs/default                # saved_models/default/<next>/
    python -m tfchat.export --run runs/default --name chat --version 3 --force
    python -m tfchat.export --run runs/smollm2 --format hf --out exports/smollm2
    python -m tfchat.export --run runs/smollm2 --format keras-hub --out exports/smollm2_preset
    python -m tfchat.export --run runs/default --quantize int8 --name default_int8

Formats (`--format`):

  * `saved_model` (default): TF Serving's base-path layout,
    `saved_models/<name>/<version>/` (point `--model_base_path` at
    `saved_models/<name>`). Signatures (tag `serve`) take and return strings;
    tokenizer, sampling loop and detokenizer run in the graph with core
    TensorFlow and tensorflow-text ops only, so no tfchat, Keras or Python is
    needed to serve. Causal runs: `generate` (prompt -> text) and `score`
    (text -> log_likelihood, perplexity); chat runs add `chat` (roles,
    contents -> the reply); mlm runs `fill_mask`; classify runs `classify`
    (each printed with its inputs; README's "Export and serve" has them all).
  * `hf`: a Hugging Face checkpoint in `--out` (config.json with
    "architectures", model.safetensors, the tokenizer's files) for
    transformers, vLLM or llama.cpp's convert_hf_to_gguf.py.
  * `keras-hub`: a keras-hub preset in `--out`, for
    `keras_hub.models.CausalLM.from_preset`.

`hf` and `keras-hub` take runs of a pretrained family (the run's
model.family; `python -m tfchat.convert --help` lists them) with the
checkpoint's own tokenizer (converted or fine-tuned from one), LoRA merged.

`--quantize int8` stores every Dense kernel and embedding table of a causal
or chat run as int8 with abs-max scales, about a quarter of the float32
size; matmuls still run in floating point, with core ops only.
`<version>/assets.extra/tfchat.json` records what was exported (version,
config, tokenizer, step, metrics, signatures, quantization scales, labels or
mask token). A version or `--out` is written to a temporary folder and
renamed into place; an existing one is replaced only with `--force`.
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
    print("Load it with " + (f"transformers.AutoModelForCausalLM.from_pretrained({args.out!r}), "
                             f"vLLM, or llama.cpp's convert_hf_to_gguf.py {args.out}"
                             if args.format == "hf" else
                             f"keras_hub.models.CausalLM.from_preset({args.out!r})"))


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
