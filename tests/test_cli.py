import os
import subprocess
import sys

import numpy as np
import pytest

from tfchat import fit, generate
from tfchat.run import load_run

from conftest import REPETITIVE_TEXT, TINY, as_cli_args, write_jsonl, write_text


def run_module(module, args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300,
    )


def assert_one_line_error(stderr, *fragments):
    """The last stderr line is the only `error: ...` line, with no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]], stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def tiny_args(tmp_path, name="tiny", **overrides):
    flat = {**TINY, "name": name, "runs_dir": str(tmp_path / "runs"),
            "data.path": str(tmp_path / "corpus.txt"), **overrides}
    return as_cli_args(flat)


@pytest.mark.slow
def test_fit_then_generate(tmp_path):
    write_text(tmp_path / "corpus.txt", REPETITIVE_TEXT)
    args = as_cli_args({**TINY, "name": "cli", "data.path": "corpus.txt",
                        "train.max_steps": 10, "train.eval_interval": 10})
    result = run_module("tfchat.fit", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "python -m tfchat.generate --run runs/cli" in result.stdout
    assert os.path.isfile(tmp_path / "runs" / "cli" / "config.json")

    # Two prompts in a batch; top-k above the char vocabulary is fine.
    result = run_module("tfchat.generate", [
        "--run", "runs/cli", "--prompt", "the quick", "--prompt", "lazy\\n",
        "--max-new-tokens", "12", "--temperature", "0.8", "--top-k", "100", "--seed", "1",
    ], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("-" * 40 + "\n")[:2]
    assert first.startswith("the quick") and len(first.rstrip("\n")) > len("the quick")
    assert second.startswith("lazy\n") and len(second) > len("lazy\n")


def test_fit_help():
    result = run_module("tfchat.fit", ["--help"], cwd=os.getcwd())
    assert result.returncode == 0
    for key in ("--model.num_layers", "--train.learning_rate", "--data.path",
                "--tokenizer.kind", "--config", "--resume"):
        assert key in result.stdout


def test_unknown_option_subprocess(tmp_path):
    result = run_module("tfchat.fit", ["--model.nope", "3"], cwd=tmp_path)
    assert result.returncode == 1
    message = assert_one_line_error(result.stderr, "'--model.nope'", "model.num_layers")
    assert message.count("\n") == 0


@pytest.mark.slow
def test_missing_data_subprocess(tmp_path):
    result = run_module("tfchat.fit", tiny_args(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "Data path not found", "corpus.txt")


def bad_corpus(tmp_path, kind):
    """Writes a broken corpus; returns (extra settings, expected fragments)."""
    if kind == "missing":
        return {}, ["Data path not found", str(tmp_path / "corpus.txt")]
    if kind == "empty":
        write_text(tmp_path / "corpus.txt", "")
        return {}, ["empty"]
    if kind == "not-utf8":
        (tmp_path / "corpus.txt").write_bytes(b"good text\n" * 3 + b"\xff\xfe bad")
        return {}, ["not UTF-8", "offset 30"]
    if kind == "bad-json":
        path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a" * 50}, "{'text': 'single quotes'}"])
        return {"data.path": path}, [f"{path} line 2", "not valid JSON"]
    if kind == "missing-field":
        path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a" * 50}, {"body": "b" * 50}])
        return {"data.path": path}, [f"{path} line 2", "'text'"]
    if kind == "block-too-big":
        write_text(tmp_path / "corpus.txt", "tiny corpus\n" * 8)
        return {"model.block_size": 128}, ["train split", "model.block_size + 1 = 129"]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "not-utf8", "bad-json", "missing-field", "block-too-big"]
)
def test_bad_data_is_a_one_line_error(tmp_path, capsys, kind):
    settings, fragments = bad_corpus(tmp_path, kind)
    assert fit.main(tiny_args(tmp_path, **settings)) == 1
    out, err = capsys.readouterr()
    assert_one_line_error(err, *fragments)
    assert "Done" not in out


@pytest.mark.parametrize("extra,fragment", [
    (["--train.precision", "float64"], "train.precision must be one of float32, mixed_float16"),
    (["--train.strategy", "tpu"], "train.strategy must be one of auto, default, mirrored"),
    (["--objective", "mlm"], "objective mlm needs tokenizer.kind wordpiece"),
    (["--objective", "chat", "--tokenizer.kind", "wordpiece"], "objective chat needs tokenizer.kind char or bpe"),
    (["--objective", "gpt"], "Unknown objective 'gpt'"),
    (["--init_from", "nowhere"], "No tfchat run at nowhere"),
])
def test_bad_setting_fails_before_a_run_folder_exists(tmp_path, capsys, extra, fragment):
    """Settings checked only once the model was built used to leave a run
    folder (tokenizer, config.json) that then needed --overwrite."""
    write_text(tmp_path / "corpus.txt", REPETITIVE_TEXT)
    assert fit.main(tiny_args(tmp_path) + extra) == 1
    assert_one_line_error(capsys.readouterr().err, fragment)
    assert not os.path.exists(tmp_path / "runs")


def test_bad_config_is_a_one_line_error(tmp_path, capsys):
    write_text(tmp_path / "corpus.txt", REPETITIVE_TEXT)
    bad_yaml = write_text(tmp_path / "bad.yaml", "model:\n  num_layers: 2\n  nope: 3\n")
    cases = [
        (["--config", bad_yaml], ["'model.nope'", "num_heads"]),
        (["--model.nope", "3"], ["'--model.nope'", "model.num_layers"]),
        (["--model.num_layers", "abc"], ["model.num_layers", "int", "'abc'"]),
        (["--model.hidden_dim", "30", "--model.num_heads", "4"], ["divisible"]),
        (["--config", str(tmp_path / "absent.yaml")], ["not found"]),
        (["--resume", "--name", "never_ran"], ["No tfchat run"]),
    ]
    for extra, fragments in cases:
        assert fit.main(tiny_args(tmp_path) + extra) == 1, extra
        assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not os.path.exists(tmp_path / "runs")


def test_generate_without_a_run(tmp_path, capsys):
    assert generate.main(["--run", str(tmp_path / "nothing")]) == 1
    assert_one_line_error(capsys.readouterr().err, "No tfchat run")


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, capsys):
    write_text(tmp_path / "corpus.txt", REPETITIVE_TEXT)
    args = tiny_args(tmp_path, name="nan", **{"train.max_steps": 10, "train.eval_interval": 10})
    assert fit.main(args) == 0
    capsys.readouterr()
    run_dir = str(tmp_path / "runs" / "nan")
    good = load_run(run_dir)
    assert good.step == 10
    good_weights = good.model.get_weights()

    # Resume with an absurd learning rate: Adam's first step moves every
    # weight by ~1e30, and the next forward pass overflows.
    resume = ["--name", "nan", "--runs_dir", str(tmp_path / "runs"), "--resume",
              "--train.max_steps", "20", "--train.learning_rate", "1e30"]
    assert fit.main(resume) == 1
    message = assert_one_line_error(capsys.readouterr().err, "training stopped", "ckpt-10")
    assert "nan" in message or "inf" in message

    # The last good checkpoint still loads, unchanged.
    run = load_run(run_dir)
    assert run.step == 10
    for before, after in zip(good_weights, run.model.get_weights()):
        assert np.all(np.isfinite(after))
        np.testing.assert_array_equal(before, after)
