"""Labelled data for classification, and the classification metrics."""

import numpy as np
import pytest

from tfchat.config import DataConfig
from tfchat.data.corpus import chatterbot_conversations
from tfchat.data.labelled import read_labelled
from tfchat.errors import TfchatError
from tfchat.evaluation.classification import (
    classification_report,
    confusion_matrix,
    format_report,
)

from conftest import write_jsonl, write_text


def test_jsonl_and_csv_read_the_same_examples(tmp_path):
    pairs = [(f"text number {i}, with a comma", ["b", "a", "c"][i % 3]) for i in range(30)]
    jsonl = write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": label, "other": 1} for t, label in pairs])
    rows = "".join(f'{i},"{t}",{label}\n' for i, (t, label) in enumerate(pairs))
    csv = write_text(tmp_path / "d.csv", "id,text,label\n" + rows)
    for path in (jsonl, csv):
        data = read_labelled(DataConfig(path=path, val_fraction=0.2))
        assert data.labels == ("a", "b", "c")
        assert data.train + data.val != pairs  # split, not just read...
        assert sorted(data.train + data.val) == sorted(pairs)  # ...all of it
        assert len(data.val) == 6 and data.val[0] == pairs[4]
        assert data.label_ids("val") == [data.labels.index(label) for _, label in data.val]
        assert data.texts("all") == [t for t, _ in data.train + data.val]


def test_custom_fields_and_integer_labels(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": f"t{i}", "y": i % 2} for i in range(20)])
    data = read_labelled(DataConfig(path=path, text_field="body", label_field="y"))
    assert data.labels == ("0", "1") and data.train[0] == ("t0", "0")


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("a.csv", "text,category\nhello,x\n", r"a\.csv line 1: no label column 'label'"),
        ("b.csv", "label,body\nx,hello\n", r"b\.csv line 1: no text column 'text'"),
        ("c.csv", "text,label\nhello,x\nbye,y\n\nlonely\n", r"c\.csv line 5: missing label"),
        ("d.csv", 'text,label\n"two\nlines",x\nhi, \n', r"d\.csv line 4: missing label"),
        ("e.csv", "text,label\n,x\n", r"e\.csv line 2: empty text"),
        ("f.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', r"f\.jsonl line 2: missing label field 'label'"),
        ("g.jsonl", '{"label": "x"}\n', r"g\.jsonl line 1: missing text field 'text'"),
        ("h.jsonl", '{"text": "a", "label": null}\n', r"h\.jsonl line 1: label field 'label' must be"),
        ("i.jsonl", '{"text": "a", "label": "x"}\nnot json\n', r"i\.jsonl line 2: not valid JSON"),
        ("j.txt", "hello\n", r"must be \.jsonl or \.csv"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    path = write_text(tmp_path / name, content)
    with pytest.raises(TfchatError, match=message):
        read_labelled(DataConfig(path=path))


def test_class_without_training_examples(tmp_path):
    # Example 9 of 10 is held out; its class appears nowhere else.
    records = [{"text": f"t{i}", "label": "rare" if i == 9 else "common" if i % 2 else "other"}
               for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(TfchatError, match="Class 'rare' .* no examples in the training split"):
        read_labelled(DataConfig(path=path))
    # Against a run's label vocabulary, an unknown class is an error too.
    with pytest.raises(TfchatError, match="Class 'rare' .* not one the run was trained on"):
        read_labelled(DataConfig(path=path), labels=("common", "other"))
    with pytest.raises(TfchatError, match="needs at least 2"):
        read_labelled(DataConfig(path=write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}] * 20)))


def test_chatterbot_utterances_labelled_with_their_category():
    data = read_labelled(DataConfig(path="chatterbot:english"))
    assert {"ai", "food", "health", "history"} <= set(data.labels)
    expected = {(turn, category) for category, turns in chatterbot_conversations("english")
                for turn in turns}
    examples = data.train + data.val
    assert set(examples) == expected and len(examples) == len(expected)  # repeats once
    assert 0.08 < len(data.val) / len(examples) < 0.12


def brute_force_report(true, predicted, k):
    """Per-class counts with plain loops, as a reference."""
    f1s = []
    for c in range(k):
        tp = sum(t == c and p == c for t, p in zip(true, predicted))
        fp = sum(t != c and p == c for t, p in zip(true, predicted))
        fn = sum(t == c and p != c for t, p in zip(true, predicted))
        if tp + fp + fn == 0:
            continue  # class absent and never predicted
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    accuracy = sum(t == p for t, p in zip(true, predicted)) / len(true)
    return accuracy, sum(f1s) / len(f1s)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_a_brute_force_count(seed):
    rng = np.random.default_rng(seed)
    k = 5
    true = rng.integers(0, k - 1, size=60)  # class 4 never occurs...
    predicted = np.where(rng.random(60) < 0.6, true, rng.integers(0, k, size=60))
    if seed % 2:
        predicted[predicted == 4] = 0  # ...and sometimes is never predicted
    report = classification_report(true, predicted, labels=[f"c{i}" for i in range(k)])
    accuracy, macro_f1 = brute_force_report(true.tolist(), predicted.tolist(), k)
    assert report["accuracy"] == pytest.approx(accuracy)
    assert report["macro_f1"] == pytest.approx(macro_f1)
    matrix = np.array(report["confusion_matrix"])
    for t in range(k):
        for p in range(k):
            assert matrix[t, p] == np.sum((true == t) & (predicted == p))
    assert [row["support"] for row in report["per_class"]] == matrix.sum(axis=1).tolist()


def test_confusion_matrix_and_text_report():
    matrix = confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    report = classification_report([0, 1, 1, 2], [0, 1, 2, 2], ["ai", "food", "history"])
    text = format_report(report)
    assert f"accuracy {report['accuracy']:.4f}" in text and f"macro-F1 {report['macro_f1']:.4f}" in text
    assert all(label in text for label in ("ai", "food", "history"))
    # The matrix rows, as printed.
    assert [line.split()[1:] for line in text.splitlines()[-3:]] == [
        ["1", "0", "0"], ["0", "1", "1"], ["0", "0", "1"]]
