"""The notebooks run top to bottom with their small settings, and what they
show holds (each ends its key cells with assertions, checked here too)."""

import glob
import json
import os
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
PATHS = sorted(glob.glob(str(NOTEBOOKS / "*.ipynb")))


def test_notebooks_are_committed_without_outputs_and_match_their_sources(tmp_path):
    for path in PATHS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path
    # make_notebooks.py is the source of truth; the committed files match it.
    before = {p: pathlib.Path(p).read_text() for p in PATHS}
    subprocess.run([sys.executable, str(NOTEBOOKS / "make_notebooks.py")], check=True,
                   capture_output=True)
    assert {p: pathlib.Path(p).read_text() for p in PATHS} == before


def _text_outputs(notebook):
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts.append(output["text"])
            elif "data" in output and "text/plain" in output["data"]:
                texts.append(output["data"]["text/plain"])
    return "\n".join(texts)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[os.path.basename(p) for p in PATHS])
def test_notebook_runs_with_small_settings(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TFCHAT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TFCHAT_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # The kernel imports this checkout's tfchat, whatever is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises on any error, failed assertions included
    output = _text_outputs(notebook)
    if "pretrain_gpt" in path:
        first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", output).groups())
        assert last < first
        assert "round trip: To be, or not to be" in output
        assert _has_image(notebook), "the loss curve was not drawn inline"
    if "masked_lm_bert" in path:
        _check_masked_lm_bert(notebook, output, tmp_path / "runs")
    if "evaluate" in path:
        _check_evaluate(notebook, tmp_path / "runs")


def _has_image(notebook):
    return any("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))


def _confusion_matrix(output):
    """The confusion matrix `format_report` printed: the rows under its header."""
    lines = output.split("confusion matrix (rows: true class #, columns: predicted class #)\n")[1]
    rows = []
    for line in lines.splitlines()[1:]:
        values = line.split()
        if not values or not all(v.isdigit() for v in values):
            break
        assert int(values[0]) == len(rows)  # numbered rows
        rows.append([int(v) for v in values[1:]])
    return rows


def _check_masked_lm_bert(notebook, output, runs):
    from tfchat.config import DataConfig
    from tfchat.data.labelled import read_labelled

    # Masked-LM pretraining learnt: the training loss fell and the
    # validation loss is below a uniform guess over the vocabulary.
    first, last, val, uniform = map(float, re.search(
        r"masked LM: loss ([\d.]+) -> ([\d.]+); validation loss ([\d.]+), .*; "
        r"ln\(vocabulary size\) ([\d.]+)", output).groups())
    assert last < first and val < uniform
    with open(runs / "notebook_mlm" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert [m["val_loss"] for m in logged if "val_loss" in m][-1] == pytest.approx(val, abs=1e-3)
    # TensorBoard event files hold the scalars.
    assert "'train/loss'" in output and "'val/val_loss'" in output
    # Fill-mask: k = 5 candidates per [MASK], probabilities summing to at most 1.
    fills = re.findall(r"(\d+) candidates, probabilities summing to ([\d.]+)", output)
    assert len(fills) == 2
    assert all(int(k) == 5 and 0 < float(total) <= 1 for k, total in fills)
    # The classifier fine-tuned from the MLM run, evaluated on the validation
    # utterances: one row and column per category, every example counted once.
    with open(runs / "notebook_classifier" / "config.json") as f:
        assert json.load(f)["init_from"] == str(runs / "notebook_mlm")
    data = read_labelled(DataConfig(path="chatterbot:english"))
    with open(runs / "notebook_classifier" / "labels.json") as f:
        assert tuple(json.load(f)) == data.labels
    examples, accuracy, macro_f1 = re.search(
        r"examples (\d+)  accuracy ([\d.]+)  macro-F1 ([\d.]+)", output).groups()
    assert int(examples) == len(data.val)
    assert 0 <= float(macro_f1) <= 1
    matrix = _confusion_matrix(output)
    assert len(matrix) == len(data.labels) and all(len(row) == len(data.labels) for row in matrix)
    assert sum(map(sum, matrix)) == len(data.val)
    trace = sum(matrix[i][i] for i in range(len(matrix)))
    assert float(accuracy) == pytest.approx(trace / len(data.val), abs=1e-4)
    assert _has_image(notebook), "the confusion-matrix plot was not drawn inline"


def _check_evaluate(notebook, runs):
    with open(runs / "notebook_eval_chat" / "evaluation.json") as f:
        rows = {row["name"]: row for row in json.load(f)["metrics"]}
    for name in ("bleu", "chrf", "meteor", "rouge_1", "rouge_2", "rouge_l", "rouge_lsum"):
        low, high = rows[name]["ci"]  # every metric with its bootstrap interval
        assert low <= rows[name]["value"] <= high and rows[name]["ci_level"] == 0.95
        assert name + "_unseen" in rows
    with open(runs / "notebook_eval_classifier" / "evaluation.json") as f:
        groups = json.load(f)["groups"]
    assert groups["field"] == "source" and set(groups["per_group"]) == {"chat", "forum", "news"}
    assert groups["small_groups"] == ["forum"]  # 20 validation examples, under 30
    assert groups["gaps"]["accuracy"]["lowest"] == "chat"  # its labels are a third wrong
    page = (runs / "report.html").read_text(encoding="utf-8")
    assert '<table id="scores">' in page and page.count("data:image/png;base64,") == 4
    pictures = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    assert pictures == 5  # scores, training curves, attention, log-probabilities, group bars
