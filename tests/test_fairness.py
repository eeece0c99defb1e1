"""Fairness across groups (`data.group_field`, tfchat/evaluation/fairness.py):
the figures against a direct numpy computation on a table with a planted
gap, small groups flagged, groups read from labelled data and conversations,
chat reply scores per group, and a classify run evaluated per group."""

import json
import os

import numpy as np
import pytest

from conftest import as_cli_args, encoder_settings, write_jsonl, write_text
from tfchat.config import DataConfig
from tfchat.data.chat_template import Message
from tfchat.data.dialogues import DialogueCorpus
from tfchat.data.labelled import read_labelled
from tfchat.errors import TfchatError
from tfchat.evaluation import fairness
from tfchat.evaluation.chat import score_replies
from tfchat.evaluation.classification import format_report


def planted_table():
    """Two classes, groups "a" and "b" (40 each) and "c" (10): the model is
    right 90% of the time on a, 60% on b, and predicts class 1 more for b."""
    rng = np.random.default_rng(0)
    groups = np.array(["a"] * 40 + ["b"] * 40 + ["c"] * 10, dtype=object)
    true = rng.integers(0, 2, len(groups))
    predicted = true.copy()
    wrong = {"a": 4, "b": 16, "c": 3}
    for g, count in wrong.items():
        at = np.flatnonzero(groups == g)[:count]
        predicted[at] = 1 - predicted[at]
    b = np.flatnonzero((groups == "b") & (predicted == true) & (true == 0))[:5]
    predicted[b] = 1  # b's predictions lean to class 1 (5 more wrong)
    return true, predicted, groups


def by_hand(true, predicted, mask, classes=(0, 1)):
    """Accuracy, macro precision/recall/F1 and per-class (P, R, F1) of the rows in `mask`."""
    t, p = true[mask], predicted[mask]
    rows = {}
    for c in classes:
        tp = np.sum((t == c) & (p == c))
        guessed, actual = np.sum(p == c), np.sum(t == c)
        precision = tp / guessed if guessed else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows[c] = (precision, recall, f1)
    present = [c for c in classes if np.any(t == c) or np.any(p == c)]
    macro = [np.mean([rows[c][k] for c in present]) for k in range(3)]
    return np.mean(t == p), macro, rows


def test_figures_equal_a_direct_computation_on_a_planted_gap():
    true, predicted, groups = planted_table()
    report = fairness.classification_groups(true, predicted, groups, ("no", "yes"), field="g")
    assert list(report["per_group"]) == ["a", "b", "c"]
    accuracy = {}
    for g in "abc":
        mask = groups == g
        acc, macro, rows = by_hand(true, predicted, mask)
        row = report["per_group"][g]
        accuracy[g] = acc
        assert row["examples"] == mask.sum()
        np.testing.assert_allclose(
            [row["accuracy"], row["macro_precision"], row["macro_recall"], row["macro_f1"]],
            [acc, *macro])
        for c, label in enumerate(("no", "yes")):
            got = row["per_class"][label]
            np.testing.assert_allclose([got["precision"], got["recall"], got["f1"]], rows[c])
            assert got["support"] == np.sum(mask & (true == c))
    assert accuracy["a"] == 0.9 and accuracy["b"] == (40 - 21) / 40  # the planted gap
    gap = report["gaps"]["accuracy"]
    high, low = max(accuracy.values()), min(accuracy.values())
    assert gap["highest"] == "a" and gap["lowest"] == min(accuracy, key=accuracy.get)
    np.testing.assert_allclose([gap["difference"], gap["ratio"]], [high - low, low / high])

    # Demographic parity: the share of each group predicted "yes" (and "no").
    selection = {g: np.mean(predicted[groups == g] == 1) for g in "abc"}
    parity = report["demographic_parity"]["yes"]
    np.testing.assert_allclose([parity["selection_rate"][g] for g in "abc"],
                               [selection[g] for g in "abc"])
    difference = max(selection.values()) - min(selection.values())
    ratio = min(selection.values()) / max(selection.values())
    np.testing.assert_allclose([parity["difference"], parity["ratio"]], [difference, ratio])
    # Two classes: "no"'s parity difference is the same.
    np.testing.assert_allclose(report["demographic_parity"]["no"]["difference"], difference)
    np.testing.assert_allclose(report["demographic_parity_difference"], difference)
    # Equal opportunity: the true-positive rate of each class per group.
    for c, label in enumerate(("no", "yes")):
        tpr = {g: np.mean(predicted[(groups == g) & (true == c)] == c) for g in "abc"}
        got = report["equal_opportunity"][label]
        np.testing.assert_allclose([got["true_positive_rate"][g] for g in "abc"],
                                   [tpr[g] for g in "abc"])
        np.testing.assert_allclose(got["difference"], max(tpr.values()) - min(tpr.values()))
    yes_tpr = {g: np.mean(predicted[(groups == g) & (true == 1)] == 1) for g in "abc"}
    no_tpr = {g: np.mean(predicted[(groups == g) & (true == 0)] == 0) for g in "abc"}
    np.testing.assert_allclose(report["equal_opportunity_difference"], max(
        max(t.values()) - min(t.values()) for t in (yes_tpr, no_tpr)))
    # fairlearn's own binary figure agrees (class "yes" positive).
    from fairlearn.metrics import equal_opportunity_difference

    np.testing.assert_allclose(
        report["equal_opportunity"]["yes"]["difference"],
        equal_opportunity_difference(true, predicted, sensitive_features=groups))
    json.dumps(report, allow_nan=False)  # plain JSON: no NaN anywhere


def test_small_groups_are_flagged_not_hidden():
    true, predicted, groups = planted_table()
    report = fairness.classification_groups(true, predicted, groups, ("no", "yes"), field="g")
    assert fairness.MIN_GROUP_EXAMPLES == 30
    assert report["small_groups"] == ["c"] and report["min_examples"] == 30
    assert report["per_group"]["c"]["small"] and not report["per_group"]["a"]["small"]
    text = fairness.format_groups(report)
    assert "fewer than 30 examples" in text
    line_c = next(line for line in text.splitlines() if line.startswith("c "))
    assert "10*" in line_c
    # A gap between the two large groups is not marked small; one with c is.
    only_large = fairness.classification_groups(
        true[groups != "c"], predicted[groups != "c"], groups[groups != "c"], ("no", "yes"))
    assert not only_large["gaps"]["accuracy"]["small"] and not only_large["small_groups"]
    c_lowest = fairness.gap({"a": 0.9, "b": 0.8, "c": 0.1}, small=["c"])
    assert c_lowest["small"] and c_lowest["lowest"] == "c"
    # A group whose rate is 0 everywhere: the ratio is undefined, not NaN.
    assert fairness.gap({"a": 0.0, "b": 0.0})["ratio"] is None
    assert fairness.gap({"a": 1.0}) is None


def test_groups_read_from_labelled_jsonl_and_csv(tmp_path):
    records = [{"text": f"text {i}", "label": "xy"[i % 2], "who": ["p", "q", 3][i % 3]}
               for i in range(20)]
    jsonl = write_jsonl(tmp_path / "d.jsonl", records)
    rows = "".join(f"text {i},{r['label']},{r['who']}\n" for i, r in enumerate(records))
    csv = write_text(tmp_path / "d.csv", "text,label,who\n" + rows)
    for path in (jsonl, csv):
        data = read_labelled(DataConfig(path=path, group_field="who"))
        assert len(data.groups("val")) == len(data.val) == 2
        pairs = dict(zip(data.texts("all"), data.groups("all")))
        assert all(pairs[f"text {i}"] == str(r["who"]) for i, r in enumerate(records))
    assert read_labelled(DataConfig(path=jsonl)).groups("val") is None


def test_a_record_without_the_group_field_names_its_file_and_line(tmp_path):
    records = [{"text": f"t{i}", "label": "xy"[i % 2], "who": "p"} for i in range(10)]
    del records[6]["who"]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(TfchatError, match=r"d\.jsonl line 7: missing group field 'who'"):
        read_labelled(DataConfig(path=path, group_field="who"))
    records[6]["who"] = None
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(TfchatError, match=r"line 7: group field 'who'.*non-empty"):
        read_labelled(DataConfig(path=path, group_field="who"))
    csv = write_text(tmp_path / "d.csv", "text,label,who\na,x,p\nb,y\n")
    with pytest.raises(TfchatError, match=r"d\.csv line 3: missing group"):
        read_labelled(DataConfig(path=csv, group_field="who"))
    with pytest.raises(TfchatError, match=r"line 1: no group column 'age'"):
        read_labelled(DataConfig(path=csv, group_field="age"))
    with pytest.raises(TfchatError, match="group_field needs JSONL or CSV"):
        read_labelled(DataConfig(path="chatterbot:english", group_field="who"))


def test_groups_of_conversations(tmp_path):
    def record(i):
        messages = [{"role": "user", "content": f"hi {i}"},
                    {"role": "assistant", "content": f"hello {i}"}]
        return ({"messages": messages, "lang": "en" if i % 2 else "fr"} if i % 3
                else {"messages": messages, "metadata": {"lang": "de"}})

    path = write_jsonl(tmp_path / "c.jsonl", [record(i) for i in range(20)])
    corpus = DialogueCorpus(DataConfig(path=path, group_field="lang"))
    for split in ("train", "val"):
        got = dict(zip((c[0].content for c in corpus.conversations(split)),
                       corpus.groups(split)))
        for text, group in got.items():
            i = int(text.split()[1])
            assert group == ("de" if i % 3 == 0 else "en" if i % 2 else "fr")
    assert DialogueCorpus(DataConfig(path=path)).groups("val") is None
    bad = [record(i) for i in range(20)]
    del bad[4]["lang"]
    path = write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(TfchatError, match=r"bad\.jsonl line 5: no field 'lang'"):
        DialogueCorpus(DataConfig(path=path, group_field="lang"))
    categories = DialogueCorpus(DataConfig(path="chatterbot:english", group_field="category"))
    assert {"ai", "food"} <= set(categories.groups("val"))
    with pytest.raises(TfchatError, match="group_field category"):
        DialogueCorpus(DataConfig(path="chatterbot:english", group_field="lang"))


class FakeGenerator:
    """Replies "hello <n>" to "hi <n>" for even n, "no idea" otherwise; counts calls."""

    def __init__(self):
        self.asked = []

    def chat_prompts(self, prompts, max_new_tokens):
        return [type("E", (), {"ids": [0] * len(p)})() for p in prompts]

    def chat(self, prompts, max_new_tokens, temperature=1.0):
        self.asked += [p[-1].content for p in prompts]
        return [f"hello {p[-1].content.split()[1]}" if int(p[-1].content.split()[1]) % 2 == 0
                else "no idea" for p in prompts]


def test_chat_reply_scores_per_group_reuse_the_replies():
    conversations = [[Message("user", f"hi {i}"), Message("assistant", f"hello {i}")]
                     for i in range(70)]
    groups = ["even" if i % 2 == 0 else "odd" for i in range(70)]
    groups[69] = "last"
    inner = FakeGenerator()
    recording = fairness.RecordingGenerator(inner)
    recording.chat([c[:1] for c in conversations], 16, temperature=0.0)
    assert len(inner.asked) == 70
    report = fairness.chat_groups(recording, conversations, groups, "13a", field="parity")
    assert len(inner.asked) == 70  # nothing generated again
    assert report["small_groups"] == ["last"]  # 1 reply, under 30
    assert report["per_group"]["even"]["replies"] == 35 and not report["per_group"]["even"]["small"]
    assert report["per_group"]["odd"]["replies"] == 34 and report["per_group"]["last"]["small"]
    odd = [i for i in range(70) if groups[i] == "odd"]
    expected = score_replies(["no idea"] * len(odd), [f"hello {i}" for i in odd], tokenize="13a")
    for key, value in expected.items():
        assert report["per_group"]["odd"][key] == pytest.approx(value)
    assert report["per_group"]["even"]["chrf"] == pytest.approx(100)
    gap = report["gaps"]["chrf"]
    assert gap["highest"] == "even" and gap["small"]
    assert gap["difference"] == pytest.approx(100 - min(
        report["per_group"][g]["chrf"] for g in ("odd", "last")))
    # A generator that has not answered them: the replies are generated.
    fresh = FakeGenerator()
    again = fairness.chat_groups(fresh, conversations, groups, "13a")
    assert len(fresh.asked) == 70 and again["per_group"] == report["per_group"]


@pytest.mark.slow
def test_classify_run_evaluated_per_group(tmp_path):
    """A tiny classify run (no init_from) on data with a group field:
    evaluate reports per-group metrics, consistent with the overall ones."""
    from tfchat import evaluate as evaluate_cli
    from tfchat import fit

    records = [{"text": f"the cat number {i} sat", "label": "animal", "site": "ab"[i % 2]}
               for i in range(40)]
    records += [{"text": f"my aunt number {i} sang", "label": "person", "site": "abc"[i % 3]}
                for i in range(40)]
    data = write_jsonl(tmp_path / "labelled.jsonl", records)
    args = as_cli_args(encoder_settings(tmp_path, name="clf", objective="classify", **{
        "data.path": data, "data.group_field": "site", "data.val_fraction": 0.5,
        "train.max_steps": 20, "train.eval_interval": 20}))
    assert fit.main(args) == 0
    run_dir = os.path.join(tmp_path, "runs", "clf")
    assert evaluate_cli.main(["--run", run_dir]) == 0
    with open(os.path.join(run_dir, "evaluation.json"), encoding="utf-8") as f:
        results = json.load(f)
    groups = results["groups"]
    assert groups["field"] == "site" and set(groups["per_group"]) == {"a", "b", "c"}
    sizes = {g: row["examples"] for g, row in groups["per_group"].items()}
    assert sum(sizes.values()) == results["examples"] == 40
    assert groups["small_groups"] == sorted(sizes)  # 40 validation examples in 3 groups
    overall = sum(row["accuracy"] * row["examples"] for row in groups["per_group"].values())
    assert overall / 40 == pytest.approx(results["accuracy"])
    for key in ("demographic_parity_difference", "equal_opportunity_difference"):
        assert 0 <= groups[key] <= 1
    text = format_report(results)
    assert "per group of site" in text and "demographic parity difference" in text


@pytest.mark.slow
def test_chat_run_evaluated_per_group(chat_run, tmp_path):
    """The chat objective's evaluation with data.group_field: the greedy
    replies it scores, scored again per group of the conversations."""
    import dataclasses

    from conftest import CHAT_PAIRS
    from tfchat.run import load_run

    records = [{"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": bot}], "lang": "xy"[i // 10 % 2]}
               for i, (user, bot) in enumerate(CHAT_PAIRS * 10)]
    path = write_jsonl(tmp_path / "chats.jsonl", records)
    run = load_run(chat_run)
    data = dataclasses.replace(run.config.data, path=path, group_field="lang", fix_unicode=False)
    run.config = dataclasses.replace(run.config, data=data)
    results = run.objective.evaluate(run, max_new_tokens=8, jit_compile=False)
    groups = results["groups"]
    assert groups["field"] == "lang" and set(groups["per_group"]) == {"x", "y"}
    assert sum(row["replies"] for row in groups["per_group"].values()) == results["replies"]
    assert groups["small_groups"] == ["x", "y"]  # 3 validation conversations in all
    assert {"bleu", "chrf", "rouge_l"} <= set(groups["gaps"])
