"""Distillation (issue 20): a 2-layer, 64-wide student distilled from the
4-layer, 128-wide tiny-shakespeare model against the same student trained
on the data alone, the same steps, median of seeds.

    python -m tfchat.fit --config shakespeare_char --name shakespeare_char   # the teacher
    python benchmarks/distill.py --teacher runs/shakespeare_char --seeds 1 2 3

Each student is `python -m tfchat.fit --config shakespeare_char
--model.num_layers 2 --model.hidden_dim 64 --train.seed S` (2,000 steps,
the teacher's data, split and schedule), once as it is and once with
`--objective distill --distill.teacher T` (distill.alpha and
distill.temperature at their defaults unless given). Reported: each run's
validation loss at its last step (next-token cross-entropy, the number both
report alike) and the medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def final_val_loss(run_dir):
    last = None
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "val_loss" in record:
                last = record
    return last["step"], last["val_loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--runs-dir", default="/tmp/tfchat_distill")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    args, extra = parser.parse_known_args()
    with open(os.path.join(args.teacher, "config.json")) as f:
        data_path = json.load(f)["data"]["path"]
    common = ["--config", "shakespeare_char", "--data.path", data_path,
              "--model.num_layers", "2", "--model.hidden_dim", "64", "--runs_dir", args.runs_dir,
              "--overwrite", "--train.sample_tokens", "0", *extra]
    distill = ["--objective", "distill", "--distill.teacher", args.teacher]
    if args.alpha is not None:
        distill += ["--distill.alpha", str(args.alpha)]
    if args.temperature is not None:
        distill += ["--distill.temperature", str(args.temperature)]
    losses = {"data only": [], "distilled": []}
    for seed in args.seeds:
        for arm, flags in (("data only", []), ("distilled", distill)):
            name = f"{'distilled' if flags else 'data'}_{seed}"
            proc = subprocess.run([sys.executable, "-m", "tfchat.fit", *common, *flags,
                                   "--train.seed", str(seed), "--name", name],
                                  capture_output=True, text=True, env=ENV)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            step, loss = final_val_loss(os.path.join(args.runs_dir, name))
            losses[arm].append(loss)
            print(f"seed {seed} {arm}: val_loss {loss:.4f} at step {step}", flush=True)
    for arm, values in losses.items():
        print(f"{arm}: median val_loss {statistics.median(values):.4f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
