"""`objective: dpo`: preference tuning (Direct Preference Optimisation) of a
chat model on pairs of a chosen and a rejected reply to the same prompt.

The policy starts from `init_from` (a chat run, or a converted pretrained
checkpoint) and the reference is those same starting weights, frozen. The
reference only ever scores the fixed pairs, so its log-probabilities are
computed once, before training, and travel with each pair through the
input pipeline (`reference_logps`): no second model is held while the
policy trains, with or without LoRA, and a resumed run computes the same
values again from `init_from`. The result is a chat run: it chats,
generates, evaluates and exports as one.
"""

import gc
import time

import numpy as np
import tensorflow as tf

from tfchat import config as config_lib
from tfchat.data.cleaned import reading_config
from tfchat.data.pipeline import preference_dataset
from tfchat.data.preferences import PreferenceCorpus, encode_pairs
from tfchat.data.sharding import WHOLE
from tfchat.errors import TfchatError
from tfchat.evaluation.preferences import preferred_replies
from tfchat.inference.generator import Generator
from tfchat.model.preference import PreferenceLM, pair_logps
from tfchat.objectives import chat
from tfchat.objectives.base import (
    Objective, build_causal_lm, restore_backbone, share, training_texts,
)


def check_config(config):
    problems = []
    if not config.init_from:
        problems.append(
            "objective dpo needs init_from: the chat run (or pretrained checkpoint) to tune; "
            "the policy starts from its weights, which stay the reference"
        )
    if config.tokenizer.kind == "wordpiece":
        problems.append("objective dpo needs tokenizer.kind char, bpe or pretrained "
                        "(WordPiece splits the chat markers)")
    return problems


def check_settings(config):
    """The values of the `dpo` section that a type alone cannot check."""
    d = config.dpo
    checks = [
        (d.loss in config_lib.DPO_LOSSES, f"dpo.loss must be one of {', '.join(config_lib.DPO_LOSSES)}"),
        (d.beta > 0, "dpo.beta must be positive"),
        (d.rpo_alpha >= 0, "dpo.rpo_alpha must be 0 or positive"),
        (d.max_chosen_drop > 0, "dpo.max_chosen_drop must be positive"),
        (0 <= d.label_smoothing < 0.5, "dpo.label_smoothing must be in [0, 0.5)"),
        (d.loss == "sigmoid" or not d.label_smoothing,
         "dpo.label_smoothing applies to dpo.loss sigmoid only"),
    ]
    return [message for ok, message in checks if not ok]


def read_data(config):
    return PreferenceCorpus(config.data)


def check_data(config, corpus, tokenizer, workers=1):
    """Nothing beyond `datasets`, which renders every pair and fails on a
    prompt that leaves no room for its reply."""


def reference_logps(config, vocabulary_size, encoded, batch_size, checkpoint):
    """The summed log-probabilities [N, 2] of each encoded pair's chosen and
    rejected reply under the weights of `checkpoint` (init_from's), in
    inference mode."""
    reference = build_causal_lm(config, vocabulary_size)
    restore_backbone(reference, checkpoint, config.init_from)
    pairs = preference_dataset(encoded, config.model.block_size, batch_size,
                               drop_remainder=False)
    score = tf.function(
        lambda x, y, w: tf.stack(pair_logps(reference.backbone, x, y, w)[0], axis=1),
        jit_compile=config.train.jit_compile, reduce_retracing=True,
    )
    values = np.concatenate([score(*batch).numpy() for batch in pairs])
    # Keras models hold reference cycles: collect this one now, before the
    # policy and its optimizer are built, not at some later collection.
    reference = score = None
    gc.collect()
    return values


def datasets(config, corpus, tokenizer, verbose=0, batch_size=None, splits=("train", "val"),
             pairs=None, init_checkpoint=None, shard=WHOLE):
    """Each split's pairs, encoded, with their log-probabilities under
    `init_checkpoint` (init_from's latest, the reference), as batches of
    `tfchat.data.pipeline.preference_dataset`. `pairs` ({split:
    [PreferencePair]}) replaces the corpus' own."""
    if init_checkpoint is None:
        raise ValueError("objective dpo's datasets need init_checkpoint, the reference weights.")
    m, t = config.model, config.train
    batch_size = batch_size or t.batch_size
    encoded = {}
    for split in splits:
        rows = pairs[split] if pairs and split in pairs else corpus.pairs(split)
        # A worker scores only its own training pairs.
        rows = share(split, shard).rows(rows)
        if not rows:
            raise TfchatError(f"The {split} split of {corpus.path} has fewer pairs than "
                              f"the {shard.count} workers.")
        encoded[split] = encode_pairs(tokenizer, rows, m.block_size + 1)
    start = time.perf_counter()
    # One pass of the reference over every split's pairs.
    everything = [pair for split in splits for pair in encoded[split]]
    reference = reference_logps(config, tokenizer.vocabulary_size, everything, batch_size,
                                init_checkpoint)
    seconds = time.perf_counter() - start
    result, offset = {}, 0
    for split in splits:
        n = len(encoded[split])
        if verbose:
            cut = sum(e.cut_tokens > 0 for pair in encoded[split] for e in pair)
            print(
                f"{split}: {n} preference pair{'s' if n != 1 else ''}"
                + (f", {cut} replies cut to {m.block_size + 1} tokens" if cut else "")
                + (f", {corpus.unpaired} labelled replies without an opposite left out"
                   if split == "train" and getattr(corpus, "unpaired", 0) else "")
                + "."
                + (f" Few to judge by: the best checkpoint and the chosen-reply check rest on "
                   f"them; raise data.val_fraction ({config.data.val_fraction:g}) for more."
                   if split == "val" and n < FEW_HELD_OUT else "")
            )
        train = split == "train"
        result[split] = preference_dataset(
            encoded[split], m.block_size, share(split, shard).batch_size(batch_size),
            reference_logps=reference[offset:offset + n],
            shuffle_buffer=t.shuffle_buffer if train else 0, seed=t.seed, repeat=train,
            drop_remainder=train,
        )
        offset += n
    if verbose:
        print(f"Reference log-probabilities of {len(everything)} pairs from "
              f"{config.init_from} in {seconds:.1f} s.")
    return result


# Below this many held-out pairs, training says how little they show.
FEW_HELD_OUT = 5


def build_model(config, vocabulary_size, labels=None, forward_pass=True):
    """A `PreferenceLM` over a `GPT`: a `CausalLM` with the DPO step, the
    same weights and checkpoint layout (`build_causal_lm`)."""
    causal = build_causal_lm(config, vocabulary_size, forward_pass=forward_pass)
    d = config.dpo
    model = PreferenceLM(
        causal.backbone, beta=d.beta, loss=d.loss, label_smoothing=d.label_smoothing,
        rpo_alpha=d.rpo_alpha, grad_accumulation_steps=config.train.grad_accumulation_steps,
        dtype=config.train.precision, name="preference_lm",
    )
    model.built = True  # no weights of its own; the backbone is built
    return model


def evaluate(run, batch_size=32, limit=0, max_new_tokens=128, jit_compile=True, **unused):
    """On the first `limit` (0 = all) validation pairs: the DPO loss and the
    rewards against `init_from`'s weights (reward accuracy: the share of
    pairs the tuning moved towards the chosen reply), `val_chosen_logp_change`
    (the chosen reply's log-probability against the reference's, per
    token), and `val_chosen_likelier`, the share whose chosen reply the
    model now finds likelier than the rejected one outright (no reference).

    Then what the model says: its greedy reply to each distinct held-out
    prompt, scored by chrF (0-100, sacrebleu) against that prompt's chosen
    and rejected replies. `val_replies_closer_to_chosen` is the share of
    replies nearer the chosen reply than the rejected one (a tie counts
    half), `val_reply_chrf_chosen` their mean chrF against the chosen
    reply, `val_replies_exactly_chosen` the share that are it word for
    word: a model that ranks the pairs right but no longer writes (reward
    accuracy 1.0, replies gibberish) scores low on all three."""
    corpus = read_data(reading_config(run.config)[0])  # the run's cleaned copy, if any
    pairs = corpus.pairs("val")[: limit or None]
    val = datasets(run.config, corpus, run.tokenizer, batch_size=batch_size, splits=["val"],
                   pairs={"val": pairs}, init_checkpoint=run.init_checkpoint())["val"]
    model = run.model
    for metric in model.metrics:
        metric.reset_state()
    step = tf.function(model.test_step, reduce_retracing=True)
    score = tf.function(lambda x, y, w: pair_logps(model.backbone, x, y, w)[0],
                        reduce_retracing=True)
    likelier = []
    for batch in val:
        step(batch)
        chosen, rejected = score(*batch)
        likelier.append((chosen > rejected).numpy())
    results = {f"val_{k}": float(v) for k, v in model.metric_results().items()
               if k not in ("nonfinite_steps", "useful_fraction")}
    results["val_chosen_likelier"] = float(np.concatenate(likelier).mean())
    results["val_pairs"] = len(pairs)
    generator = Generator(run.backbone, run.tokenizer, jit_compile=jit_compile)
    results.update(preferred_replies(generator, pairs, batch_size, max_new_tokens))
    return results


def format_results(results):
    lines = [f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}"
             for key, value in results.items() if key != "examples"]
    for example in results.get("examples", []):
        lines.append(f"\nuser: {example['user']}\nchosen: {example['chosen']}\n"
                     f"rejected: {example['rejected']}\nreply: {example['reply']}")
    return "\n".join(lines)


# Measured on the three tasks of benchmarks/dpo_defaults.py, over seeds
# (benchmarks/RESULTS.md, "Preference tuning that keeps the model intact"):
# with rpo_alpha 1 and dpo.beta 1, 1e-4 switched the held-out replies to
# the preferred style and kept them there at 3x the steps, full and LoRA;
# a chat run's SFT rate (1e-3) without the likelihood term made every
# reply degenerate.
LEARNING_RATE = 1e-4
STEPS = 200


def defaults(config):
    given = config_lib.given_keys(config) or ()
    peak = config.train.learning_rate if "train.learning_rate" in given else LEARNING_RATE
    return {
        "train.learning_rate": LEARNING_RATE,
        "train.min_learning_rate": peak / 10,
        "train.max_steps": STEPS,
        "train.warmup_steps": 10,
        "train.eval_interval": 25,
    }


def chosen_drop(config, results):
    """How far (nats per token) the held-out chosen replies fell below the
    reference beyond `dpo.max_chosen_drop`, 0 if not."""
    return max(0.0, -results["val_chosen_logp_change"] - config.dpo.max_chosen_drop)


def selection_loss(config, results):
    """100 per nat per token the held-out chosen replies fell beyond
    `dpo.max_chosen_drop`, 0 within it; the trainer keeps the latest of
    equals, so the best checkpoint is the last evaluation within the limit
    (or, when none stayed within it, the least damaged one).

    Not a loss over the held-out pairs: once the pairs separate, the
    preference loss is ~0 (1e-7 and below at beta 1) and ranks evaluations
    by noise, and the likelihood term rises a little as they separate (the
    whole loss chose step 25 of the polite task in benchmarks/dpo_defaults.py,
    7 of 10 held-out replies preferred, over step 200's 9)."""
    return 100.0 * chosen_drop(config, results)


def warning(config, results):
    change = results["val_chosen_logp_change"]
    if not chosen_drop(config, results):
        return None
    return (f"the held-out chosen replies are {-change:.2f} nats per token less likely than "
            f"under the reference (dpo.max_chosen_drop {config.dpo.max_chosen_drop:g}): the "
            "tuning is making every reply unlikely, however good the reward accuracy. Lower "
            "train.learning_rate or raise dpo.rpo_alpha (default 1).")


def closing_note(config, step, results):
    """What the end of training says of the best checkpoint (at `step`,
    with these validation results) after the last evaluation warned."""
    if chosen_drop(config, results):
        return (f"No evaluation kept the chosen replies within the limit, so the best checkpoint "
                f"(step {step}), which chat, generate, export and evaluate load, is only the "
                f"least damaged one; the starting weights are init_from's ({config.init_from}).")
    return (f"The best checkpoint (step {step}), which chat, generate, export and evaluate "
            "load, kept the chosen replies within the limit.")


def describe(config, corpus, model):
    d = config.dpo
    smoothing = f", label smoothing {d.label_smoothing}" if d.label_smoothing else ""
    line = (f"{corpus.num_pairs} preference pairs, {d.loss} loss, beta {d.beta:g}{smoothing}, "
            f"rpo_alpha {d.rpo_alpha:g}; the reference is {config.init_from}'s weights")
    from tfchat.objectives import defaults_used

    used = defaults_used(config)
    if used:
        line += "; dpo's defaults: " + ", ".join(f"{k} {v:g}" for k, v in used.items())
    return line
def next_steps(config):
    return ("Chat with it (its best checkpoint):\n"
            f"  python -m tfchat.chat --run {config.run_dir}\n"
            "Rewards, reward accuracy and its replies to the held-out prompts:\n"
            f"  python -m tfchat.evaluate --run {config.run_dir}")


OBJECTIVE = Objective(
    name="dpo",
    init_from=("chat", "causal", "dpo"),
    generates=True,
    chats=True,
    scores_with_init=True,
    check_config=check_config,
    read_data=read_data,
    tokenizer_texts=training_texts,
    check_data=check_data,
    datasets=datasets,
    build_model=build_model,
    sampler=chat.sampler,
    describe=describe,
    evaluate=evaluate,
    format_results=format_results,
    signatures=chat.OBJECTIVE.signatures,
    next_steps=next_steps,
    defaults=defaults,
    selection_loss=selection_loss,
    warning=warning,
    closing_note=closing_note,
    default_checkpoint="best",
    batch_rows="pairs",
    check_settings=check_settings,
)
