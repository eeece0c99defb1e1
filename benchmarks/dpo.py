"""Preference tuning (issue 18): peak memory of full DPO against DPO with
LoRA, what computing the reference's log-probabilities once saves against
running the reference model at every step, and the two-style task of
tests/test_dpo.py over learning rates and seeds.

    python benchmarks/dpo.py memory                # GPT-2-small shape, 3 rounds
    python benchmarks/dpo.py memory --shape small --rounds 1
    python benchmarks/dpo.py styles --seeds 3

memory:

Makes a chat run to start from (`tfchat.fit --objective chat`, one step, on
the chatterbot conversations, BPE 2,000) in the chosen shape, and
preference pairs from the same conversations (the chosen reply is the
conversation's own, the rejected one another conversation's). Then, each in
a fresh process, per round:

  * imports: TensorFlow, Keras and tfchat imported, nothing else;
  * full DPO: `tfchat.fit --objective dpo --init_from <chat run>`;
  * LoRA DPO: the same with `--model.lora_rank 8`;
  each with XLA (the default) and with `--train.jit_compile false`,

and reads each process's peak RSS, its training steps' median time (the
trainer's tokens/s) and the time of the one reference pass. A fourth
process times the reference model's forward pass alone on one training
batch (what a live reference would add to every step; median of 5, after
compiling), against the same shape's training step.

styles: a tiny chat model (2 layers, width 48, char tokenizer) fine-tuned
on two styles of reply to each of 50 prompts, "sure, happy to help!" and
"no.", then DPO preferring the style its greedy replies use less on the 12
held-out prompts, full and with LoRA (rank 4), at several learning rates,
60 steps; per seed, a new SFT run. Reports held-out reward accuracy and the
share of held-out greedy replies in the preferred style (medians over seeds).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
SHAPES = {
    "gpt2-small": {"model.num_layers": 12, "model.num_heads": 12, "model.hidden_dim": 768},
    "small": {"model.num_layers": 6, "model.num_heads": 6, "model.hidden_dim": 384},
}
COMMON = {"model.block_size": 64, "train.batch_size": 8, "train.jit_compile": True,
          "train.sample_tokens": 0, "train.warmup_steps": 1, "train.learning_rate": 1e-4}

PEAK = "import resource, sys; print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
RUN_AND_REPORT = (
    "import runpy, sys, atexit; atexit.register(lambda: exec(%r)); "
    "sys.argv = ['tfchat.fit'] + sys.argv[1:]; runpy.run_module('tfchat.fit', run_name='__main__')"
) % PEAK
IMPORTS = "import tensorflow, keras, tfchat.job, tfchat.objectives.dpo; " + PEAK

FORWARD = textwrap.dedent("""
    import json, sys, time, statistics
    import tensorflow as tf
    from tfchat.objectives import dpo
    from tfchat.run import load_run
    from tfchat.model.preference import pair_logps
    run_dir, prefs = sys.argv[1], sys.argv[2]
    run = load_run(run_dir)
    config = run.config
    import dataclasses
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=prefs),
                                 init_from=run_dir, objective="dpo")
    corpus = dpo.read_data(config)
    ds = dpo.datasets(config, corpus, run.tokenizer, splits=["train"],
                      init_checkpoint=run.folder.latest_checkpoint()[0])["train"]
    x, y, w = next(iter(ds))
    forward = tf.function(lambda x, y, w: pair_logps(run.backbone, x, y, w)[0], jit_compile=True)
    forward(x, y, w)
    times = []
    for _ in range(5):
        start = time.perf_counter(); [t.numpy() for t in forward(x, y, w)]
        times.append(time.perf_counter() - start)
    print("FORWARD", statistics.median(times))
""")


def run(args, env=ENV):
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{args[:4]} failed:\n{proc.stderr[-3000:]}")
    peak = re.findall(r"PEAK_KB (\d+)", proc.stderr)
    return proc.stdout, (int(peak[-1]) / 2**20 if peak else None)  # GiB


def cli(settings):
    return [a for key, value in settings.items() for a in (f"--{key}", str(value))]


def make_pairs(path, count):
    sys.path.insert(0, ROOT)
    from tfchat.data.dialogues import DialogueCorpus
    from tfchat import config as config_lib

    conversations = DialogueCorpus(config_lib.DataConfig()).conversations("train")
    exchanges = [(c[0].content, c[1].content) for c in conversations if len(c) >= 2]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            prompt, chosen = exchanges[i % len(exchanges)]
            rejected = exchanges[(i + 7) % len(exchanges)][1]
            if rejected == chosen:
                rejected += " (no)"
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


NAMES = [a + b + c for a in "bdkm" for b in "aeiou" for c in "lnrst"][::2]
STYLES = {"warm": "sure, happy to help!", "curt": "no."}
TINY_CHAT = {"tokenizer.kind": "char", "model.num_layers": 2, "model.num_heads": 2,
             "model.hidden_dim": 48, "model.block_size": 32, "model.dropout": 0.0,
             "train.batch_size": 8, "train.warmup_steps": 5, "train.jit_compile": False,
             "train.sample_tokens": 0, "train.log_interval": 10, "train.eval_batches": 0}
STYLE_ARMS = [("full", 0, 3e-4), ("full", 0, 1e-3), ("LoRA", 4, 1e-3), ("LoRA", 4, 2e-3)]


def styles(args):
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tfchat import config as config_lib
    from tfchat.data.chat_template import Message
    from tfchat.inference.generator import Generator
    from tfchat.job import train
    from tfchat.run import load_run

    def build(flat):
        nested = {}
        for key, value in flat.items():
            *parents, leaf = key.split(".")
            section = nested
            for p in parents:
                section = section.setdefault(p, {})
            section[leaf] = value
        return config_lib.build_config(overrides=nested)

    def write(path, records):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        return path

    def greedy_styles(run_dir, names):
        run = load_run(run_dir)
        replies = Generator(run.backbone, run.tokenizer).chat(
            [[Message("user", f"{n}?")] for n in names], max_new_tokens=30)
        return [next((k for k, v in STYLES.items() if r == v), r) for r in replies]

    work = tempfile.mkdtemp(prefix="dpo_styles_")
    held_out = [n for i, n in enumerate(NAMES) if (i + 1) // 4 > i // 4]
    rows = {arm: [] for arm in STYLE_ARMS}
    for seed in range(args.seeds):
        runs = os.path.join(work, f"seed{seed}")
        chats = write(os.path.join(work, "chats.jsonl"), [
            {"messages": [{"role": "user", "content": f"{n}?"},
                          {"role": "assistant", "content": r}]}
            for n in NAMES for r in STYLES.values()])
        train(build({**TINY_CHAT, "objective": "chat", "name": "sft", "runs_dir": runs,
                     "data.path": chats, "data.val_fraction": 0.05, "train.seed": seed,
                     "train.max_steps": 150, "train.learning_rate": 1e-2,
                     "train.min_learning_rate": 1e-3, "train.eval_interval": 150}), verbose=0)
        sft = os.path.join(runs, "sft")
        before = greedy_styles(sft, held_out)
        preferred = min(STYLES, key=before.count)
        other = next(k for k in STYLES if k != preferred)
        prefs = write(os.path.join(work, "prefs.jsonl"), [
            {"prompt": f"{n}?", "chosen": STYLES[preferred], "rejected": STYLES[other]}
            for n in NAMES])
        for arm in STYLE_ARMS:
            kind, rank, lr = arm
            name = f"{kind}_{lr:g}"
            history = train(build({
                **TINY_CHAT, "objective": "dpo", "name": name, "runs_dir": runs, "init_from": sft,
                "data.path": prefs, "data.val_fraction": 0.25, "model.lora_rank": rank,
                "train.seed": seed, "train.max_steps": 60, "train.learning_rate": lr,
                "train.min_learning_rate": lr / 10, "train.eval_interval": 60}), verbose=0)
            after = greedy_styles(os.path.join(runs, name), held_out)
            rows[arm].append({
                "before": before.count(preferred) / len(held_out),
                "accuracy": history[-1]["val_reward_accuracy"],
                "after": after.count(preferred) / len(held_out),
                "degenerate": sum(a not in STYLES for a in after) / len(held_out),
            })
            print(seed, arm, rows[arm][-1], after[:3], flush=True)
    print(f"\n{args.seeds} seed(s), {len(held_out)} held-out prompts; machine: {os.cpu_count()} cores")
    print("| DPO | learning rate | preferred style before | held-out reward accuracy "
          "| preferred style after | neither style after |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (kind, rank, lr), results in rows.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"| {kind}{f' (rank {rank})' if rank else ''} | {lr:g} | {med['before']:.0%} | "
              f"{med['accuracy']:.2f} | {med['after']:.0%} | {med['degenerate']:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    memory_parser = commands.add_parser("memory", help="Peak memory, full against LoRA.")
    memory_parser.add_argument("--shape", choices=SHAPES, default="gpt2-small")
    memory_parser.add_argument("--rounds", type=int, default=3)
    memory_parser.add_argument("--steps", type=int, default=5)
    memory_parser.add_argument("--pairs", type=int, default=72)
    styles_parser = commands.add_parser("styles", help="The two-style task.")
    styles_parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "styles":
        return styles(args)
    memory(args)


def memory(args):
    work = tempfile.mkdtemp(prefix="dpo_bench_")
    runs = os.path.join(work, "runs")
    shape = {**SHAPES[args.shape], **COMMON}
    prefs = os.path.join(work, "prefs.jsonl")
    make_pairs(prefs, args.pairs)
    run([sys.executable, "-m", "tfchat.fit", *cli({
        **shape, "objective": "chat", "name": "sft", "runs_dir": runs, "train.max_steps": 2,
        "train.eval_interval": 2, "train.eval_batches": 1, "train.log_interval": 1})])
    sft = os.path.join(runs, "sft")
    dpo = {**shape, "objective": "dpo", "init_from": sft, "runs_dir": runs, "data.path": prefs,
           "data.val_fraction": 0.1, "train.max_steps": args.steps, "train.log_interval": 1,
           "train.eval_interval": args.steps, "train.eval_batches": 1}
    # XLA's compilation of the step sets the peak when it is on (the
    # default), hiding what the optimizer's state costs; both are shown.
    arms = {"imports": None,
            "full DPO, XLA": {},
            "LoRA DPO (rank 8), XLA": {"model.lora_rank": 8},
            "full DPO, no XLA": {"train.jit_compile": False},
            "LoRA DPO (rank 8), no XLA": {"model.lora_rank": 8, "train.jit_compile": False}}
    results = {name: [] for name in arms}
    for round_ in range(args.rounds):
        for name, extra in arms.items():
            if extra is None:
                _, peak = run([sys.executable, "-c", IMPORTS])
                results[name].append({"peak": peak})
                print(round_, name, results[name][-1], flush=True)
                continue
            out, peak = run([sys.executable, "-c", RUN_AND_REPORT, *cli({
                **dpo, **extra, "name": "dpo"}), "--overwrite"])
            with open(os.path.join(runs, "dpo", "metrics.jsonl")) as f:
                logs = [json.loads(line) for line in f if '"tokens/s"' in line]
            tokens_per_step = shape["train.batch_size"] * 2 * shape["model.block_size"]
            steps = [tokens_per_step / h["tokens/s"] for h in logs[1:]]  # the first compiles
            reference = float(re.search(r"Reference log-probabilities of \d+ pairs .* in ([\d.]+) s",
                                        out).group(1))
            results[name].append({"peak": peak, "step": statistics.median(steps),
                                  "reference": reference})
            print(round_, name, results[name][-1], flush=True)
    out, _ = run([sys.executable, "-c", FORWARD, sft, prefs])
    forward = float(re.search(r"FORWARD ([\d.]+)", out).group(1))

    imports = statistics.median(r["peak"] for r in results["imports"])
    print(f"\n{args.shape}: {json.dumps(shape)}; {args.pairs} pairs, {args.steps} steps, "
          f"{args.rounds} round(s); machine: {os.cpu_count()} cores")
    print("| process | peak RSS (GiB) | above the imports (GiB) | step (s) | reference pass (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        peak = statistics.median(r["peak"] for r in rows)
        step = statistics.median(r["step"] for r in rows) if name != "imports" else None
        ref = statistics.median(r["reference"] for r in rows) if name != "imports" else None
        print(f"| {name} | {peak:.2f} | {peak - imports:.2f} | "
              f"{'' if step is None else f'{step:.2f}'} | {'' if ref is None else f'{ref:.1f}'} |")
    full_step = statistics.median(r["step"] for r in results["full DPO, XLA"])
    print(f"\nReference forward pass on one training batch: {forward:.2f} s, "
          f"{forward / full_step:.0%} of a full DPO step (XLA).")


if __name__ == "__main__":
    main()
