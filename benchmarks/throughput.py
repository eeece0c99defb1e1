"""Training throughput, model-FLOPs utilisation and input-pipeline speed.

    python benchmarks/throughput.py                        # both shakespeare shapes
    python benchmarks/throughput.py --shapes small --repeats 5
    python benchmarks/throughput.py --shapes gpt2 --precision mixed_bfloat16   # on a GPU

For each shape and XLA setting it trains `--steps` optimizer steps through
tfchat's own loop (the `python -m tfchat.fit` path), `--repeats` times, and
reports the median tokens/s. MFU is model FLOPs per token, 6 * N (N weights in
matmuls, the tied LM head included) plus the attention's 12 * L * T * C
(PaLM appendix B, as nanoGPT's `estimate_mfu`), times tokens/s, divided by a
dense matmul peak measured on this machine in the same run, in the precision
the run computes in (float32, or bfloat16 under `mixed_bfloat16`, whose peak on
a CPU with AVX512-BF16 is about twice float32's). The input pipeline is timed
alone over the same data.

The tokenizer is character-level, as in the published references these shapes
come from (nanoGPT's shakespeare_char); the vocabulary is then 65 characters
plus tfchat's special tokens.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfchat  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from tfchat import config as config_lib  # noqa: E402
from tfchat.data.corpus import Corpus  # noqa: E402
from tfchat.data.pipeline import causal_lm_dataset  # noqa: E402
from tfchat.data.tokenizer import train_tokenizer  # noqa: E402
from tfchat.job import train  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CORPUS = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt")
SHAPES = {
    "small": dict(num_layers=4, num_heads=4, hidden_dim=128, block_size=64, batch_size=12),
    "large": dict(num_layers=6, num_heads=6, hidden_dim=384, block_size=256, batch_size=64),
    "gpt2": dict(num_layers=12, num_heads=12, hidden_dim=768, block_size=1024, batch_size=8),
}


def make_config(shape, runs_dir, jit, steps, log_interval, precision):
    s = SHAPES[shape]
    return config_lib.build_config(overrides={
        "runs_dir": runs_dir, "name": f"{shape}_{jit}",
        "data": {"path": CORPUS},
        "tokenizer": {"kind": "char"},
        "model": {k: s[k] for k in ("num_layers", "num_heads", "hidden_dim", "block_size")}
        | {"dropout": 0.0},
        "train": {"batch_size": s["batch_size"], "max_steps": steps, "warmup_steps": 1,
                  "log_interval": log_interval, "eval_interval": 10**9,
                  "sample_tokens": 0, "jit_compile": jit, "precision": precision},
    })


def flops_per_token(config, vocabulary_size):
    m = config.model
    c, layers = m.hidden_dim, m.num_layers
    inner = m.intermediate_dim or 4 * c
    matmul_weights = layers * (3 * c * c + c * c + 2 * c * inner) + vocabulary_size * c
    return 6 * matmul_weights + 12 * layers * m.block_size * c


def matmul_peak(dtype="float32", n=2048, repeats=10):
    """FLOP/s of an n x n matmul in `dtype` on this machine: the median of
    `repeats`, the better of TensorFlow's graph kernels and XLA (on CPU,
    oneDNN's graph kernel is the fast one for bfloat16, XLA's is not)."""
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    best = 0.0
    for jit in (False, True):

        @tf.function(jit_compile=jit)
        def matmul_loop(a, b):
            for _ in tf.range(4):
                a = tf.matmul(a, b) * tf.cast(1e-3, dtype)
            return a

        matmul_loop(a, b).numpy()
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            matmul_loop(a, b).numpy()
            rates.append(4 * 2 * n**3 / (time.perf_counter() - start))
        best = max(best, statistics.median(rates))
    return best


def pipeline_tokens_per_second(config, batches=300):
    corpus = Corpus(config.data)
    tokenizer = train_tokenizer(config.tokenizer, corpus.iter_texts("train"))
    ds = causal_lm_dataset(corpus.texts("train"), tokenizer, config.model.block_size,
                           config.train.batch_size, shuffle_buffer=10_000, seed=1,
                           repeat=True)
    iterator = iter(ds)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return batches * config.train.batch_size * config.model.block_size / seconds, tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["small", "large"], choices=list(SHAPES))
    parser.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--steps", type=int, default=60, help="Timed steps per run.")
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args()

    compute_dtype = "bfloat16" if args.precision == "mixed_bfloat16" else (
        "float16" if args.precision == "mixed_float16" else "float32")
    peak = matmul_peak(compute_dtype)
    print(f"{compute_dtype} matmul peak: {peak / 1e9:.1f} GFLOP/s "
          f"({len(tf.config.list_physical_devices('GPU'))} GPU(s) visible)", flush=True)
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as runs_dir:
            base = make_config(shape, runs_dir, False, 2, 1, args.precision)
            pipe, tokenizer = pipeline_tokens_per_second(base)
        fpt = flops_per_token(base, tokenizer.vocabulary_size)
        print(f"{shape}: input pipeline {pipe:,.0f} tokens/s; "
              f"{fpt / 1e6:.2f} MFLOP per token", flush=True)
        for xla in args.xla:
            rates = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as runs_dir:
                    # One extra log interval first: it holds tracing/compiling.
                    config = make_config(shape, runs_dir, xla == "on",
                                         args.steps + args.log_interval,
                                         args.log_interval, args.precision)
                    history = train(config, verbose=0)
                rates.append(statistics.median(h["tokens/s"] for h in history[1:]))
            rate = statistics.median(rates)
            tokens = config.train.batch_size * config.model.block_size
            print(f"{shape} {args.precision} xla={xla}: {rate:,.0f} tokens/s ({1000 * tokens / rate:.1f} ms/step), "
                  f"MFU {100 * rate * fpt / peak:.0f}% of the measured peak, "
                  f"pipeline/training {pipe / rate:.0f}x; runs: "
                  + ", ".join(f"{r:,.0f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
