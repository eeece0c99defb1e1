"""Masked-LM pretraining and what it buys a classifier.

    python benchmarks/mlm_classify.py shakespeare      # MLM on tiny-shakespeare
    python benchmarks/mlm_classify.py chatterbot       # pretrained vs random init
    python benchmarks/mlm_classify.py all

`shakespeare` pretrains tfchat/configs/shakespeare_mlm.yaml and prints the masked-
token accuracy and perplexity on the validation split after `--mlm-steps`,
next to the accuracy of always guessing the most frequent validation token.

`chatterbot` is the category task: every English chatterbot-corpus
utterance labelled with its file's category (21 classes), the usual 1-in-10
validation split. It pretrains an encoder with the masked-LM objective on
the *training-split utterances only* (no labels, no validation text), then
trains the same classifier, with the same steps, seed and settings, from
  (a) that pretrained encoder (`init_from` the MLM run), and
  (b) random initialisation: `init_from` a run of the same tokenizer and
      shape that took one step at learning rate 1e-12, so (a) and (b)
      differ only in pretraining,
and prints the validation macro-F1 and accuracy of each every
`--eval-every` classifier steps, as mean ± sd over `--seeds` fine-tuning
seeds. `--scratch` adds (c) a plain classify run without init_from (its own
WordPiece vocabulary, learnt from all training utterances). Runs go to a
temporary folder and are deleted.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfchat  # noqa: E402,F401
from tfchat import config as config_lib  # noqa: E402
from tfchat.job import train  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SHAKESPEARE_CONFIG = config_lib.find_config_file("shakespeare_mlm")
CORPUS = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt")

# The category task's encoder: small enough for 2 CPU cores.
ENCODER = {
    "tokenizer": {"kind": "wordpiece", "vocab_size": 2000},
    "model": {"num_layers": 2, "num_heads": 4, "hidden_dim": 64, "block_size": 32, "dropout": 0.1},
}
PRETRAIN = {"batch_size": 32, "learning_rate": 3e-3, "min_learning_rate": 3e-4,
            "warmup_steps": 50, "eval_interval": 1000, "log_interval": 100}
FINETUNE = {"batch_size": 32, "learning_rate": 3e-3, "min_learning_rate": 3e-4,
            "warmup_steps": 20, "eval_interval": 250, "log_interval": 50}
QUIET = {"sample_tokens": 0}


def build(runs_dir, name, objective, data, train_settings, **top):
    values = {"name": name, "runs_dir": runs_dir, "objective": objective,
              "data": {"path": data}, **ENCODER, **top,
              "train": {**QUIET, **train_settings}}
    return config_lib.build_config(overrides=json.loads(json.dumps(values)))


def shakespeare(args):
    from tfchat.data.corpus import Corpus
    from tfchat.run import load_run

    with tempfile.TemporaryDirectory() as runs_dir:
        overrides = {"runs_dir": runs_dir, "data": {"path": CORPUS},
                     "train": {**QUIET, "max_steps": args.mlm_steps}}
        config = config_lib.build_config([SHAKESPEARE_CONFIG], overrides)
        start = time.perf_counter()
        history = train(config, verbose=args.verbose)
        seconds = time.perf_counter() - start
        final = history[-1]
        tokenizer = load_run(config.run_dir).tokenizer
        baseline = _majority_token_accuracy(Corpus(config.data), tokenizer)
    print(f"shakespeare MLM, step {final['step']}: val masked accuracy {final['val_accuracy']:.4f}, "
          f"val masked perplexity {final['val_perplexity']:.2f} (train accuracy {final['accuracy']:.4f}); "
          f"most-frequent-token baseline {baseline:.4f}; vocabulary {tokenizer.vocabulary_size}; "
          f"{seconds:.0f} s", flush=True)


def _majority_token_accuracy(corpus, tokenizer):
    """The accuracy of always guessing the validation split's most frequent
    ordinary token (what a masked LM that ignores context would score)."""
    import numpy as np

    ids = np.concatenate([tokenizer.tokenize(b).flat_values.numpy()
                          for b in corpus.texts("val").batch(256)])
    ids = ids[ids >= tokenizer.num_special_tokens]
    return np.bincount(ids).max() / len(ids)


def chatterbot(args):
    from tfchat.config import DataConfig
    from tfchat.data.labelled import read_labelled

    data = read_labelled(DataConfig(path="chatterbot:english"))
    with tempfile.TemporaryDirectory() as runs_dir:
        # The unlabelled training utterances, one document (sequence) each,
        # as the classifier will read them.
        utterances = os.path.join(runs_dir, "train_utterances.jsonl")
        with open(utterances, "w", encoding="utf-8") as f:
            for text in data.texts("train"):
                f.write(json.dumps({"text": text}) + "\n")

        start = time.perf_counter()
        mlm = build(runs_dir, "mlm", "mlm", utterances,
                    {**PRETRAIN, "max_steps": args.pretrain_steps, "seed": 1})
        pretrain_history = train(mlm, verbose=args.verbose)
        pretrain_seconds = time.perf_counter() - start
        untrained = build(runs_dir, "untrained", "mlm", utterances,
                          {**PRETRAIN, "max_steps": 1, "warmup_steps": 0, "learning_rate": 1e-12,
                           "min_learning_rate": 1e-12, "seed": 1})
        train(untrained, verbose=0)
        final = pretrain_history[-1]
        print(f"chatterbot MLM pretraining on {len(data.train)} training utterances, step "
              f"{final['step']}: val masked accuracy {final['val_accuracy']:.4f}, "
              f"perplexity {final['val_perplexity']:.2f}; {pretrain_seconds:.0f} s", flush=True)

        arms = {"(a) MLM-pretrained": mlm.run_dir, "(b) random init": untrained.run_dir}
        if args.scratch:
            arms["(c) scratch, own vocab"] = None
        # results[arm][step] = one report per seed
        results = {arm: {} for arm in arms}
        for seed in args.seeds:
            for arm, source in arms.items():
                config = build(runs_dir, f"clf_{seed}_{arm[1]}", "classify", "chatterbot:english",
                               {**FINETUNE, "max_steps": args.finetune_steps, "seed": seed,
                                "eval_interval": args.eval_every, "keep_checkpoints": 100},
                               init_from=source or "")
                start = time.perf_counter()
                train(config, verbose=0)
                seconds = time.perf_counter() - start
                for step, report in _reports_per_checkpoint(config.run_dir):
                    results[arm].setdefault(step, []).append(report)
                print(f"  seed {seed} {arm:24s} last step: accuracy {report['accuracy']:.4f}  "
                      f"macro-F1 {report['macro_f1']:.4f}  ({seconds:.0f} s)", flush=True)
    steps = sorted(next(iter(results.values())))
    print(f"chatterbot categories: {len(data.labels)} classes, {len(data.train)} train / "
          f"{len(data.val)} validation utterances; validation split after each number of "
          f"classifier steps, mean ± sd over seeds {args.seeds}:")
    for metric in ("macro_f1", "accuracy"):
        print(f"  {metric:24s}" + "".join(f"{step:>18d}" for step in steps))
        for arm, by_step in results.items():
            print(f"  {arm:24s}" + "".join(
                f"{_mean_sd([r[metric] for r in by_step[step]]):>18s}" for step in steps))


def _reports_per_checkpoint(run_dir):
    """(step, validation report) for every checkpoint a classify run kept."""
    import tensorflow as tf

    from tfchat.run import checkpoint_step, load_run

    run = load_run(run_dir)
    state = tf.train.get_checkpoint_state(run.folder.checkpoints)
    for path in state.all_model_checkpoint_paths:
        tf.train.Checkpoint(model=run.model).restore(path).expect_partial()
        yield checkpoint_step(path), run.objective.evaluate(run)


def _mean_sd(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("shakespeare", "chatterbot", "all"))
    parser.add_argument("--mlm-steps", type=int, default=600, help="Shakespeare MLM steps.")
    parser.add_argument("--pretrain-steps", type=int, default=3000, help="Chatterbot MLM steps.")
    parser.add_argument("--finetune-steps", type=int, default=1000, help="Classifier steps (each arm).")
    parser.add_argument("--eval-every", type=int, default=250, help="Report the classifiers every this many steps.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--scratch", action="store_true", help="Add arm (c).")
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args()
    if args.what in ("shakespeare", "all"):
        shakespeare(args)
    if args.what in ("chatterbot", "all"):
        chatterbot(args)


if __name__ == "__main__":
    main()
