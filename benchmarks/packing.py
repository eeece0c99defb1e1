"""Useful tokens per batch and per second, packed against one sequence per
row, on the default job's settings.

    python benchmarks/packing.py --steps 200 --rounds 3

Two data sets, both the English chatterbot conversations: the default job
itself (`objective: chat`, the conversations rendered with the chat
template) and the same corpus as documents for causal-LM pretraining
(`objective: causal`: each conversation a "User:/Bot:" transcript; unpacked,
the transcripts run into each other as one stream). Each round trains every
arm for `--steps` steps in this process, the arms alternating; tokens/s is
the trainer's own figure, the median over its log intervals after the first
(which compiles). Prints a Markdown table of medians over rounds.
"""

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfchat import config as config_lib  # noqa: E402
from tfchat.job import train  # noqa: E402

ARMS = [
    ("default job (chat)", {"objective": "chat"}),
    ("chatterbot as documents (causal)", {"objective": "causal"}),
    ("default job at the old 64-token blocks (chat)",
     {"objective": "chat", "model": {"block_size": 64}}),
]


def measure(runs_dir, name, overrides, steps):
    settings = {
        "name": name, "runs_dir": runs_dir, **overrides,
        "train": {"max_steps": steps, "log_interval": 20, "eval_interval": steps,
                  "eval_batches": 1, "sample_tokens": 0, "warmup_steps": 10},
    }
    objective = settings.pop("objective")
    data = settings.pop("data")
    config = config_lib.build_config(overrides={**settings, "objective": objective, "data": data})
    history = train(config, overwrite=True, verbose=0)[1:]
    return {
        "useful_fraction": statistics.median(h["useful_fraction"] for h in history),
        "tokens/s": statistics.median(h["tokens/s"] for h in history),
        "useful_tokens/s": statistics.median(h["useful_tokens/s"] for h in history),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arms", default="", help="Comma-separated arm numbers (0-based); "
                        "default all.")
    args = parser.parse_args()
    arms = [ARMS[int(i)] for i in args.arms.split(",")] if args.arms else ARMS
    runs_dir = tempfile.mkdtemp(prefix="packing_")
    results = {}
    for round_ in range(args.rounds):
        for label, overrides in arms:
            for packing in (True, False):
                row = measure(runs_dir, f"r{round_}", {**overrides, "data": {"packing": packing}},
                              args.steps)
                results.setdefault((label, packing), []).append(row)
                print(round_, label, packing, row, flush=True)
    print("\n| data | packing | useful fraction | tokens/s | useful tokens/s | packed ÷ unpacked |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, _ in arms:
        medians = {p: {k: statistics.median(r[k] for r in results[(label, p)])
                       for k in results[(label, p)][0]} for p in (True, False)}
        ratio = medians[True]["useful_tokens/s"] / medians[False]["useful_tokens/s"]
        for packing in (True, False):
            m = medians[packing]
            print(f"| {label} | {'on' if packing else 'off'} | {m['useful_fraction']:.3f} | "
                  f"{m['tokens/s']:.0f} | {m['useful_tokens/s']:.0f} | "
                  f"{f'{ratio:.2f}x' if packing else ''} |")


if __name__ == "__main__":
    main()
