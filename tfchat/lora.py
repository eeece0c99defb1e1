"""Fold a LoRA run's adapters into its weights: `python -m tfchat.lora merge`.

    python -m tfchat.lora merge --run runs/my_chat            # -> runs/my_chat_merged
    python -m tfchat.lora merge --run runs/my_chat --out runs/served

The merged run is an ordinary run (config with model.lora_rank 0, the same
tokenizer, one checkpoint of the merged weights at the same step) that every
tfchat command loads, computes what the adapted model computes, and runs
without the adapters' extra matmuls. The LoRA run itself is left as it was.
"""

import argparse
import os
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

from tfchat import cli


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


@cli.command
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = args.out or os.path.normpath(args.run) + "_merged"
    from tfchat.run import merge_lora_run

    merge_lora_run(args.run, out, overwrite=args.overwrite)
    print(f"Merged the adapters of {args.run} into {out}.\n"
          f"  python -m tfchat.chat --run {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
