"""One evaluation table: `evaluation.json` holds, beside the flat keys every
objective writes (`"bleu": 12.3`, kept as they were), a `"schema_version"`
and a `"metrics"` list with one entry per metric:

    {"name": "bleu", "value": 12.3, "count": 240,
     "ci": [9.8, 14.9], "ci_level": 0.95, "resamples": 1000, "seed": 0}

`count` is the number of samples the value is over (replies, held-out
continuations, examples, or validation tokens for a loss); `ci` is a
percentile bootstrap confidence interval where one is meaningful: for a
mean over examples (METEOR, ROUGE, a recall) the per-example values are
resampled with replacement and averaged; for a corpus-level score (BLEU,
chrF) the sentences are resampled and the score recomputed from their
sacrebleu statistics, as sacrebleu's own bootstrap does. The resampling is
seeded, so the same results give the same interval. Metrics without one
(a loss over tokens, whose per-token values are not kept) have `ci` null.

Objectives put the entries they can bootstrap under `"metrics"` in their
results (`generation_metrics`, `mean_entry`); `evaluation_table` adds the
version and an entry for every other numeric result.
"""

import statistics

import numpy as np

from tfchat.evaluation import text_metrics

SCHEMA_VERSION = 2  # 1: the flat keys only
RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0

# Results that are not metrics (counts, settings, bookkeeping).
_NOT_METRICS = {"step", "seconds", "schema_version"}

# The result holding the sample count of the metrics of each key.
_COUNTS = {
    "val_loss": "val_tokens", "val_perplexity": "val_tokens", "val_accuracy": "val_tokens",
    "accuracy": "examples", "macro_f1": "examples",
    "training_prompt_recall": "training_prompts",
}


def _draws(n, resamples, seed):
    """[resamples, n] how often each of n samples is drawn in each resample."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n), np.int32)
    np.add.at(counts, (np.arange(resamples)[:, None], picks), 1)
    return counts


def _interval(values, confidence):
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_mean(values, resamples=RESAMPLES, confidence=CONFIDENCE, seed=SEED):
    """Percentile bootstrap interval [low, high] of the mean of `values`;
    None for fewer than 2 values."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return None
    means = _draws(len(values), resamples, seed) @ values / len(values)
    return _interval(means, confidence)


def bootstrap_corpus(metric, hypotheses, references, tokenize="13a", resamples=RESAMPLES,
                     confidence=CONFIDENCE, seed=SEED):
    """Percentile bootstrap interval of sacrebleu's corpus `metric` ("bleu"
    or "chrf"): sentences resampled, the score recomputed from the sum of
    their statistics. None for fewer than 2 sentences."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) < 2:
        return None
    scorer = BLEU(tokenize=tokenize) if metric == "bleu" else CHRF()
    hyps, refs = text_metrics._nfc(hypotheses), text_metrics._nfc(references)
    stats = np.asarray(scorer._extract_corpus_statistics(hyps, [refs]), np.int64)
    sums = _draws(len(hyps), resamples, seed) @ stats
    scores = [scorer._compute_score_from_stats(list(row)).score for row in sums]
    return _interval(scores, confidence)


def bootstrap_statistic(statistic, n, resamples=RESAMPLES, confidence=CONFIDENCE, seed=SEED):
    """Percentile bootstrap interval of `statistic(indices)`, a figure of
    the examples at `indices` (a macro-F1), over `n` examples resampled
    with replacement. None for fewer than 2."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    return _interval([statistic(rng.integers(0, n, n)) for _ in range(resamples)], confidence)


def entry(name, value, count, ci=None, resamples=RESAMPLES, confidence=CONFIDENCE, seed=SEED,
          **extra):
    """One row of the table."""
    row = {"name": name, "value": float(value), "count": None if count is None else int(count),
           "ci": ci}
    if ci is not None:
        row.update(ci_level=confidence, resamples=resamples, seed=seed)
    row.update(extra)
    return row


def mean_entry(name, values, seed=SEED, **extra):
    """The row of a mean over examples, with its bootstrap interval."""
    values = list(values)
    return entry(name, statistics.fmean(values) if values else 0.0, len(values),
                 bootstrap_mean(values, seed=seed), seed=seed, **extra)


def generation_metrics(hypotheses, references, tokenize="13a", wordnet=None, suffix="",
                       seed=SEED, intervals=True, prefix=""):
    """(flat scores, table rows) of generated texts against references:
    BLEU (`tokenize`: sacrebleu's tokenizer), chrF, METEOR and ROUGE-1, -2,
    -L, -Lsum, all 0-100 (`tfchat.evaluation.text_metrics`), and
    `meteor_matching`; every name starts with `prefix` (e.g.
    "continuation_") and ends with `suffix` (e.g. "_unseen").
    Without `intervals`, the rows have no bootstrap interval (and cost
    nothing beyond the scores)."""
    n = len(hypotheses)

    def corpus_ci(metric):
        if not intervals:
            return None
        return bootstrap_corpus(metric, hypotheses, references, tokenize, seed=seed)

    def mean_row(name, values, **extra):
        if intervals:
            return mean_entry(name, values, seed=seed, **extra)
        return entry(name, statistics.fmean(values) if values else 0.0, len(values), **extra)

    bleu = text_metrics.bleu(hypotheses, references, tokenize)
    chrf = text_metrics.chrf(hypotheses, references)
    meteor, meteor_each, matching = text_metrics.meteor(hypotheses, references, wordnet)
    rouge = text_metrics.rouge(hypotheses, references)
    rows = [
        entry(f"{prefix}bleu{suffix}", bleu, n, corpus_ci("bleu"), seed=seed,
              implementation="sacrebleu corpus_bleu", tokenize=tokenize),
        entry(f"{prefix}chrf{suffix}", chrf, n, corpus_ci("chrf"), seed=seed,
              implementation="sacrebleu corpus_chrf"),
        mean_row(f"{prefix}meteor{suffix}", meteor_each, implementation="nltk meteor_score",
                 matching=matching),
    ]
    flat = {f"{prefix}bleu{suffix}": bleu, f"{prefix}chrf{suffix}": chrf,
            f"{prefix}meteor{suffix}": meteor, f"{prefix}meteor_matching{suffix}": matching}
    for kind, key in (("rouge1", "rouge_1"), ("rouge2", "rouge_2"), ("rougeL", "rouge_l"),
                      ("rougeLsum", "rouge_lsum")):
        flat[f"{prefix}{key}{suffix}"] = rouge[kind][0]
        rows.append(mean_row(f"{prefix}{key}{suffix}", rouge[kind][1],
                             implementation=f"rouge-score {kind} F-measure"))
    return flat, rows


def evaluation_table(results):
    """`results` (an objective's, with `"metrics"` rows if it gave any) with
    `"schema_version"` and a `"metrics"` row for every other numeric
    result, after the flat keys. Returns a new dict."""
    results = dict(results)
    rows = list(results.pop("metrics", []))
    named = {row["name"] for row in rows}
    for key, value in results.items():
        if key in named or key in _NOT_METRICS or isinstance(value, bool) \
                or not isinstance(value, float):
            continue
        count_key = _COUNTS.get(key) or _suffix_count(key, results)
        rows.append(entry(key, value, results.get(count_key)))
    results.pop("schema_version", None)
    return {"schema_version": SCHEMA_VERSION, **results, "metrics": rows}


def _suffix_count(key, results):
    if key.startswith("continuation_"):
        return "continuations"
    if key.endswith("_unseen"):
        return "replies_unseen"
    if key.startswith(("val_replies_", "val_reply_")):
        return "val_prompts"
    if key.startswith("val_"):
        return "val_pairs" if "val_pairs" in results else "val_tokens"
    return "replies" if "replies" in results else "examples"


def format_plain(results, indent=""):
    """`results` as "key: value" lines, floats to 4 places, a nested
    mapping (a task's metrics, the groups) indented under its key."""
    lines = []
    for key, value in results.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(format_plain(value, indent + "  "))
        else:
            shown = f"{value:.4f}" if isinstance(value, float) else value
            lines.append(f"{indent}{key}: {shown}")
    return "\n".join(line for line in lines if line)
