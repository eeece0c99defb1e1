"""tfchat against keras-hub on a pretrained-Llama-shaped model: LoRA
fine-tuning speed, greedy KV-cache generation speed, and peak memory.

    python benchmarks/pretrained_speed.py --quick     # smoke run, a 2-layer model (~3 min)
    python benchmarks/pretrained_speed.py             # SmolLM2-135M shape (~20 min on 2 cores)
    python benchmarks/pretrained_speed.py --parts generate --gen-batches 1

The model is SmolLM2-135M's shape with random weights (speed does not depend
on them): keras-hub's `Llama3Backbone` (30 layers, 9 query / 3 key-value
heads, width 576, SwiGLU 1536, vocabulary 49,152, tied embeddings) in a
`Llama3CausalLM` without preprocessor. tfchat's `GPT` is built from it with
`llama_gpt_args` and `llama_weights_to_gpt`, inside a `tfchat.model.tasks.CausalLM`
as `build_causal_lm(forward_pass=False)` makes it. The two models' logits are
compared once first (they must agree within 1e-3).

Training: LoRA rank 8 (alpha 8), float32, on both.
  * keras-hub: `backbone.enable_lora(8)` (its default targets: the query and
    value `EinsumDense` of every attention layer), `compile` with Keras'
    AdamW and SparseCategoricalCrossentropy(from_logits=True), and the train
    function `fit` runs (`make_train_function`, called on a dataset
    iterator); `jit_compile="auto"` (off on a CPU) and True;
  * tfchat: `tfchat.model.lora.enable_lora(gpt, 8, targets=("qkv",))`, the
    one fused q/k/v Dense (so it also adapts k, which keras-hub does not; the
    trainable counts are printed), the optimizer of `tfchat.job.compile_task`
    (`build_optimizer` on a `TrainConfig`), and the steps run by
    `tfchat.train.trainer.Trainer`'s own compiled loop (`_train_steps` then
    `_read_metrics`, the two calls `Trainer.fit` times for its tokens/s);
    `train.jit_compile` true and false.
Same optimizer settings (learning rate, weight decay 0.1, beta_2 0.99, global
clipnorm 1.0) and the same random token batches on both sides. The first step
of each side must give the same loss (same weights, zero-initialised
adapters); it is printed.

Generation: greedy, KV cache, a `--prompt-tokens` prompt and `--new-tokens`
new tokens, no stop token. keras-hub: `compile(sampler="greedy")`, then
`generate({"token_ids", "padding_mask"}, stop_token_ids=None)` on the prompt
right-padded to the total length (its default `jit_compile`, off on a CPU,
and True); tfchat: `Generator.generate_ids` with the greedy sampler and
`stop_at_eos=False`, `jit_compile` False and True. Every setting's tokens
are compared with keras-hub's. One more row is a diagnostic, not a tfchat
setting: tfchat's XLA generator with its length rounding turned off
(`tfchat.inference.generator._XLA_LENGTH_STEP` set to 1 around its calls),
because under XLA tfchat rounds each call's total length up to a multiple
of 32 and decodes to that length (48 -> 64: 48 decoding steps for 32 tokens).

The machine is shared, so the timings are paired: one process holds both
models, runs each setting's warm-up (`--warmup` steps, or one generate call:
tracing, compiling), then times the settings in turn, one step (or call)
each, round after round; medians of the `--steps` (`--repeats`) rounds. A
change of load then hits every setting alike, and the ratios are of the same
rounds. Peak memory comes from separate processes, one per side and setting,
which build that side's model only and run 2 steps (2 calls at the largest
batch): the peak resident set of the whole process (`ru_maxrss`: TensorFlow,
Keras, keras-hub and the weights included) and the peak after the model was
built (VmHWM, reset through /proc/self/clear_refs once the weights are in
memory). tfchat's memory processes load the GPT weights the check process
converted (so they never hold the keras-hub model too).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SMOLLM2_135M = dict(
    vocabulary_size=49152, num_layers=30, num_query_heads=9, num_key_value_heads=3,
    hidden_dim=576, intermediate_dim=1536, rope_max_wavelength=100000,
    layer_norm_epsilon=1e-5, tie_word_embeddings=True,
)
QUICK_SHAPE = dict(SMOLLM2_135M, num_layers=2)
WEIGHTS_FILE = "gpt.weights.h5"
MEMORY_STEPS = 2


# ----------------------------------------------------------------------------
# Worker side.
# ----------------------------------------------------------------------------

def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _status_gib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak():
    """Resets VmHWM to the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build_keras_hub(shape, seed):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Llama3Backbone(**shape)
    causal_lm = keras_hub.models.Llama3CausalLM(backbone, preprocessor=None)
    return backbone, causal_lm


def checksum(variables):
    return float(sum(float(abs(v.numpy().astype("float64")).sum()) for v in variables))


def gpt_from_backbone(backbone, block_size):
    from tfchat.model.gpt import GPT
    from tfchat.families import llama

    gpt = GPT(**llama.gpt_args(backbone, block_size=block_size), name="gpt")
    gpt.build()
    llama.FAMILY.copy_weights(backbone, gpt)
    return gpt


def gpt_from_file(args, block_size):
    """The GPT the check process converted, from its saved weights."""
    from tfchat.model.gpt import GPT

    with open(os.path.join(args.weights_dir, "gpt_args.json")) as f:
        gpt_args = json.load(f)
    gpt = GPT(**dict(gpt_args, block_size=block_size), name="gpt")
    gpt.build()
    gpt.load_weights(os.path.join(args.weights_dir, WEIGHTS_FILE))
    return gpt


def task(gpt):
    """As tfchat.objectives.base.build_causal_lm(forward_pass=False)."""
    from tfchat.model.tasks import CausalLM

    model = CausalLM(gpt, grad_accumulation_steps=1, dtype="float32", name="causal_lm")
    model.built = True  # CausalLM has no weights of its own
    return model


def token_batches(args, shape):
    import numpy as np

    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(0, shape["vocabulary_size"],
                          (args.warmup + args.steps, args.batch, args.seq_len + 1))
    tokens = tokens.astype("int32")
    return tokens[:, :, :-1], tokens[:, :, 1:]


def prompts(args, shape, batch):
    import numpy as np

    rng = np.random.default_rng(args.seed + batch)
    return rng.integers(0, shape["vocabulary_size"], (batch, args.prompt_tokens)).astype("int32")


def train_config(args, jit):
    from tfchat import config as config_lib

    return config_lib.build_config(overrides={
        "model": {"block_size": args.seq_len, "dropout": 0.0},
        "train": {"batch_size": args.batch, "max_steps": 1000, "warmup_steps": 1,
                  "learning_rate": args.learning_rate, "jit_compile": jit,
                  "log_interval": 1, "eval_interval": 10**9},
    })


# --- the two sides' training steps ---

def keras_hub_lora(backbone, causal_lm, args):
    """keras-hub's LoRA and compile; returns (layers adapted, trainable count)."""
    import keras

    backbone.enable_lora(args.rank)
    causal_lm.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=args.learning_rate, weight_decay=0.1, beta_2=0.99,
            global_clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    adapted = sorted({v.path.split("/")[-2] for v in causal_lm.trainable_variables})
    return adapted, sum(int(v.shape.num_elements()) for v in causal_lm.trainable_variables)


def keras_hub_steps(causal_lm, x, y, xla):
    """One training step per call of the train function `fit` builds, on an
    iterator over the batches (as `fit` calls it)."""
    import tensorflow as tf

    causal_lm.jit_compile = xla == "on"  # "auto" resolves to False on a CPU
    causal_lm.make_train_function(force=True)
    train_function = causal_lm.train_function
    ds = tf.data.Dataset.from_tensor_slices(
        ({"token_ids": x, "padding_mask": tf.ones_like(x, tf.bool)}, y)).repeat()
    iterator = iter(ds)
    return lambda: float(train_function(iterator)["loss"])  # float(): waits for the step


def tfchat_lora(gpt, model, args):
    from tfchat.job import compile_task
    from tfchat.model.lora import enable_lora

    targets = tuple(args.tfchat_lora_targets.split(","))
    adapters = enable_lora(gpt, args.rank, targets=targets)
    compile_task(model, train_config(args, True).train)
    return list(targets), sum(int(v.shape.num_elements()) for v in adapters)


def tfchat_steps(model, x, y, xla, args, runs_dir):
    """One step per call of tfchat's Trainer loop, timed as Trainer.fit does."""
    import tensorflow as tf

    from tfchat.run import RunFolder
    from tfchat.train.trainer import Trainer

    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    trainer = Trainer(train_config(args, xla == "on"), tf.distribute.get_strategy(), model,
                      ds, ds, RunFolder(os.path.join(runs_dir, xla)), verbose=0)

    def step():
        trainer._train_steps(trainer.train_iterator, tf.constant(1))
        return trainer._read_metrics()["loss"]

    return step


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def worker_check(args, shape):
    """The logits of both models on the same tokens; saves the GPT's weights
    for the memory processes."""
    import numpy as np

    from tfchat.families import llama

    backbone, causal_lm = build_keras_hub(shape, args.seed)
    gpt = gpt_from_backbone(backbone, args.seq_len)
    ids = np.random.default_rng(args.seed).integers(
        0, shape["vocabulary_size"], (2, min(64, args.seq_len))).astype("int32")
    theirs = causal_lm({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}).numpy()
    ours = gpt(ids).numpy()
    gpt.save_weights(os.path.join(args.weights_dir, WEIGHTS_FILE))
    with open(os.path.join(args.weights_dir, "gpt_args.json"), "w") as f:
        json.dump(llama.gpt_args(backbone, block_size=args.seq_len), f)
    names = getattr(backbone, "get_lora_target_names", backbone.default_lora_layer_names)()
    return {"max_abs_diff": float(np.max(np.abs(theirs - ours))),
            "logit_scale": float(np.max(np.abs(theirs))),
            "keras_hub_lora_names": list(names),
            "checksums": [checksum(backbone.weights), checksum(gpt.weights)],
            "params": int(sum(np.prod(w.shape) for w in backbone.weights))}


def worker_paired_train(args, shape):
    backbone, causal_lm = build_keras_hub(shape, args.seed)
    gpt = gpt_from_backbone(backbone, args.seq_len)  # before keras-hub's adapters
    model = task(gpt)
    kh_layers, kh_trainable = keras_hub_lora(backbone, causal_lm, args)
    tf_layers, tf_trainable = tfchat_lora(gpt, model, args)
    x, y = token_batches(args, shape)
    results = {}
    with tempfile.TemporaryDirectory() as runs_dir:
        engines = [(f"keras_hub {xla}", keras_hub_steps(causal_lm, x, y, xla))
                   for xla in args.keras_hub_xla]
        engines += [(f"tfchat {xla}", tfchat_steps(model, x, y, xla, args, runs_dir))
                    for xla in args.tfchat_xla]
        for name, step in engines:
            warmup = [timed(step) for _ in range(args.warmup)]
            results[name] = {"warmup_seconds": [s for s, _ in warmup],
                             "first_loss": warmup[0][1], "seconds": []}
            print(f"    {name}: warm-up " + ", ".join(f"{s:.1f}" for s, _ in warmup)
                  + " s", file=sys.stderr, flush=True)
        for _ in range(args.steps):
            for name, step in engines:
                results[name]["seconds"].append(timed(step)[0])
    trainable = {"keras_hub": (kh_layers, kh_trainable), "tfchat": (tf_layers, tf_trainable)}
    return {"engines": results, "trainable": trainable}


def worker_paired_generate(args, shape):
    import numpy as np

    import tfchat.inference.generator as generator_module
    from tfchat.inference.generator import Generator

    backbone, causal_lm = build_keras_hub(shape, args.seed)
    gpt = gpt_from_backbone(backbone, args.block_size)
    causal_lm.compile(sampler="greedy")
    total = args.prompt_tokens + args.new_tokens
    engines = []
    for xla in args.keras_hub_xla:
        causal_lm.jit_compile = xla == "on"
        causal_lm.generate_function = None
        function = causal_lm.make_generate_function()

        def keras_hub_call(rows, function=function):
            ids = np.zeros((len(rows), total), "int32")
            ids[:, :args.prompt_tokens] = rows
            mask = np.zeros((len(rows), total), bool)
            mask[:, :args.prompt_tokens] = True
            causal_lm.generate_function = function  # this setting's compiled loop
            out = causal_lm.generate({"token_ids": ids, "padding_mask": mask},
                                     max_length=total, stop_token_ids=None)
            return np.asarray(out["token_ids"])[:, args.prompt_tokens:].tolist()

        engines.append((f"keras_hub {xla}", keras_hub_call))
    settings = [(xla, False) for xla in args.tfchat_xla]
    if "on" in args.tfchat_xla and args.diagnostic:
        settings.append(("on", True))
    for xla, exact in settings:
        generator = Generator(gpt, _Tokenizer(), jit_compile=xla == "on")
        greedy = generator.sampler(temperature=0.0)

        def tfchat_call(rows, generator=generator, greedy=greedy, exact=exact):
            step = generator_module._XLA_LENGTH_STEP
            if exact:
                generator_module._XLA_LENGTH_STEP = 1
            try:
                return generator.generate_ids(rows.tolist(), args.new_tokens, greedy,
                                              stop_at_eos=False)
            finally:
                generator_module._XLA_LENGTH_STEP = step

        engines.append((f"tfchat {xla}" + (" exact" if exact else ""), tfchat_call))
    results = {}
    for batch in args.gen_batches:
        rows = prompts(args, shape, batch)
        for name, call in engines:
            first, tokens = timed(lambda: call(rows))
            results[f"{name} {batch}"] = {"first": first, "tokens": tokens, "seconds": []}
        for _ in range(args.repeats):
            for name, call in engines:
                results[f"{name} {batch}"]["seconds"].append(timed(lambda: call(rows))[0])
    return {"engines": results}


class _Tokenizer:
    """Only what `Generator.generate_ids` reads of a tokenizer (stop_at_eos is
    off, so eos is never looked for)."""

    eos_id = 0


def worker_memory(args, shape, part, side, xla):
    """One side and setting alone: its peak memory, training or generating."""
    import numpy as np

    if side == "keras_hub":
        backbone, causal_lm = build_keras_hub(shape, args.seed)
        weights = backbone.weights
    else:
        gpt = gpt_from_file(args, args.seq_len if part == "train" else args.block_size)
        weights = gpt.weights
    weights_sum = checksum(weights)
    built = _status_gib("VmRSS")
    reset_peak()
    if part == "train":
        x, y = token_batches(args, shape)
        if side == "keras_hub":
            keras_hub_lora(backbone, causal_lm, args)
            step = keras_hub_steps(causal_lm, x, y, xla)
        else:
            model = task(gpt)
            tfchat_lora(gpt, model, args)
            runs_dir = tempfile.mkdtemp()
            step = tfchat_steps(model, x, y, xla, args, runs_dir)
        for _ in range(MEMORY_STEPS):
            step()
    else:
        rows = prompts(args, shape, max(args.gen_batches))
        if side == "keras_hub":
            causal_lm.compile(sampler="greedy", jit_compile=True if xla == "on" else "auto")
            total = args.prompt_tokens + args.new_tokens
            ids = np.zeros((len(rows), total), "int32")
            ids[:, :args.prompt_tokens] = rows
            mask = np.zeros((len(rows), total), bool)
            mask[:, :args.prompt_tokens] = True
            for _ in range(MEMORY_STEPS):
                causal_lm.generate({"token_ids": ids, "padding_mask": mask},
                                   max_length=total, stop_token_ids=None)
        else:
            from tfchat.inference.generator import Generator

            generator = Generator(gpt, _Tokenizer(), jit_compile=xla == "on")
            for _ in range(MEMORY_STEPS):
                generator.generate_ids(rows.tolist(), args.new_tokens,
                                       generator.sampler(temperature=0.0), stop_at_eos=False)
    return {"peak_rss_gib": peak_rss_gib(), "peak_since_built_gib": _status_gib("VmHWM"),
            "built_gib": built, "checksum": weights_sum}


def run_worker(args):
    sys.path.insert(0, ROOT)
    import tfchat  # noqa: F401  (selects the TensorFlow backend)

    shape = QUICK_SHAPE if args.quick else SMOLLM2_135M
    if args.worker == "check":
        result = worker_check(args, shape)
    elif args.worker == "paired-train":
        result = worker_paired_train(args, shape)
    elif args.worker == "paired-generate":
        result = worker_paired_generate(args, shape)
    else:  # memory-<part>-<side>-<xla>
        _, part, side, xla = args.worker.split("-")
        result = worker_memory(args, shape, part, side, xla)
    result.setdefault("peak_rss_gib", peak_rss_gib())
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------
# Driver side.
# ----------------------------------------------------------------------------

OPTIONS = ("steps", "warmup", "batch", "seq_len", "rank", "learning_rate", "prompt_tokens",
           "new_tokens", "block_size", "repeats", "seed", "tfchat_lora_targets", "weights_dir")
LISTS = ("gen_batches", "keras_hub_xla", "tfchat_xla")


def spawn(args, worker):
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker]
    for name in OPTIONS:
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in LISTS:
        command += [f"--{name.replace('_', '-')}", *map(str, getattr(args, name))]
    command += ["--quick"] * args.quick + ["--no-diagnostic"] * (not args.diagnostic)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep
                                     + os.environ.get("PYTHONPATH", ""),
                                     TF_CPP_MIN_LOG_LEVEL=os.environ.get(
                                         "TF_CPP_MIN_LOG_LEVEL", "2")),
                            stderr=subprocess.PIPE)
    errors = []

    def read_errors():
        for line in proc.stderr:
            errors.append(line)
            if line.startswith("    "):  # progress lines from the workers
                print(line.rstrip(), flush=True)

    reader = threading.Thread(target=read_errors)
    reader.start()
    lines = [row for row in proc.stdout if row.startswith("RESULT ")]
    proc.wait()
    reader.join()
    if proc.returncode or not lines:
        print(f"  {worker} failed (exit {proc.returncode}):\n    "
              + "    ".join(errors[-15:]), flush=True)
        return None
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"  {worker}: {time.perf_counter() - start:.0f} s, process peak RSS "
          f"{result['peak_rss_gib']:.2f} GiB", flush=True)
    return result


def median(values):
    return statistics.median(values)


def runs(values, digits):
    return " / ".join(f"{v:.{digits}f}" for v in values)


def memory(result, measured=True):
    if not measured:
        return ""
    if result is None:
        return "failed"
    text = f"{result['built_gib']:.2f} -> {result['peak_rss_gib']:.2f} GiB"
    if result["peak_since_built_gib"] < result["peak_rss_gib"] - 0.01:
        text += f" (after build {result['peak_since_built_gib']:.2f})"
    return text


def report_train(args, paired, mem):
    tokens = args.batch * args.seq_len
    engines = paired["engines"]
    base = engines.get("keras_hub off")
    first = {name.split()[0]: r["first_loss"] for name, r in reversed(list(engines.items()))}
    print(f"first-step loss: keras-hub {first.get('keras_hub', float('nan')):.6f}, "
          f"tfchat {first.get('tfchat', float('nan')):.6f}")
    for side, (layers, count) in paired["trainable"].items():
        print(f"{side} adapts {', '.join(layers)} of every layer: {count:,} trainable")
    print("\n| side | XLA | warm-up steps (s) | s/step, median (rounds) | tokens/s "
          "| vs keras-hub default | RSS: built -> peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in engines.items():
        side, xla = name.split()
        s = median(r["seconds"])
        ratio = f"{median(base['seconds']) / s:.2f}x" if base else ""
        print(f"| {side} | {xla} | {runs(r['warmup_seconds'], 1)} | {s:.2f} "
              f"({runs(r['seconds'], 2)}) | {tokens / s:,.0f} | {ratio} | "
              f"{memory(mem.get(('train', side, xla)), args.memory)} |")


def report_generate(args, paired, mem):
    engines = paired["engines"]
    ok = True
    print("\n| side | XLA | batch | first call (s) | s/call, median (rounds) | new tokens/s "
          "| vs keras-hub default | same tokens | RSS: built -> peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in engines.items():
        parts = name.split()
        side, xla, batch = parts[0], " ".join(parts[1:-1]), int(parts[-1])
        base = engines.get(f"keras_hub off {batch}")
        s = median(r["seconds"])
        ratio = f"{median(base['seconds']) / s:.2f}x" if base else ""
        same = r["tokens"] == base["tokens"] if base else ""
        ok &= same is not False
        rss = ""
        if batch == max(args.gen_batches) and "exact" not in xla:
            rss = memory(mem.get(("generate", side, xla)), args.memory)
        label = "on, no length rounding (diagnostic)" if "exact" in xla else xla
        print(f"| {side} | {label} | {batch} | {r['first']:.1f} | {s:.3f} "
              f"({runs(r['seconds'], 3)}) | {batch * args.new_tokens / s:,.1f} | {ratio} "
              f"| {same} | {rss} |")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="Smoke run: 2 layers instead of 30, 1 warm-up + 2 timed steps "
                             "of 2 x 64 tokens, 8 new tokens, 2 rounds.")
    parser.add_argument("--parts", nargs="+", default=["train", "generate"],
                        choices=["train", "generate"])
    parser.add_argument("--steps", type=int, default=5, help="Timed training rounds.")
    parser.add_argument("--warmup", type=int, default=2,
                        help="Training steps per setting left out (tracing, compiling).")
    parser.add_argument("--batch", type=int, default=4, help="Training sequences per step.")
    parser.add_argument("--seq-len", type=int, default=256, help="Training tokens per sequence.")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = rank).")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--tfchat-lora-targets", default="qkv",
                        help="tfchat.model.lora targets (keras-hub adapts query and value).")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=2048,
                        help="tfchat's context for generation (each call's cache is as "
                             "long as that call's prompt plus new tokens, not this).")
    parser.add_argument("--gen-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5, help="Timed generate rounds.")
    parser.add_argument("--keras-hub-xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--tfchat-xla", nargs="+", default=["on", "off"], choices=["off", "on"])
    parser.add_argument("--no-diagnostic", dest="diagnostic", action="store_false",
                        help="Leave out the unrounded-length tfchat XLA generation row.")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="Skip the per-setting memory processes.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and not args.worker:
        args.steps, args.warmup, args.batch, args.seq_len = 2, 1, 2, 64
        args.new_tokens, args.repeats = 8, 2
    if args.worker:
        return run_worker(args)

    shape = QUICK_SHAPE if args.quick else SMOLLM2_135M
    began = time.perf_counter()
    print(f"Llama3Backbone {shape['num_layers']} layers, {shape['num_query_heads']}/"
          f"{shape['num_key_value_heads']} heads, width {shape['hidden_dim']}, MLP "
          f"{shape['intermediate_dim']}, vocabulary {shape['vocabulary_size']}, random weights; "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}", flush=True)
    ok = True
    with tempfile.TemporaryDirectory() as weights_dir:
        args.weights_dir = weights_dir
        check = spawn(args, "check")
        if check is None:
            return 1
        agree = check["max_abs_diff"] < 1e-3
        print(f"{check['params'] / 1e6:.1f}M parameters; logits max |keras-hub - tfchat| = "
              f"{check['max_abs_diff']:.2e} (largest logit {check['logit_scale']:.2f}): "
              f"{'agree' if agree else 'DISAGREE'}; keras-hub's default LoRA layer names: "
              f"{check['keras_hub_lora_names']}", flush=True)
        if not agree:
            return 1
        checksums = list(check["checksums"])

        def memory_runs(part):
            mem = {}
            if not args.memory:
                return mem
            for side, settings in (("keras_hub", args.keras_hub_xla),
                                   ("tfchat", args.tfchat_xla)):
                for xla in settings:
                    mem[part, side, xla] = r = spawn(args, f"memory-{part}-{side}-{xla}")
                    if r:
                        checksums.append(r["checksum"])
            return mem

        if "train" in args.parts:
            print(f"\nLoRA rank {args.rank}, batch {args.batch} x {args.seq_len} tokens: "
                  f"{args.warmup} warm-up steps per setting, then {args.steps} rounds",
                  flush=True)
            paired = spawn(args, "paired-train")
            mem = memory_runs("train")
            if paired:
                report_train(args, paired, mem)
            ok &= paired is not None
        if "generate" in args.parts:
            print(f"\nGreedy generation, KV cache: {args.prompt_tokens}-token prompt, "
                  f"{args.new_tokens} new tokens, no stop token; one untimed call per "
                  f"setting, then {args.repeats} rounds", flush=True)
            paired = spawn(args, "paired-generate")
            mem = memory_runs("generate")
            if paired:
                ok &= report_generate(args, paired, mem)
            ok &= paired is not None
    same_weights = max(checksums) - min(checksums) <= 1e-6 * max(checksums)
    ok &= same_weights
    print(f"\nweights identical in every process (checksum): {same_weights}; wall time "
          f"{time.perf_counter() - began:.0f} s; load average {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
