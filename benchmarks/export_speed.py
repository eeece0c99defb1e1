"""Tokens/s of the exported generate signature vs in-Python cached generation.

    python benchmarks/export_speed.py                      # trains a quick run first
    python benchmarks/export_speed.py --run runs/shakespeare_char --repeats 7

Both sides continue the same prompts by the same number of tokens with the
same weights: the SavedModel written by `tfchat.export`, loaded with
`tf.saved_model.load` (its whole sampling loop is one graph), and
`tfchat.inference.generator.Generator` (keras-hub sampler over `GPT.call_with_cache`,
driven from Python, tokenize and detokenize included, one sampler reused so
its tf.function is traced once). Each case runs once to trace/warm up, then
`--repeats` times, the two sides alternating; medians are printed. The last column times
`Generator.generate()` as a caller uses it, which builds a new sampler and so
retraces on every call. Without `--run`, the tiny-shakespeare
reference shape (tfchat/configs/shakespeare_char.yaml: 4 layers, width 128, context
64) is trained for `--train-steps` steps in a temporary folder (speed does
not depend on how well it is trained).
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
from tfchat.serving.export import export_run  # noqa: E402
from tfchat.job import train  # noqa: E402
from tfchat.inference.generator import Generator, make_sampler  # noqa: E402
from tfchat.run import load_run  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = config_lib.find_config_file("shakespeare_char")
CORPUS = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt")


def _median_seconds(fns, repeats):
    """Median seconds of each function. The calls alternate, so a change in
    the machine's load (it is shared) falls on all of them alike."""
    for fn in fns:
        fn()  # trace / warm up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def compare(run_dir, saved_dir, args):
    run = load_run(run_dir)
    path = export_run(run, saved_models_dir=saved_dir)
    exported = tf.saved_model.load(path)
    generator = Generator(run.backbone, run.tokenizer)
    context = run.config.model.block_size
    print(f"run {run_dir}: {run.config.model.num_layers} layers, width "
          f"{run.config.model.hidden_dim}, context {context}, vocabulary "
          f"{run.tokenizer.vocabulary_size}; {args.new_tokens} new tokens per prompt")
    cases = [("greedy", 0.0, 0), ("top-k 40, T 0.8", 0.8, 40)]
    for batch in args.batch_sizes:
        prompts = [args.prompt] * batch
        for label, temperature, top_k in cases:
            def run_exported():
                out = exported.generate(
                    tf.constant(prompts), tf.constant([args.new_tokens]),
                    tf.constant([temperature]), tf.constant([top_k]),
                    tf.constant([1.0]), tf.constant([1], tf.int64),
                )
                return int(tf.reduce_sum(out["num_tokens"]))

            # One sampler object for every call: `Generator.generate` makes a
            # new one per call, and its tf.function retraces for each new
            # sampler, so this is the in-Python loop at its fastest.
            sampler = make_sampler(temperature, top_k, 1.0, seed=1)

            def run_python():
                ids = run.tokenizer.tokenize(tf.constant(prompts)).to_list()
                new = generator.generate_ids(ids, args.new_tokens, sampler)
                run.tokenizer.detokenize(tf.ragged.constant(new, dtype=tf.int32))
                return sum(len(row) for row in new)

            def run_generate_call():
                generator.generate(prompts, args.new_tokens, temperature, top_k, seed=1)

            exported_tokens, python_tokens = run_exported(), run_python()
            exported_s, python_s = _median_seconds([run_exported, run_python], args.repeats)
            call_s, = _median_seconds([run_generate_call], max(1, args.repeats // 2))
            print(
                f"batch {batch:2d} {label:16s} exported {exported_tokens / exported_s:7.1f} tokens/s "
                f"({exported_tokens} tokens) | python {python_tokens / python_s:7.1f} tokens/s "
                f"({python_tokens} tokens) | exported/python {python_s / exported_s:.2f}x "
                f"| Generator.generate() per call {python_tokens / call_s:6.1f} tokens/s",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="A trained run folder (default: train a quick one).")
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run
        if run_dir is None:
            config = config_lib.build_config([CONFIG], {
                "name": "export_speed", "runs_dir": tmp, "data": {"path": CORPUS},
                "train": {"max_steps": args.train_steps, "warmup_steps": 1,
                          "eval_interval": args.train_steps, "eval_batches": 1,
                          "sample_tokens": 0},
            })
            train(config, verbose=0)
            run_dir = config.run_dir
        compare(run_dir, os.path.join(tmp, "saved_models"), args)


if __name__ == "__main__":
    main()
