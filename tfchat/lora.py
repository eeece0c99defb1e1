"""Fold a LoRA run's adapters into its weights: `python -m tfchat.lora merge`.

    python -m tfchat.lora merge --run runs/my_chat            # -> runs/my_chat_merged
    python -m tfchat.lora merge --run runs/my_chat --out runs/served

The merged run is an ordinary run (config with model.lora_rank 0, the same
tokenizer, one checkpoint of the merged weights at the same step) that every
tfchat command loads, computes what the adapted model computes, and runs
without the adapters' extra matmuls. The LoRA run itself is left as it was.
"""

import argparse
import dataclasses
import os
import shutil
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

import tfchat  # noqa: F401  (sets the Keras backend)
from tfchat.errors import TfchatError


def merge_run(run_path, out_path, overwrite=False):
    """Writes the merged copy of the LoRA run at `run_path` to `out_path`."""
    import tensorflow as tf

    from tfchat import config as config_lib
    from tfchat.model.lora import merge_lora
    from tfchat.run import (
        CHECKPOINT_DIR, CONFIG_FILE, TOKENIZER_DIR, build_model, load_run,
    )

    run = load_run(run_path)
    if not run.config.model.lora_rank:
        raise TfchatError(f"The run at {run_path} has no LoRA adapters (model.lora_rank is 0).")
    if os.path.exists(out_path):
        if not overwrite:
            raise TfchatError(f"{out_path} already exists; pass --overwrite to replace it.")
        shutil.rmtree(out_path)
    name = os.path.basename(os.path.normpath(out_path))
    config = dataclasses.replace(
        run.config,
        name=name,
        runs_dir=os.path.dirname(os.path.normpath(out_path)),
        model=dataclasses.replace(run.config.model, lora_rank=0),
    )
    merged = build_model(config, run.tokenizer.vocabulary_size)
    merge_lora(run.backbone, merged.backbone)
    os.makedirs(out_path)
    shutil.copytree(os.path.join(run_path, TOKENIZER_DIR), os.path.join(out_path, TOKENIZER_DIR))
    config_lib.save(config, os.path.join(out_path, CONFIG_FILE))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=merged), os.path.join(out_path, CHECKPOINT_DIR), max_to_keep=1
    )
    manager.save(checkpoint_number=run.step)
    return out_path


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.lora",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="Fold the adapters into the base weights.")
    merge.add_argument("--run", required=True, help="A run trained with model.lora_rank > 0.")
    merge.add_argument("--out", default=None, help="Where to write the merged run (default: <run>_merged).")
    merge.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    quiet.add_verbose_flag(merge)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = args.out or os.path.normpath(args.run) + "_merged"
    try:
        merge_run(args.run, out, overwrite=args.overwrite)
    except TfchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Merged the adapters of {args.run} into {out}.\n"
          f"  python -m tfchat.chat --run {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
