"""The default job, end to end: `python -m tfchat.fit` (with optional
overrides), timed, then `python -m tfchat.evaluate` on the run it wrote.

    python benchmarks/default_job.py --repeats 3
    python benchmarks/default_job.py --tree /tmp/before --repeats 3   # an older tree
    python benchmarks/default_job.py -- --train.max_steps 3000         # overrides

`--tree` trains with another checkout (on PYTHONPATH); evaluation always
uses this one, so both sides are scored alike. Prints one line of JSON per
run and a median summary.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("training_prompt_recall", "bleu", "rouge_l", "chrf", "bleu_unseen", "rouge_l_unseen",
        "chrf_unseen", "loss")


def run_once(tree, runs_dir, name, overrides):
    env = dict(os.environ, PYTHONPATH=tree)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tfchat.fit", "--runs_dir", runs_dir, "--name", name,
                    "--overwrite", *overrides], env=env, check=True, cwd=tree,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    report = os.path.join(runs_dir, name + ".json")
    subprocess.run([sys.executable, "-m", "tfchat.evaluate", "--run", os.path.join(runs_dir, name),
                    "--json", report, "--checkpoint", "latest"],
                   env=dict(os.environ, PYTHONPATH=HERE), check=True, cwd=HERE,
                   stdout=subprocess.DEVNULL)
    with open(report) as f:
        results = json.load(f)
    return {"wall_s": round(seconds, 1), **{k: results.get(k) for k in KEYS}}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=HERE, help="Checkout that trains (default: this one).")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs_dir", default=None)
    parser.add_argument("overrides", nargs="*", help="Passed to tfchat.fit (after --).")
    args = parser.parse_args()
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="default_job_")
    rows = []
    for i in range(args.repeats):
        row = run_once(os.path.abspath(args.tree), runs_dir, f"run{i}", args.overrides)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {k: statistics.median(r[k] for r in rows if r[k] is not None)
               for k in ("wall_s", *KEYS) if any(r[k] is not None for r in rows)}
    print("median", json.dumps(summary))


if __name__ == "__main__":
    main()
