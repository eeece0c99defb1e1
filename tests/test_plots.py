"""Pictures of a run (issue 32, item 5): training curves from metrics.jsonl,
score distributions, per-group bars, attention maps and reply
log-probabilities as PNGs; the self-contained HTML report; the evaluate
command's --plots and --report; and that report in a real browser."""

import base64
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

from tfchat.data.tokenizer import CharTokenizer
from tfchat.evaluation import plots, report
from tfchat.model.gpt import GPT

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


def write_metrics(path, with_perplexity=True):
    """A run's metrics.jsonl: a training line every 5 steps, a validation
    line every 10, the keys the trainer writes."""
    lines = []
    for step in range(5, 45, 5):
        row = {"step": step, "loss": 3.0 / step, "accuracy": 0.5, "useful_fraction": 0.9,
               "lr": 1e-3 * step / 40, "tokens/s": 1000.0 + step, "useful_tokens/s": 900.0 + step}
        if with_perplexity:
            row["perplexity"] = float(np.exp(row["loss"]))
        lines.append(row)
        if step % 10 == 0:
            val = {"step": step, "val_loss": 3.5 / step}
            if with_perplexity:
                val["val_perplexity"] = float(np.exp(val["val_loss"]))
            lines.append(val)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def visible_axes(figure):
    return [ax for ax in figure.axes if ax.get_visible() and ax.get_title()]


def test_training_curves_from_metrics_jsonl(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.jsonl")
    out = tmp_path / "curves.png"
    figure = plots.training_curves(str(tmp_path), path=out)  # a run folder
    assert [ax.get_title() for ax in visible_axes(figure)] == [
        "loss", "perplexity", "learning rate", "tokens/s"]
    loss = visible_axes(figure)[0]
    train, val = loss.get_lines()
    assert list(train.get_xdata()) == list(range(5, 45, 5))
    assert list(val.get_xdata()) == [10, 20, 30, 40]
    np.testing.assert_allclose(val.get_ydata(), [3.5 / s for s in (10, 20, 30, 40)])
    assert is_png(out)
    assert figure._repr_png_().startswith(PNG)  # a notebook shows it inline

    # A run that logs no perplexity (dpo) gets the other panels.
    write_metrics(metrics, with_perplexity=False)
    titles = [ax.get_title() for ax in visible_axes(plots.training_curves(metrics))]
    assert titles == ["loss", "learning rate", "tokens/s"]
    assert plots.training_curves([]) is None


def test_score_distributions_per_example_or_intervals(tmp_path):
    results = {
        "bleu": 12.5, "step": 100,
        "metrics": [{"name": "bleu", "value": 12.5, "count": 4, "ci": [8.0, 15.0]},
                    {"name": "meteor", "value": 0.45, "count": 4, "ci": None}],
        "per_example": {"meteor": [0.1, 0.4, 0.5, 0.8]},
    }
    assert plots.per_example_scores(results) == {"meteor": [0.1, 0.4, 0.5, 0.8]}
    figure = plots.score_distributions(results, path=tmp_path / "scores.png")
    histogram, interval = visible_axes(figure)
    assert histogram.get_title().startswith("meteor (n=4")
    assert sum(p.get_height() for p in histogram.patches) == 4
    assert "bleu" in interval.get_title() and "[8, 15]" in interval.get_title()
    assert is_png(tmp_path / "scores.png")
    assert plots.score_distributions({"objective": "chat"}) is None


def test_group_bars_from_a_plain_dict_and_a_fairness_report(tmp_path):
    plain = {"a": {"accuracy": 0.9, "f1": 0.8}, "b": {"accuracy": 0.6, "f1": 0.5}}
    figure = plots.group_bars(plain, path=tmp_path / "groups.png")
    accuracy, f1 = visible_axes(figure)
    assert [round(b.get_height(), 6) for b in accuracy.patches] == [0.9, 0.6]
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["a", "b"]
    assert is_png(tmp_path / "groups.png")

    # As `tfchat.evaluation.fairness` reports them, under results["groups"].
    results = {"groups": {"field": "g", "small_groups": ["b"], "per_group": {
        "a": {"examples": 40, "small": False, "accuracy": 0.9, "per_class": {"x": 1.0}},
        "b": {"examples": 3, "small": True, "accuracy": 0.6}}}}
    table, small = plots.group_table(results)
    assert table == {"a": {"accuracy": 0.9}, "b": {"accuracy": 0.6}} and small == ("b",)
    (axis,) = visible_axes(plots.group_bars(results))
    assert [t.get_text() for t in axis.get_xticklabels()] == ["a", "b*"]
    assert axis.patches[1].get_hatch() == "//" and not axis.patches[0].get_hatch()
    # No groups: nothing drawn, nothing raised.
    assert plots.group_bars({"accuracy": 0.9}) is None
    assert plots.group_bars({}) is None


TEXT = "to be or not to be, that is the question.\n"


def tiny_model(block_size=32):
    keras.utils.set_random_seed(0)
    tokenizer = CharTokenizer.train([TEXT])
    gpt = GPT(vocabulary_size=tokenizer.vocabulary_size, num_layers=2, num_heads=2,
              hidden_dim=16, block_size=block_size, position="rope")
    gpt.build()
    return gpt, tokenizer


def test_inspect_prompt_maps_and_logprobs_are_the_models(tmp_path):
    gpt, tokenizer = tiny_model()
    look = plots.inspect_prompt(gpt, tokenizer, "to be", reply=" or not")
    assert look.tokens[: look.prompt_length] == ["t", "o", "␣", "b", "e"]
    assert look.reply_tokens == ["␣", "o", "r", "␣", "n", "o", "t"]
    assert len(look.maps) == 2 and look.maps[0].shape == (2, 12, 12)
    ids = np.array([look.ids], "int32")
    for got, expected in zip(look.maps, gpt.attention_maps(ids)):
        np.testing.assert_allclose(got, expected.numpy()[0], atol=1e-6)
    logits = gpt(ids).numpy()[0].astype("float64")
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = [log_softmax[t - 1, look.ids[t]] for t in range(5, 12)]
    np.testing.assert_allclose(look.logprobs, expected, atol=1e-5)

    figure = plots.attention_figure(look, path=tmp_path / "attention.png")
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [f"layer {layer} head {head}" for layer in (0, 1) for head in (0, 1)]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == look.tokens
    assert is_png(tmp_path / "attention.png")
    figure = plots.logprob_figure(look, path=tmp_path / "logprobs.png")
    np.testing.assert_allclose([b.get_height() for b in figure.axes[0].patches], expected,
                               atol=1e-5)
    assert is_png(tmp_path / "logprobs.png")

    # Greedy generation when no reply is given; a long one keeps the
    # context's end.
    generated = plots.inspect_prompt(gpt, tokenizer, "to be", max_new_tokens=40)
    assert len(generated.ids) == 32 and generated.maps[0].shape == (2, 32, 32)
    assert len(generated.logprobs) == 32 - generated.prompt_length


def test_attention_grid_keeps_evenly_spaced_layers_and_heads():
    maps = [np.full((1, 12, 4, 4), 0.25) for _ in range(10)]
    figure = plots.attention_figure((list("abcd"), maps), max_layers=3, max_heads=4)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [f"layer {layer} head {head}" for layer in (0, 4, 9)
                      for head in (0, 4, 7, 11)]


def fake_run(tmp_path, chats=False):
    """What write_plots reads of a loaded `tfchat.run.Run`, around an
    untrained model (no training in the quick loop)."""
    gpt, tokenizer = tiny_model()
    metrics = write_metrics(tmp_path / "metrics.jsonl")
    return types.SimpleNamespace(
        path=str(tmp_path), step=40, backbone=gpt, tokenizer=tokenizer,
        folder=types.SimpleNamespace(metrics=str(metrics)),
        objective=types.SimpleNamespace(generates=True, chats=chats),
        config=types.SimpleNamespace(objective="causal",
                                     train=types.SimpleNamespace(sample_prompt="to be")),
    )


RESULTS = {
    "objective": "causal", "step": 40, "checkpoint": "latest", "val_loss": 1.25,
    "metrics": [{"name": "val_loss", "value": 1.25, "count": 300, "ci": None},
                {"name": "meteor", "value": 0.4, "count": 3, "ci": [0.2, 0.6]}],
    "per_example": {"meteor": [0.2, 0.4, 0.6]},
    "examples": [{"prompt": "to be", "reference": " or not", "reply": "<b>oops</b>"}],
}


def test_pictures_and_self_contained_report(tmp_path):
    run = fake_run(tmp_path)
    lines = report.pictures(run, RESULTS, plots_dir=str(tmp_path / "plots"),
                            report_path=str(tmp_path / "report.html"), prompt="not to")
    names = sorted(os.listdir(tmp_path / "plots"))
    # No "groups" in the results: that picture is skipped, not an error.
    assert names == ["attention.png", "logprobs.png", "scores.png", "training_curves.png"]
    assert all(is_png(tmp_path / "plots" / n) for n in names)
    assert "Wrote 4 pictures" in lines and "report.html" in lines
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == 4
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG)
    # Nothing fetched from elsewhere; the scores as a table; text escaped.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert '<table id="scores">' in page and "<td>meteor</td>" in page
    assert "[0.2, 0.6]" in page
    assert "&lt;b&gt;oops&lt;/b&gt;" in page and "<b>oops</b>" not in page

    # A report alone: the pictures go through a temporary folder.
    report.pictures(run, {**RESULTS, "groups": {"a": {"meteor": 0.5}, "b": {"meteor": 0.3}}},
                    report_path=str(tmp_path / "only.html"))
    only = (tmp_path / "only.html").read_text(encoding="utf-8")
    assert only.count("data:image/png;base64,") == 5 and '<table id="groups">' in only


def test_evaluate_parses_the_picture_flags():
    from tfchat.evaluate import build_parser

    args = build_parser().parse_args(["--run", "runs/x", "--plots", "p", "--report", "r.html",
                                      "--attention-prompt", "Hi there"])
    assert (args.plots, args.report, args.attention_prompt) == ("p", "r.html", "Hi there")
    args = build_parser().parse_args(["--run", "runs/x"])
    assert (args.plots, args.report, args.attention_prompt) == (None, None, None)


# --- the command on a trained chat run, and its report in a browser ---

@pytest.fixture(scope="module")
def evaluated_report(chat_run, tmp_path_factory):
    """`python -m tfchat.evaluate --plots --report` on the session's chat
    run, in a subprocess as a user runs it; a copy of the run, so the shared
    one keeps its evaluation.json."""
    import shutil

    root = tmp_path_factory.mktemp("evaluated")
    run = shutil.copytree(chat_run, root / "chat")
    out = subprocess.run(
        [sys.executable, "-m", "tfchat.evaluate", "--run", str(run), "--limit", "3",
         "--max-new-tokens", "16", "--no-xla", "--plots", str(root / "plots"),
         "--report", str(root / "report.html"), "--attention-prompt", "ping"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return root, out.stdout


@pytest.mark.slow  # trains the session's chat run, then evaluates it
def test_evaluate_writes_pictures_and_report(evaluated_report):
    root, stdout = evaluated_report
    names = sorted(os.listdir(root / "plots"))
    assert names == ["attention.png", "logprobs.png", "scores.png", "training_curves.png"]
    assert f"Wrote {root / 'report.html'}" in stdout
    page = (root / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 4
    for metric in ("bleu", "rouge_l", "chrf", "val_loss"):
        assert f"<td>{metric}</td>" in page


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.mark.slow  # a real browser, after the run above
def test_report_opens_in_a_browser(evaluated_report, tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By

    root, _ = evaluated_report
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,2400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        driver.get(pathlib.Path(root / "report.html").as_uri())
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 4
        for image in images:
            assert driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        rows = driver.find_elements(By.CSS_SELECTOR, "#scores tbody tr")
        assert len(rows) >= 4
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        artifacts = os.environ.get("TFCHAT_TEST_ARTIFACTS")
        if artifacts:
            os.makedirs(artifacts, exist_ok=True)
            driver.save_screenshot(os.path.join(artifacts, "evaluation_report.png"))
    finally:
        driver.quit()
    assert is_png(shot) and shot.stat().st_size > 10_000


def test_a_classify_runs_results_have_no_examples_to_plot():
    from tfchat.evaluation import plots

    from tfchat.evaluation import report

    # A classify run's "examples" is how many it scored, not records.
    results = {"examples": 60, "accuracy": 0.9}
    assert plots.per_example_scores(results) == {}
    assert "accuracy" in report.report_html(results)
