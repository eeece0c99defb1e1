"""Fill in [MASK]ed words with a masked-LM run.

    python -m tfchat.fill_mask --run runs/enc "To be or not to [MASK]."
    python -m tfchat.fill_mask --run runs/enc --top-k 10 "a [MASK] b" "c [MASK]"

For each [MASK] in each text it prints the top-k candidate pieces with their
probabilities, then the text with every [MASK] filled by its best candidate.
Only ordinary vocabulary pieces are candidates, never special tokens.
"""

import argparse
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

from tfchat import cli
from tfchat.errors import TfchatError

MASK = "[MASK]"  # tfchat.data.tokenizer.MASK_TOKEN, without importing TensorFlow for --help


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.fill_mask",
        description="Fill in [MASK]ed words with a masked-LM run (objective mlm).",
    )
    parser.add_argument("--run", required=True, help="Run folder, e.g. runs/enc.")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help=f"Text with one or more {MASK}.")
    parser.add_argument("--top-k", type=int, default=5, help="Candidates shown per [MASK].")
    cli.add_checkpoint_flag(parser, default="latest", choices=("latest", "best"),
                            help="Which checkpoint of the run to load.")
    quiet.add_verbose_flag(parser)
    return parser


@cli.command
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise TfchatError(f"--top-k must be at least 1. Received: {args.top_k}")
    from tfchat.inference.fill_mask import FillMask

    fill = FillMask.for_run(cli.load_command_run(args.run, args.checkpoint))
    predictions = fill.predict(args.texts, min(args.top_k, fill.candidates))
    for text, masks in zip(args.texts, predictions):
        print(text)
        for i, candidates in enumerate(masks, start=1):
            label = f"  {MASK} {i}: " if len(masks) > 1 else f"  {MASK}: "
            print(label + ", ".join(f"{piece} {p:.4f}" for piece, p in candidates))
        print("  -> " + fill.fill(text, masks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
