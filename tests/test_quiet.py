"""The commands start quietly: none of TensorFlow's start-up notices (oneDNN,
CUDA, absl, SentencePiece) unless asked for with --verbose or the user's own
TF_CPP_MIN_LOG_LEVEL; and the stderr filter behind it drops only those lines.

The subprocesses here run without TF_CPP_MIN_LOG_LEVEL (conftest.py and the
other tests' environments set it to 3), as a new user's shell would."""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import CHAT_TINY, nest, write_chat_jsonl
from tfchat import config as config_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# What TensorFlow, absl and SentencePiece print on a CPU machine at start-up.
NOTICES = ("cuInit", "oneDNN", "absl", "normalizer.cc", "E0000", "W0000", "I0000")


def user_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


def run_command(args, timeout=300, **env):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=str(REPO_ROOT), env=user_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
    )


def notices_in(stderr):
    return [line for line in stderr.splitlines() if any(n in line for n in NOTICES)]


@pytest.fixture(scope="module")
def bpe_chat_run(tmp_path_factory):
    """A BPE chat run (its tokenizer logs SentencePiece's normalizer notice
    when loaded); a few steps, since only what is printed matters here."""
    from tfchat.job import train

    root = tmp_path_factory.mktemp("bpe_chat")
    settings = {
        **CHAT_TINY, "name": "bpe", "runs_dir": str(root / "runs"),
        "data.path": write_chat_jsonl(root / "chats.jsonl"),
        "tokenizer.kind": "bpe", "tokenizer.vocab_size": 300,
        "train.max_steps": 4, "train.warmup_steps": 1, "train.eval_interval": 4,
    }
    train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    return str(root / "runs" / "bpe")


def test_fit_help_is_quiet_and_documents_verbose():
    result = run_command(["tfchat.fit", "--help"])
    assert result.returncode == 0, result.stderr
    assert notices_in(result.stderr) == [], result.stderr
    assert "--verbose" in result.stdout and "TF_CPP_MIN_LOG_LEVEL" in result.stdout


def test_one_shot_chat_prints_the_reply_and_nothing_else(chat_run):
    result = run_command(["tfchat.chat", "--run", chat_run, "--temperature", "0", "ping"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pong\n"
    assert notices_in(result.stderr) == [], result.stderr


def test_verbose_shows_the_notices_again(chat_run):
    result = run_command(["tfchat.chat", "--run", chat_run, "--temperature", "0", "--verbose",
                          "ping"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pong\n"
    # On a CPU-only machine: the oneDNN notice and the failed cuInit at least.
    assert notices_in(result.stderr), result.stderr


@pytest.mark.slow
def test_sentencepiece_notice_is_hidden_unless_the_users_level_shows_it(bpe_chat_run):
    args = ["tfchat.chat", "--run", bpe_chat_run, "--max-new-tokens", "4", "--seed", "1", "ping"]
    quiet = run_command(args)
    assert quiet.returncode == 0, quiet.stderr
    assert notices_in(quiet.stderr) == [], quiet.stderr

    # The user's TF_CPP_MIN_LOG_LEVEL is used as is: 0 shows everything.
    shown = run_command(args, TF_CPP_MIN_LOG_LEVEL="0")
    assert shown.returncode == 0, shown.stderr
    assert "normalizer.cc" in shown.stderr
    assert "oneDNN" in shown.stderr or "cuInit" in shown.stderr
    assert quiet.stdout == shown.stdout


FILTERED = r"""
import os, sys
from tfchat import quiet
quiet.command_startup("__main__")
print("before", file=sys.stderr, flush=True)
with quiet.muted_notices():
    os.write(2, b"I0000 00:00:1796156126.114740    5849 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"a real error\n")
    print("a Python warning", file=sys.stderr)
    os.write(2, b"normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty. use identity normalization.\n")
    if sys.argv[1] == "abort":
        os.write(2, b"F0000 a fatal check\n")
        os.abort()
print("after", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("end", ["normal", "abort"])
def test_the_filter_drops_only_the_notices_and_survives_a_crash(end):
    # No TensorFlow here: the filter itself, as the commands run it.
    result = subprocess.run(
        [sys.executable, "-c", FILTERED, end], env=user_env(), cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60,
    )
    if end == "normal":
        assert result.returncode == 0, result.stderr
        assert result.stderr == "before\na real error\na Python warning\nafter\n"
    else:
        # What was written before the abort still comes through.
        assert result.returncode != 0
        assert result.stderr == "before\na real error\na Python warning\nF0000 a fatal check\n"


def test_importing_the_library_changes_nothing():
    code = ("import os, sys, tfchat.chat, tfchat.quiet as q; "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), q._hidden, "
            "any(type(f).__name__ == '_QuietTensorFlowImport' for f in sys.meta_path))")
    result = subprocess.run([sys.executable, "-c", code], env=user_env(), cwd=str(REPO_ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None", "False"]


def test_verbose_is_a_flag_not_a_config_key():
    # fit treats unknown options as mistyped config keys; --verbose is not one.
    from tfchat import fit

    args, unknown = fit.build_parser().parse_known_args(["--verbose"])
    assert unknown == [] and args.verbose
