"""Reproduce the tiny-shakespeare CPU reference: validation loss <= 1.88 at step 2000.

    python benchmarks/shakespeare_char.py        # 2000 steps, val loss, tokens/s
    python benchmarks/shakespeare_char.py --seeds 1337 1 2   # median of three

Trains tfchat/configs/shakespeare_char.yaml end to end and prints the validation
loss at step 2000 and the training throughput (median over log intervals, the
first, which includes tracing and compilation, left out). The run goes to a
temporary folder and is deleted. Speed of both shapes, with MFU:
benchmarks/throughput.py.
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfchat  # noqa: E402,F401
from tfchat import config as config_lib  # noqa: E402
from tfchat.job import train  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = config_lib.find_config_file("shakespeare_char")
CORPUS = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt")


def make_config(runs_dir, **train_overrides):
    overrides = {"runs_dir": runs_dir, "data": {"path": CORPUS}, "train": train_overrides}
    return config_lib.build_config([CONFIG], overrides)


def quality(seed, verbose):
    with tempfile.TemporaryDirectory() as runs_dir:
        config = make_config(runs_dir, sample_tokens=0, seed=seed)
        history = train(config, verbose=verbose)
    rates = [h["tokens/s"] for h in history[1:]]
    final = history[-1]
    print(f"seed {seed}, step {final['step']}: val_loss {final['val_loss']:.4f}, "
          f"train loss {final['loss']:.4f}, "
          f"tokens/s median {statistics.median(rates):.0f} "
          f"(ms/step {1000 * config.train.batch_size * config.model.block_size / statistics.median(rates):.1f})",
          flush=True)
    return final["val_loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337],
                        help="Train once per seed (train.seed: weights and data order).")
    args = parser.parse_args()
    losses = [quality(seed, args.verbose) for seed in args.seeds]
    if len(losses) > 1:
        print(f"median val_loss over {len(losses)} seeds: {statistics.median(losses):.4f}")


if __name__ == "__main__":
    main()
