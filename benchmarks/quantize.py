"""int8 weight quantization (issue 20): the SavedModel's size on disk, peak
RSS when loaded, generation tokens/s (batch 1 and 8) and validation
perplexity, float32 against int8, in the same run.

    python benchmarks/quantize.py --run runs/shakespeare_char --run runs/char_6x384

For each run, `python -m tfchat.export` writes it twice into --out (default
/tmp/tfchat_quantize): as it is, and with `--quantize int8`. Then, per
round, alternating float32 and int8, a fresh process that imports only
TensorFlow and tensorflow-text's ops loads the SavedModel (its peak RSS,
VmHWM, right after loading), warms the `generate` signature up once and
times it greedily for batch 1 and batch 8 (`--new-tokens` tokens after a
one-token prompt, within the context). The validation perplexity is
`python -m tfchat.evaluate --run R` with and without `--quantize int8` (the
Keras model the export was made from). Medians over --rounds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

LOAD_AND_GENERATE = """
import glob, importlib.machinery, json, os, sys, time
for name in ("keras", "keras_hub", "tfchat", "tensorflow_text"):
    sys.modules[name] = None
import tensorflow as tf
spec = importlib.machinery.PathFinder.find_spec("tensorflow_text")
for library in glob.glob(os.path.join(os.path.dirname(spec.origin), "python", "ops", "_*.so")):
    tf.load_op_library(library)
path, new_tokens = sys.argv[1], int(sys.argv[2])
model = tf.saved_model.load(path)
generate = model.signatures["generate"]
with open("/proc/self/status") as f:
    rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
out = {"loaded_peak_rss_mib": rss}
for batch in (1, 8):
    inputs = dict(prompt=tf.constant(["\\n"] * batch), max_new_tokens=tf.constant([new_tokens]),
                  temperature=tf.constant([0.0]), top_k=tf.constant([0]),
                  top_p=tf.constant([1.0]), seed=tf.constant([0], tf.int64))
    generate(**inputs)  # warm-up
    start = time.perf_counter()
    result = generate(**inputs)
    seconds = time.perf_counter() - start
    out[f"tokens_per_s_batch_{batch}"] = float(tf.reduce_sum(result["num_tokens"])) / seconds
print("RESULT " + json.dumps(out))
"""


def _run(args):
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def measure(run, out, rounds, new_tokens):
    name = os.path.basename(os.path.normpath(run))
    paths, result = {}, {"run": run}
    for kind in ("float32", "int8"):
        extra = ["--quantize", "int8"] if kind == "int8" else []
        _run([sys.executable, "-m", "tfchat.export", "--run", run, "--saved-models-dir", out,
              "--name", f"{name}_{kind}", "--version", "1", "--force", *extra])
        paths[kind] = os.path.join(out, f"{name}_{kind}", "1")
        result[f"{kind}_size_mib"] = _size(paths[kind]) / 2**20
        result[f"{kind}_variables_mib"] = _size(os.path.join(paths[kind], "variables")) / 2**20
        report = os.path.join(out, f"{name}_{kind}_evaluation.json")
        _run([sys.executable, "-m", "tfchat.evaluate", "--run", run, "--json", report, *extra])
        with open(report) as f:
            result[f"{kind}_val_perplexity"] = json.load(f)["val_perplexity"]
    samples = {kind: [] for kind in paths}
    for _ in range(rounds):
        for kind, path in paths.items():
            stdout = _run([sys.executable, "-c", LOAD_AND_GENERATE, path, str(new_tokens)])
            line = next(row for row in stdout.splitlines() if row.startswith("RESULT "))
            samples[kind].append(json.loads(line[7:]))
    for kind, values in samples.items():
        for key in values[0]:
            result[f"{kind}_{key}"] = statistics.median(v[key] for v in values)
    result["perplexity_change"] = result["int8_val_perplexity"] / result["float32_val_perplexity"] - 1
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True)
    parser.add_argument("--out", default="/tmp/tfchat_quantize")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=0,
                        help="Tokens generated per prompt (default: the context less one).")
    args = parser.parse_args()
    for run in args.run:
        with open(os.path.join(run, "config.json")) as f:
            block = json.load(f)["model"]["block_size"]
        print(json.dumps(measure(run, args.out, args.rounds, args.new_tokens or block - 1)),
              flush=True)


if __name__ == "__main__":
    main()
