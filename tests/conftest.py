"""Shared fixtures: tiny configs over small corpora written into `tmp_path`."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfchat import config as config_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The shared copy of tiny-shakespeare; never copied into the repository.
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# A small, very repetitive corpus: a tiny model learns it in a few dozen steps.
REPETITIVE_TEXT = "the quick brown fox jumps over the lazy dog.\n" * 120

# Every setting a test depends on is given here, so changes to the package
# defaults never change what a test exercises. The same dict serves
# `--key value` command lines (`as_cli_args`).
TINY = {
    "tokenizer.kind": "char",
    "tokenizer.vocab_size": 1000,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.hidden_dim": 32,
    "model.intermediate_dim": 0,
    "model.block_size": 16,
    "model.dropout": 0.0,
    "train.batch_size": 8,
    "train.max_steps": 20,
    "train.learning_rate": 3e-3,
    "train.min_learning_rate": 3e-4,
    "train.warmup_steps": 2,
    "train.weight_decay": 0.1,
    "train.grad_clip": 1.0,
    "train.seed": 1234,
    "train.shuffle_buffer": 256,
    "train.log_interval": 5,
    "train.eval_interval": 10,
    "train.eval_batches": 2,
    "train.keep_checkpoints": 3,
    "train.jit_compile": False,
    "train.sample_tokens": 0,
    "train.strategy": "default",
    "train.precision": "float32",
    "train.grad_accumulation_steps": 1,
    "train.on_nonfinite": "stop",
    "train.deterministic": False,
    "data.encoding_errors": "strict",
    "data.format": "auto",
    "data.text_field": "text",
    "data.val_fraction": 0.1,
    "data.packing": True,
}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the project's sources (not in place, so
    the checkout gets no build folder), without build isolation: no network.
    Built once per session (test_packaging.py, test_readme.py)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "tfchat", source / "tfchat",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = (work / "dist").glob("tfchat-*.whl")
    return path


def nest(flat):
    """{"model.num_layers": 2} -> {"model": {"num_layers": 2}}."""
    nested = {}
    for key, value in flat.items():
        section = nested
        *parents, leaf = key.split(".")
        for p in parents:
            section = section.setdefault(p, {})
        section[leaf] = value
    return nested


def as_cli_args(flat):
    """{"model.num_layers": 2} -> ["--model.num_layers", "2"]."""
    args = []
    for key, value in flat.items():
        args += [f"--{key}", str(value)]
    return args


def write_text(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return write_text(path, "\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def shakespeare_path():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"tiny-shakespeare not found at {SHAKESPEARE}")
    return str(SHAKESPEARE)


@pytest.fixture
def tiny_settings(tmp_path):
    """The flat TINY settings for a run in tmp_path over a repetitive corpus."""
    data = write_text(tmp_path / "corpus.txt", REPETITIVE_TEXT)
    return {
        **TINY,
        "name": "tiny",
        "runs_dir": str(tmp_path / "runs"),
        "data.path": data,
    }


@pytest.fixture
def make_config(tiny_settings):
    """Builds a validated tiny `Config`; dotted keyword-dict overrides win.

    `make_config({"train.max_steps": 40, "name": "other"})`
    """

    def make(overrides=None):
        flat = {**tiny_settings, **(overrides or {})}
        return config_lib.build_config(overrides=nest(flat))

    return make


def pytest_configure(config):
    # Keras converting TF tensors with NumPy 2; not tfchat's to fix.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    )
# A dialogue corpus a tiny model memorises in a few dozen steps: each
# question has one answer, and validation conversations repeat training ones.
CHAT_PAIRS = [
    ("ping", "pong"),
    ("how are you?", "i am fine, thank you."),
    ("what is your name?", "my name is tiny bot."),
]


def write_chat_jsonl(path, repeats=20, system=None):
    records = []
    for _ in range(repeats):
        for question, answer in CHAT_PAIRS:
            messages = [{"role": "system", "content": system}] if system else []
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]
            records.append({"messages": messages})
    return write_jsonl(path, records)


CHAT_TINY = {
    **TINY,
    "objective": "chat",
    "model.block_size": 48,
    "train.max_steps": 100,
    "train.learning_rate": 1e-2,
    "train.min_learning_rate": 1e-3,
    "train.warmup_steps": 5,
    "train.eval_interval": 100,
    "train.log_interval": 50,
}


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory):
    """A tiny chat run trained once per session on CHAT_PAIRS; returns its
    folder. Tests must not change it."""
    from tfchat.job import train

    root = tmp_path_factory.mktemp("chat_run")
    settings = {
        **CHAT_TINY,
        "name": "chat",
        "runs_dir": str(root / "runs"),
        "data.path": write_chat_jsonl(root / "chats.jsonl"),
    }
    train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    return str(root / "runs" / "chat")


# --- encoder runs (objectives mlm and classify), shared by the encoder and
# export tests ---

ANIMALS = ["the cat sat on the mat .", "the dog ran to the park .", "a bird flew over the sea ."]
PEOPLE = ["my friend reads a good book .", "her brother plays the old piano .",
          "our teacher writes on the board ."]
LONG = " ".join(ANIMALS * 2)  # longer than a block: truncated

ENCODER = {
    **TINY,
    "tokenizer.kind": "wordpiece",
    "tokenizer.vocab_size": 120,
    "train.batch_size": 16,
    "train.learning_rate": 5e-3,
    "train.min_learning_rate": 5e-4,
    "train.eval_interval": 50,
    "train.log_interval": 25,
}


@pytest.fixture(scope="session")
def encoder_root(tmp_path_factory):
    return tmp_path_factory.mktemp("encoder")


def encoder_settings(root, **overrides):
    return {**ENCODER, "runs_dir": str(root / "runs"), **overrides}


@pytest.fixture(scope="session")
def mlm_run(encoder_root):
    """An MLM run overfit to six sentences, trained once per session through
    the CLI; returns its folder. Tests must not change it."""
    from tfchat import fit

    data = write_jsonl(encoder_root / "sentences.jsonl",
                       [{"text": s} for s in (ANIMALS + PEOPLE) * 20])
    args = as_cli_args(encoder_settings(encoder_root, name="mlm", objective="mlm", **{
        "data.path": data, "train.max_steps": 150, "mlm.mask_rate": 0.3}))
    assert fit.main(args) == 0
    return os.path.join(encoder_root, "runs", "mlm")


@pytest.fixture(scope="session")
def labelled(encoder_root):
    records = [{"text": LONG, "label": "animal"}]
    records += [{"text": s, "label": "animal"} for s in ANIMALS] * 5
    records += [{"text": s, "label": "person"} for s in PEOPLE] * 5
    records.sort(key=lambda r: r["text"] == LONG, reverse=True)  # the long one first
    return write_jsonl(encoder_root / "labelled.jsonl", records)


def classify_config(root, mlm_run, labelled, **overrides):
    flat = {"name": "clf", "objective": "classify", "init_from": mlm_run, "data.path": labelled,
            "train.max_steps": 60, "train.eval_interval": 20, "train.learning_rate": 3e-3}
    return config_lib.build_config(overrides=nest(encoder_settings(root, **{**flat, **overrides})))


@pytest.fixture(scope="session")
def clf_run(encoder_root, mlm_run, labelled):
    """A classify run from the MLM run, trained once per session: (config,
    history, its log). Tests must not change it."""
    import contextlib
    import io

    from tfchat import job

    config = classify_config(encoder_root, mlm_run, labelled)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        history = job.train(config, verbose=1)
    return config, history, log.getvalue()
