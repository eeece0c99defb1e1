"""Greedy generation speed with and without the KV cache.

    python benchmarks/generation_speed.py                 # 256 new tokens, default shape
    python benchmarks/generation_speed.py --repeats 7 --batch 4

Both sides decode the same GPT greedily and give the same tokens (checked
here, and in tests/test_generate.py):
  * cached: `tfchat.inference.generator.Generator` (keras-hub's GreedySampler over
    `GPT.call_with_cache`): one prefill pass over the prompt, then one
    token per step against the cached keys and values;
  * uncached: `tfchat.inference.generator.greedy_uncached`: every step runs the whole
    sequence so far through the model.
Each is timed twice: as a TensorFlow graph (one compiled while loop each) and
with XLA (the cached loop compiled whole; the uncached forward pass compiled
per length, rounded up to 32, called from Python). The first call of each
(tracing, compiling) is left out; medians of `--repeats` calls are printed,
with the cache's speed-up. The model has random weights:
speed does not depend on them. Defaults are the shape of the default chat
model (4 layers, 4 heads, width 128, BPE vocabulary 1000) with a context that
fits the prompt and 256 new tokens.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfchat  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfchat import config as config_lib  # noqa: E402
from tfchat.inference.generator import Generator, greedy_uncached  # noqa: E402
from tfchat.run import build_model  # noqa: E402


class _Tokenizer:
    """Only what `Generator.generate_ids` needs of a tokenizer."""

    eos_id = 3


def timed(fn, repeats):
    fn()  # trace and compile
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--vocabulary-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    context = args.prompt_tokens + args.new_tokens
    config = config_lib.build_config(overrides={"model": {
        "num_layers": args.num_layers, "num_heads": args.num_heads,
        "hidden_dim": args.hidden_dim, "block_size": context, "dropout": 0.0}})
    backbone = build_model(config, args.vocabulary_size).backbone
    rng = np.random.default_rng(0)
    prompts = rng.integers(8, args.vocabulary_size, (args.batch, args.prompt_tokens)).astype("int32")

    tokens = args.batch * args.new_tokens
    print(f"model: {args.num_layers} layers, {args.num_heads} heads, width {args.hidden_dim}, "
          f"vocabulary {args.vocabulary_size}; batch {args.batch}, prompt {args.prompt_tokens} "
          f"tokens, {args.new_tokens} new tokens; median of {args.repeats} runs")
    all_same = True
    for jit in (False, True):
        generator = Generator(backbone, _Tokenizer(), jit_compile=jit)
        greedy = generator.sampler(0.0)
        cached_s, cached = timed(
            lambda: generator.generate_ids(prompts.tolist(), args.new_tokens, greedy,
                                           stop_at_eos=False),
            args.repeats,
        )
        uncached_s, uncached = timed(
            lambda: greedy_uncached(backbone, tf.constant(prompts), args.new_tokens,
                                    jit_compile=jit).numpy().tolist(),
            args.repeats,
        )
        same = cached == uncached
        all_same &= same
        mode = "XLA  " if jit else "graph"
        print(f"{mode} with KV cache:    {cached_s:7.3f} s  ({tokens / cached_s:6.0f} tokens/s)")
        print(f"{mode} without KV cache: {uncached_s:7.3f} s  ({tokens / uncached_s:6.0f} tokens/s)")
        print(f"{mode} speed-up from the cache: {uncached_s / cached_s:.1f}x; same tokens: {same}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
