"""Fairness across groups: every evaluation metric per group of
`data.group_field`, and the largest gap and ratio between groups.

Classification (`classification_groups`), with fairlearn's `MetricFrame`:
  * per group: accuracy, macro precision, recall and F1 (over the classes
    that occur in the group's true or predicted labels, as the overall
    macro-F1), per-class precision, recall, F1 and support;
  * for each of those, the largest difference between two groups
    (highest - lowest) and their ratio (lowest / highest), naming both;
  * demographic parity of predictions, one class against the rest: the
    share of each group predicted as the class (its selection rate), the
    difference and ratio between the most and least selected groups
    (fairlearn's `demographic_parity_difference` / `_ratio`);
  * equal opportunity, one class against the rest: the true-positive rate
    (recall of the class) per group, over the groups that have examples of
    the class, and its largest difference and ratio.
  The headline `demographic_parity_difference` and
  `equal_opportunity_difference` are the largest over the classes (for two
  classes the demographic parity difference is the same for either).
Chat (`chat_groups`): the reply scores `tfchat.evaluation.chat` computes
(BLEU, ROUGE-L, chrF, ...) on each group's replies, and their gaps.

A group with fewer than `MIN_GROUP_EXAMPLES` examples (replies, for chat)
is kept and flagged (`small`, and listed in `small_groups`): its figures
move a lot with one example more or less, so a gap it takes part in is
marked `small` too. A ratio whose highest value is 0 is None (undefined).

Example:
```python
report = classification_groups([0, 1, 1, 0], [0, 1, 0, 0], ["a", "a", "b", "b"], ("no", "yes"))
report["per_group"]["a"]["accuracy"], report["gaps"]["accuracy"]["difference"]  # 1.0, 0.5
```
"""

import math

import numpy as np

# Below this many examples a group's figures are flagged as unstable.
MIN_GROUP_EXAMPLES = 30


def _number(value):
    """A float for JSON: None where undefined (NaN, infinite)."""
    value = float(value)
    return value if math.isfinite(value) else None


def gap(values, small=()):
    """{"difference", "ratio", "lowest", "highest", "small"} of a {group:
    value} dict, over the groups whose value is defined (not None); None
    with fewer than two. `small` names the flagged groups."""
    defined = {g: v for g, v in values.items() if v is not None}
    if len(defined) < 2:
        return None
    lowest = min(defined, key=defined.get)
    highest = max(reversed(list(defined)), key=defined.get)
    low, high = defined[lowest], defined[highest]
    return {"difference": high - low, "ratio": low / high if high else None,
            "lowest": lowest, "highest": highest,
            "small": lowest in small or highest in small}


def _by_group(frame):
    """{group: value} of a one-metric `MetricFrame`'s by_group, None for NaN."""
    return {str(g): _number(v) for g, v in frame.by_group.items()}


def classification_groups(true, predicted, groups, labels, field=""):
    """Per-group classification metrics and the gaps between groups (see
    the module's docstring) of class ids `predicted` against `true`, each
    example in group `groups[i]`; `labels` names the class ids."""
    from fairlearn.metrics import (
        MetricFrame, demographic_parity_difference, demographic_parity_ratio, selection_rate,
    )
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    true, predicted = np.asarray(true, np.int64), np.asarray(predicted, np.int64)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if not len(true) == len(predicted) == len(groups):
        raise ValueError(f"true, predicted and groups must have one entry per example. "
                         f"Received: {len(true)}, {len(predicted)} and {len(groups)}")
    ids = list(range(len(labels)))

    def macro(which):
        def metric(y_true, y_pred):
            present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
            scores = precision_recall_fscore_support(
                y_true, y_pred, labels=present, average=None, zero_division=0)
            return float(np.mean(scores[which]))
        return metric

    def per_class(y_true, y_pred):
        return precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None,
                                               zero_division=0)

    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "macro_precision": macro(0),
                 "macro_recall": macro(1), "macro_f1": macro(2), "per_class": per_class},
        y_true=true, y_pred=predicted, sensitive_features=groups,
    )
    names = sorted(frame.by_group.index.astype(str))
    counts = {g: int(np.sum(groups == g)) for g in names}
    small = [g for g in names if counts[g] < MIN_GROUP_EXAMPLES]
    per_group = {}
    for g in names:
        row = frame.by_group.loc[g]
        precision, recall, f1, support = row["per_class"]
        per_group[g] = {
            "examples": counts[g], "small": g in small,
            **{k: float(row[k]) for k in ("accuracy", "macro_precision", "macro_recall",
                                           "macro_f1")},
            "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                                  "f1": float(f1[i]), "support": int(support[i])}
                          for i, label in enumerate(labels)},
        }
    gaps = {k: gap({g: per_group[g][k] for g in names}, small)
            for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
    for i, label in enumerate(labels):
        for k in ("precision", "recall", "f1"):
            # A class a group neither has nor is predicted says nothing of it.
            gaps[f"{label}/{k}"] = gap({
                g: per_group[g]["per_class"][label][k] for g in names
                if per_group[g]["per_class"][label]["support"]
                or np.any((groups == g) & (predicted == i))}, small)
    parity, opportunity = {}, {}
    for i, label in enumerate(labels):
        chosen = (predicted == i).astype(int)
        rates = MetricFrame(metrics=selection_rate, y_true=(true == i).astype(int),
                            y_pred=chosen, sensitive_features=groups)
        parity[label] = {
            "selection_rate": _by_group(rates),
            "difference": _number(demographic_parity_difference(
                (true == i).astype(int), chosen, sensitive_features=groups)),
            "ratio": _number(demographic_parity_ratio(
                (true == i).astype(int), chosen, sensitive_features=groups)),
        }
        positives = true == i
        if positives.any():
            # The true-positive rate: the selection rate among the class' examples.
            tpr = _by_group(MetricFrame(metrics=selection_rate, y_true=chosen[positives],
                                        y_pred=chosen[positives],
                                        sensitive_features=groups[positives]))
        else:
            tpr = {}
        found = gap(tpr, small)
        opportunity[label] = {"true_positive_rate": tpr,
                              "difference": found["difference"] if found else None,
                              "ratio": found["ratio"] if found else None}

    def largest(table, key, pick):
        values = [row[key] for row in table.values() if row[key] is not None]
        return pick(values) if values else None

    return {
        "field": field,
        "min_examples": MIN_GROUP_EXAMPLES,
        "small_groups": small,
        "per_group": per_group,
        "gaps": gaps,
        "demographic_parity_difference": largest(parity, "difference", max),
        "demographic_parity_ratio": largest(parity, "ratio", min),
        "equal_opportunity_difference": largest(opportunity, "difference", max),
        "equal_opportunity_ratio": largest(opportunity, "ratio", min),
        "demographic_parity": parity,
        "equal_opportunity": opportunity,
    }


def format_groups(report):
    """A compact per-group table of `classification_groups`' report: each
    group's size, accuracy and macro scores (small groups marked *), then the
    largest gaps and the parity and opportunity figures."""
    groups = report["per_group"]
    width = max([len("group")] + [len(g) for g in groups])
    lines = [f"per group of {report['field'] or 'group'}"
             f" (* fewer than {report['min_examples']} examples: unstable)",
             f"{'group':<{width}} {'examples':>9} {'accuracy':>8} {'precision':>9} "
             f"{'recall':>7} {'f1':>7}"]
    for g, row in groups.items():
        mark = "*" if row["small"] else " "
        lines.append(f"{g:<{width}} {row['examples']:>8d}{mark} {row['accuracy']:>8.3f} "
                     f"{row['macro_precision']:>9.3f} {row['macro_recall']:>7.3f} "
                     f"{row['macro_f1']:>7.3f}")
    for key in ("accuracy", "macro_f1"):
        found = report["gaps"][key]
        if found:
            ratio = "n/a" if found["ratio"] is None else f"{found['ratio']:.3f}"
            lines.append(f"largest {key} gap {found['difference']:.3f} (ratio {ratio}): "
                         f"{found['lowest']} vs {found['highest']}"
                         + (" [small group]" if found["small"] else ""))
    for key in ("demographic_parity_difference", "demographic_parity_ratio",
                "equal_opportunity_difference", "equal_opportunity_ratio"):
        value = report[key]
        lines.append(f"{key.replace('_', ' ')} {'n/a' if value is None else f'{value:.3f}'}")
    return "\n".join(lines)


class RecordingGenerator:
    """A `Generator` that remembers the reply it gave each chat prompt, so the
    replies `tfchat.evaluation.chat.evaluate_replies` generates can be scored
    per group without generating them again. Everything else is the
    wrapped generator's."""

    def __init__(self, generator):
        self._generator = generator
        self.replies = {}

    def chat(self, conversations, *args, **kwargs):
        texts = self._generator.chat(conversations, *args, **kwargs)
        for prompt, text in zip(conversations, texts):
            self.replies.setdefault(tuple(prompt), text)
        return texts

    def __getattr__(self, name):
        return getattr(self._generator, name)


def chat_groups(generator, conversations, groups, tokenize=None, field="", max_new_tokens=128,
                batch_size=32):
    """Reply scores (`tfchat.evaluation.chat.score_replies`) per group of
    conversations: every assistant turn of `conversations[i]` is in group
    `groups[i]`. Replies come from `generator`'s record where it is a
    `RecordingGenerator` that has answered the prompt; the others are
    generated greedily. `tokenize` is BLEU's tokenizer (the overall
    score's, so that groups compare)."""
    from tfchat.evaluation.chat import greedy_replies, reply_prompts, score_replies

    rows = [(str(g), prompt, reference)
            for conversation, g in zip(conversations, groups)
            for prompt, reference in reply_prompts([conversation])]
    known = getattr(generator, "replies", {})
    missing = list(dict.fromkeys(tuple(p) for _, p, _ in rows if tuple(p) not in known))
    if missing:
        texts = greedy_replies(generator, [list(p) for p in missing], max_new_tokens, batch_size)
        known = {**known, **dict(zip(missing, texts))}
    names = sorted({g for g, _, _ in rows})
    per_group, small = {}, []
    for g in names:
        mine = [(known[tuple(p)], reference) for group, p, reference in rows if group == g]
        scores = score_replies([r for r, _ in mine], [ref for _, ref in mine], tokenize=tokenize)
        counts = {"conversations": sum(1 for group in groups if str(group) == g),
                  "replies": len(mine)}
        if len(mine) < MIN_GROUP_EXAMPLES:
            small.append(g)
        per_group[g] = {**counts, "small": g in small, **scores}
    metrics = sorted({k for row in per_group.values() for k, v in row.items()
                      if isinstance(v, float)})
    return {
        "field": field,
        "min_examples": MIN_GROUP_EXAMPLES,
        "small_groups": small,
        "per_group": per_group,
        "gaps": {k: gap({g: per_group[g].get(k) for g in names}, small) for k in metrics},
    }
