"""Preference tuning that keeps the model intact (issue 28): the DPO
defaults, chosen by measurement on three tasks of different shapes.

    python benchmarks/dpo_defaults.py                      # the whole grid
    python benchmarks/dpo_defaults.py --tasks polite --arms sigmoid:0:1e-3,sigmoid:1:default
    python benchmarks/dpo_defaults.py --arms default --steps 1,3   # defaults, at 1x and 3x
    python benchmarks/dpo_defaults.py --ceiling --seeds 3          # what the SFT models allow

Each task (tests/preference_tasks.py, shared with tests/test_dpo.py)
fine-tunes a chat model (SFT) on both of two replies to every one of 30
prompts, then tunes it with `python -m tfchat.fit --objective dpo
--init_from <sft> --data.path prefs.jsonl` on 20 pairs preferring one
reply, and asks the model (its default checkpoint, what chat and export
load) for greedy replies to the 10 prompts left out of the pairs:

  polite      char tokenizer, short replies, full fine-tuning;
  directions  BPE, multi-sentence replies, LoRA rank 8;
  qwen2       a tiny Qwen2 made by keras-hub (random weights, its
              byte-level BPE and ChatML template), converted by
              `python -m tfchat.convert`, then the polite task.

An arm is loss:rpo_alpha:learning_rate[:beta] ("default", or left out, for
the objective's own);
every other DPO setting is the objective's default. Reported per arm: the
held-out reward accuracy and chosen log-probability change (per token,
against the reference) of the loaded checkpoint (`tfchat.evaluate`), and
the share of the 10 greedy replies that are exactly the preferred reply,
and the share in the preferred style (chrF >= 80 against it, and closer to
it than to the rejected one: the tests' criterion for prompts the pairs
leave out).
Prints a Markdown table; `--seeds N` repeats each SFT + DPO over seeds and
reports medians.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from preference_tasks import (  # noqa: E402  (tests/)
    EXAMPLES, HELD_OUT, SFT_SETTINGS, TRAINING, in_preferred_style, write_chats, write_pairs,
)

TASKS = {
    "polite": dict(examples=EXAMPLES["polite"], sft=SFT_SETTINGS["polite"], dpo={}),
    "directions": dict(examples=EXAMPLES["directions"], sft=SFT_SETTINGS["directions"],
                       dpo={"model.lora_rank": 8}),
    "qwen2": dict(
        examples=EXAMPLES["polite"],
        sft={"model.block_size": 96, "train.max_steps": 400, "train.learning_rate": 3e-3},
        dpo={}, pretrained="qwen2"),
}
QUIET = {"train.sample_tokens": 0}


def cli(settings):
    return [a for key, value in settings.items() for a in (f"--{key}", str(value))]


def fit(args):
    from tfchat import fit as fit_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = fit_cli.main(args)
    if code:
        raise SystemExit(f"fit {' '.join(args)} failed:\n{out.getvalue()[-3000:]}")
    return out.getvalue()


def pretrained_run(kind, root):
    """A tiny keras-hub checkpoint of `kind`, converted to a tfchat run."""
    from pretrained_checkpoints import make_causal_lm, save_checkpoints
    from tfchat import convert

    model = make_causal_lm(kind, seed=0, scale=0.02, hidden_dim=64, intermediate_dim=128)
    preset, _ = save_checkpoints(model, kind, os.path.join(root, "checkpoints"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert convert.main([preset, "--name", kind, "--runs_dir", os.path.join(root, "runs")]) == 0
    return os.path.join(root, "runs", kind)


def sft_run(task, root, seed):
    spec = TASKS[task]
    settings = {**spec["sft"], **QUIET, "objective": "chat", "name": "sft",
                "runs_dir": os.path.join(root, "runs"), "train.seed": seed,
                "data.path": write_chats(os.path.join(root, "chats.jsonl"), spec["examples"]),
                "train.eval_interval": spec["sft"]["train.max_steps"]}
    if spec.get("pretrained"):
        settings["init_from"] = pretrained_run(spec["pretrained"], root)
    fit(cli(settings))
    return os.path.join(root, "runs", "sft")


def greedy_exact(run_dir, examples):
    """The share of greedy replies to `examples`' prompts that are exactly
    their chosen reply, and the replies."""
    from tfchat.data.chat_template import Message
    from tfchat.inference.generator import Generator
    from tfchat.run import load_run

    run = load_run(run_dir)
    replies = Generator(run.backbone, run.tokenizer).chat(
        [[Message("user", prompt)] for prompt, _, _ in examples], max_new_tokens=60)
    exact = [reply == chosen for reply, (_, chosen, _) in zip(replies, examples)]
    return sum(exact) / len(exact), replies


def arm_settings(arm):
    """"loss:rpo_alpha:lr[:beta]" -> the four, "default" where not given."""
    parts = arm.split(":") if arm != "default" else []
    return tuple(parts + ["default"] * (4 - len(parts)))


def sft_ceiling(run_dir, examples):
    """The SFT model made to start each reply with the preferred reply's
    first word: how many of `examples` it then completes exactly, and in
    the preferred style (the most a switch of style can give)."""
    import tensorflow as tf

    from tfchat.data.chat_template import Message
    from tfchat.inference.generator import Generator
    from tfchat.run import load_run

    run = load_run(run_dir)
    generator = Generator(run.backbone, run.tokenizer)
    first = [chosen.split()[0] for _, chosen, _ in examples]
    prompts = [generator.chat_prompt([Message("user", prompt)]).ids
               + run.tokenizer.tokenize(tf.constant([word])).to_list()[0]
               for (prompt, _, _), word in zip(examples, first)]
    new = generator.generate_ids(prompts, 60, generator.sampler(0.0, 0, 1.0, None),
                                 stop_at_eos=False, stop_token_ids=generator.chat_stop_ids())
    replies = [word + text for word, text in zip(first, generator.decode(new))]
    return (sum(r == chosen for r, (_, chosen, _) in zip(replies, examples)),
            sum(map(in_preferred_style, replies, examples)))


def dpo_run(task, root, sft, arm, steps_factor, name):
    from tfchat.objectives import dpo
    from tfchat.run import load_run

    spec = TASKS[task]
    held_out = spec["examples"][HELD_OUT]
    prefs = write_pairs(os.path.join(root, "prefs.jsonl"), spec["examples"][TRAINING])
    loss, alpha, lr, beta = arm_settings(arm)
    settings = {"objective": "dpo", "init_from": sft, "data.path": prefs, "name": name,
                "runs_dir": os.path.join(root, "runs"), **QUIET, **spec["dpo"]}
    if loss != "default":
        settings["dpo.loss"] = loss
    if alpha != "default":
        settings["dpo.rpo_alpha"] = alpha
    if beta != "default":
        settings["dpo.beta"] = beta
    if lr != "default":
        settings["train.learning_rate"] = lr
        settings["train.min_learning_rate"] = float(lr) / 10
    if steps_factor != 1:
        settings["train.max_steps"] = dpo.STEPS * steps_factor
    output = fit(cli(settings) + ["--overwrite"])
    run_dir = os.path.join(root, "runs", name)
    run = load_run(run_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        results = dpo.evaluate(run, max_new_tokens=60)
    exact, replies = greedy_exact(run_dir, held_out)
    return {"reward_accuracy": results["val_reward_accuracy"],
            "chosen_logp_change": results["val_chosen_logp_change"],
            "exact": exact,
            "style": sum(map(in_preferred_style, replies, held_out)) / len(held_out),
            "closer": results["val_replies_closer_to_chosen"],
            "checkpoint": f"{run.checkpoint} (step {run.step})",
            "warned": "Warning" in output, "replies": replies}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--arms", default="sigmoid:0:1e-3,sigmoid:0:3e-4,sigmoid:1:1e-3,"
                                          "sigmoid:1:3e-4,apo_zero:0:3e-4,apo_zero:1:3e-4,default")
    parser.add_argument("--steps", default="1", help="Multiples of the default steps, e.g. 1,3.")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="Seeds are 1337 + first-seed, ... (0: the tests' seed).")
    parser.add_argument("--json", default=None, help="Also write every result here.")
    parser.add_argument("--ceiling", action="store_true",
                        help="Only the SFT models' ceiling: their held-out replies with the "
                             "preferred first word forced.")
    args = parser.parse_args()
    from tfchat.objectives import dpo

    if args.ceiling:
        for task in args.tasks.split(","):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                root = tempfile.mkdtemp(prefix=f"dpo_{task}_{seed}_")
                exact, style = sft_ceiling(sft_run(task, root, seed=1337 + seed),
                                           TASKS[task]["examples"][HELD_OUT])
                print(f"{task}, seed {1337 + seed}: the SFT model, its first word forced, "
                      f"{exact}/10 exact, {style}/10 in the preferred style", flush=True)
        return
    print(f"dpo defaults: {dpo.defaults(__import__('tfchat.config').config.Config())}, "
          f"rpo_alpha default "
          f"{__import__('tfchat.config').config.DpoConfig().rpo_alpha}", flush=True)
    everything = []
    print("| task | loss | rpo_alpha | lr | beta | steps | reward accuracy | chosen logp change "
          "(nats/token) | exact preferred replies | in the preferred style | warned | checkpoint |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for task in args.tasks.split(","):
        cells = {}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            root = tempfile.mkdtemp(prefix=f"dpo_{task}_{seed}_")
            sft = sft_run(task, root, seed=1337 + seed)
            for arm in args.arms.split(","):
                for factor in (int(f) for f in args.steps.split(",")):
                    result = dpo_run(task, root, sft, arm, factor, f"dpo_{len(cells)}")
                    result.update(task=task, arm=arm, steps=factor, seed=seed)
                    everything.append(result)
                    cells.setdefault((arm, factor), []).append(result)
                    print(f"  [{task} seed {seed} {arm} x{factor}] {result['replies'][:3]}",
                          file=sys.stderr, flush=True)
        for (arm, factor), results in cells.items():
            loss, alpha, lr, beta = arm_settings(arm)

            def median(key):
                return statistics.median(r[key] for r in results)

            steps = dpo.STEPS * factor
            print(f"| {task} | {loss} | {alpha} | {lr} | {beta} | {steps} | {median('reward_accuracy'):.2f} | "
                  f"{median('chosen_logp_change'):+.2f} | {median('exact') * 10:.0f}/10 | "
                  f"{median('style') * 10:.0f}/10 | "
                  f"{sum(r['warned'] for r in results)}/{len(results)} | "
                  f"{results[0]['checkpoint']} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    main()
