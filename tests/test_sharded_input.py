"""Input at scale: each worker reads only its share of the training data
(`tfchat.data.sharding`), and `python -m tfchat.prepare` tokenizes a corpus
once into shards that training reads back (`tfchat.data.prepared`)."""

import collections
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import SHAKESPEARE, as_cli_args, nest, write_chat_jsonl, write_jsonl
from tfchat import config as config_lib
from tfchat.data import prepared
from tfchat.data.corpus import Corpus
from tfchat.data.sharding import InputShard
from tfchat.data.tokenizer import CharTokenizer, load_tokenizer
from tfchat.errors import TfchatError
from tfchat.job import train
from tfchat.objectives import causal, chat
from tfchat.objectives.base import read_corpus
from test_distribute import ENV, _checkpoint_values, _free_ports

# 60 KB of tiny-shakespeare: every worker's share holds other lines, so
# the sharded runs see other batches than the single worker does.
SHAKESPEARE_HEAD = SHAKESPEARE.read_text(encoding="utf-8")[:60_000]


def _config(path, **overrides):
    flat = {"data.path": str(path), "data.val_fraction": 0.1, "model.block_size": 16,
            "tokenizer.kind": "char",
            "train.batch_size": 8, "train.shuffle_buffer": 64, "train.seed": 3, **overrides}
    return config_lib.build_config(overrides=nest(flat))


def _prepare(source, out, shard_tokens, tokenizer=None, **data):
    config = _config(source, **data)
    corpus = Corpus(config.data)
    tokenizer = tokenizer or CharTokenizer.train(corpus.iter_texts("train"))
    prepared.prepare(corpus, tokenizer, config.tokenizer, str(out), shard_tokens, verbose=0)
    return tokenizer


def _documents(n=90):
    return [{"text": f"document {i}: " + "lorem ipsum " * (i % 7 + 1)} for i in range(n)]


@pytest.fixture
def corpora(tmp_path):
    """{name: data.path}: one text file, four text files, JSONL documents,
    and prepared folders of the text and of the documents."""
    text = tmp_path / "one.txt"
    text.write_text(SHAKESPEARE_HEAD, encoding="utf-8")
    folder = tmp_path / "four"
    folder.mkdir()
    for i in range(4):
        (folder / f"part{i}.txt").write_text(SHAKESPEARE_HEAD[i * 9000:(i + 1) * 9000],
                                             encoding="utf-8")
    docs = write_jsonl(tmp_path / "docs.jsonl", _documents())
    _prepare(text, tmp_path / "prepared_text", shard_tokens=5_000)
    _prepare(docs, tmp_path / "prepared_docs", shard_tokens=10**9)  # one shard
    return {"one text file": str(text), "four text files": str(folder), "documents": docs,
            "prepared text": str(tmp_path / "prepared_text"),
            "prepared documents": str(tmp_path / "prepared_docs")}


def _elements(corpus, shard):
    """The training split's elements one worker reads: strings, or id
    sequences of a prepared folder."""
    if getattr(corpus, "is_prepared", False):
        return [tuple(ids.numpy()) for ids in corpus.id_sequences("train", shard)]
    return [t.numpy() for t in corpus.texts("train", shard)]


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("name", ["one text file", "four text files", "documents",
                                  "prepared text", "prepared documents"])
def test_worker_shares_are_one_epoch(corpora, name, workers):
    corpus = read_corpus(_config(corpora[name]))
    whole = _elements(corpus, InputShard())
    shares = [_elements(corpus, InputShard(workers, i)) for i in range(workers)]
    # Together exactly the epoch: every element once, none twice.
    assert collections.Counter(itertools.chain(*shares)) == collections.Counter(whole)
    # Each worker reads 1/W of the elements (whole files or runs of lines
    # make the shares a little uneven).
    counts = [len(s) for s in shares]
    slack = 0.25 if name == "four text files" else 0.1
    for count in counts:
        assert abs(count - len(whole) / workers) <= slack * len(whole) / workers + 1, counts


def test_chat_shares_are_one_epoch(tmp_path):
    config = _config(write_chat_jsonl(tmp_path / "chats.jsonl"), **{"data.val_fraction": 0.25})
    corpus = chat.read_data(config)
    tokenizer = CharTokenizer.train(chat.training_texts(corpus))
    whole = chat.encode(config, corpus.conversations("train"), tokenizer)[0]
    shares = [chat.encode(config, InputShard(2, i).rows(corpus.conversations("train")),
                          tokenizer)[0] for i in range(2)]
    assert sorted(e.ids for s in shares for e in s) == sorted(e.ids for e in whole)
    assert abs(len(shares[0]) - len(shares[1])) <= 2
    # Each worker batches its part of the global batch.
    ds = chat.datasets(config, corpus, tokenizer, splits=["train"], shard=InputShard(2, 1))
    x, _, _ = next(iter(ds["train"]))
    assert x["token_ids"].shape[0] == config.train.batch_size // 2


@pytest.mark.parametrize("name", ["prepared text", "prepared documents"])
def test_prepared_batches_equal_tokenizing_on_the_fly(corpora, tmp_path, name):
    source = corpora["one text file" if name == "prepared text" else "documents"]
    tokenizer = load_tokenizer(os.path.join(corpora[name], prepared.TOKENIZER_DIR))
    on_the_fly = causal.datasets(_config(source), read_corpus(_config(source)), tokenizer)
    from_tokens = causal.datasets(_config(corpora[name]), read_corpus(_config(corpora[name])),
                                  tokenizer)
    for split in ("train", "val"):
        pairs = zip(itertools.islice(on_the_fly[split], 60),
                    itertools.islice(from_tokens[split], 60))
        n = 0
        for a, b in pairs:
            tf.nest.map_structure(lambda u, v: np.testing.assert_array_equal(u, v), a, b)
            n += 1
        assert n > 1


def test_prepare_resumes_after_interruption(tmp_path, monkeypatch):
    text = tmp_path / "one.txt"
    text.write_text(SHAKESPEARE_HEAD, encoding="utf-8")
    tokenizer = _prepare(text, tmp_path / "reference", shard_tokens=8_000)

    real = prepared.tokenize_batches

    def interrupted(*args, **kwargs):
        # Dies after 3 tokenize batches (256 lines each) of the training
        # split: a shard of 8,000 tokens is finished, the next one is not.
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(prepared, "tokenize_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(text, tmp_path / "out", shard_tokens=8_000, tokenizer=tokenizer)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    done = len(index["splits"]["train"]["shards"])
    assert not index["complete"] and done >= 1
    assert len(os.listdir(tmp_path / "out" / "train")) == done + 1  # and a .partial
    with pytest.raises(TfchatError, match="not fully prepared"):
        read_corpus(_config(tmp_path / "out"))

    monkeypatch.setattr(prepared, "tokenize_batches", real)
    _prepare(text, tmp_path / "out", shard_tokens=8_000, tokenizer=tokenizer)
    # The same shards, byte for byte, as one uninterrupted call.
    for split in ("train", "val"):
        names = sorted(os.listdir(tmp_path / "reference" / split))
        assert names and names == sorted(os.listdir(tmp_path / "out" / split))
        for file in names:
            assert ((tmp_path / "reference" / split / file).read_bytes()
                    == (tmp_path / "out" / split / file).read_bytes())
    ref = json.loads((tmp_path / "reference" / "index.json").read_text())
    out = json.loads((tmp_path / "out" / "index.json").read_text())
    assert out == {**ref, "source": out["source"]}
    assert out["splits"]["train"]["tokens"] + out["splits"]["val"]["tokens"] == len(
        SHAKESPEARE_HEAD)


def test_prepared_memory_does_not_hold_the_corpus(tmp_path):
    """Shards are written as the corpus streams: a shard's tokens never sit
    in one array (the index records every shard, no matter how many)."""
    text = tmp_path / "one.txt"
    text.write_text(SHAKESPEARE_HEAD, encoding="utf-8")
    _prepare(text, tmp_path / "out", shard_tokens=1_000)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    shards = index["splits"]["train"]["shards"]
    assert len(shards) >= 5
    # Each shard ends at the first tokenize batch past 1,000 tokens.
    assert all(s["tokens"] >= 1_000 for s in shards[:-1])


@pytest.mark.slow
def test_tokenizer_mismatch_is_an_error(corpora, tmp_path):
    settings = {"name": "p", "runs_dir": str(tmp_path / "runs"), "train.max_steps": 4,
                "train.eval_interval": 4, "train.warmup_steps": 1, "model.num_layers": 1,
                "model.hidden_dim": 16, "tokenizer.kind": "char",
                "data.path": corpora["prepared text"]}
    config = config_lib.build_config(overrides=nest(settings))
    train(config, verbose=0)  # the folder's own tokenizer
    with pytest.raises(TfchatError, match="tokenizer.kind is 'bpe' but .* prepared with 'char'"):
        train(config_lib.build_config(overrides=nest({**settings, "tokenizer.kind": "bpe",
                                                      "name": "q"})), verbose=0)
    # Another corpus prepared with another tokenizer cannot feed run p.
    other = tmp_path / "other.txt"
    other.write_text("zzz yyy xxx\n" * 400, encoding="utf-8")
    _prepare(other, tmp_path / "other_prepared", shard_tokens=10**9)
    resumed = {**settings, "data.path": str(tmp_path / "other_prepared"), "train.max_steps": 8}
    with pytest.raises(TfchatError, match="not the one .* was prepared with"):
        train(config_lib.build_config(overrides=nest(resumed)), resume=True, verbose=0)
    with pytest.raises(TfchatError, match="init_from .* is not the one"):
        train(config_lib.build_config(overrides=nest({
            **resumed, "name": "r", "init_from": os.path.join(settings["runs_dir"], "p")})),
            verbose=0)


@pytest.mark.slow
def test_prepare_command(tmp_path):
    text = tmp_path / "one.txt"
    text.write_text(SHAKESPEARE_HEAD[:20_000], encoding="utf-8")
    out = tmp_path / "tokens"
    proc = subprocess.run(
        [sys.executable, "-m", "tfchat.prepare", "--data.path", str(text), "--tokenizer.kind",
         "char", "--out", str(out), "--shard-tokens", "4000"],
        capture_output=True, text=True, env=ENV, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Prepared" in proc.stdout and "--data.path" in proc.stdout
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and len(index["splits"]["train"]["shards"]) == 3
    bad = subprocess.run([sys.executable, "-m", "tfchat.prepare", "--data.path", str(out),
                          "--out", str(tmp_path / "again")],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert bad.returncode == 1 and "prepared already" in bad.stderr


# --- several worker processes on 127.0.0.1 ---

def _start_workers(args, workers):
    ports = _free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tfchat.fit", *args, "--train.strategy", "multi_worker"],
            env={**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                 "task": {"type": "worker", "index": i}})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(workers)
    ]


def _finish(procs, timeout=400):
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return outputs


def _losses(run_dir):
    """{step: training loss} from metrics.jsonl (a resumed run's lines win)."""
    losses = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8"):
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def _worker_settings(tmp_path, data, name):
    return {"tokenizer.kind": "char", "model.num_layers": 2, "model.num_heads": 2,
            "model.hidden_dim": 32, "model.block_size": 32, "model.dropout": 0.1,
            "train.batch_size": 16, "train.max_steps": 40, "train.learning_rate": 3e-3,
            "train.warmup_steps": 2, "train.log_interval": 5, "train.eval_interval": 10,
            "train.eval_batches": 2, "train.keep_checkpoints": 5, "train.sample_tokens": 0,
            "train.jit_compile": False, "train.shuffle_buffer": 256, "train.seed": 5,
            "data.path": data, "name": name, "runs_dir": str(tmp_path / "runs")}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
def test_workers_share_the_input_and_follow_one_worker(tmp_path, corpora, workers):
    """W worker processes, each on its share, follow the loss curve of one
    worker reading everything at the same global batch; with 2, killing one
    worker mid-run and resuming all continues on the uninterrupted curve."""
    data = corpora["one text file" if workers == 2 else "prepared text"]
    single = _worker_settings(tmp_path, data, "single")
    history = train(config_lib.build_config(overrides=nest(single)), verbose=0)
    one = {h["step"]: h["loss"] for h in history}

    settings = _worker_settings(tmp_path, data, "workers")
    _finish(_start_workers(as_cli_args(settings), workers))
    run_dir = os.path.join(settings["runs_dir"], "workers")
    many = _losses(run_dir)
    assert sorted(many) == sorted(one) == list(range(5, 41, 5))
    # Other batches, the same curve: within 3% at every log, and learning.
    np.testing.assert_allclose([many[s] for s in sorted(many)], [one[s] for s in sorted(one)],
                               rtol=0.03)
    assert many[40] < 0.85 * many[5]
    # Every worker holds the same weights and took part in each checkpoint.
    chief = _checkpoint_values(os.path.join(run_dir, "checkpoints", "ckpt-40"))
    for i in range(1, workers):
        other = _checkpoint_values(os.path.join(run_dir, "workers", f"worker_{i}", "ckpt-40"))
        for name in chief:
            np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    if workers != 2:
        return

    # Kill worker 1 once its step-20 checkpoint is recorded (it may be in
    # the middle of writing a later one); the others stall on the lost
    # collective and are stopped too.
    killed = _worker_settings(tmp_path, data, "killed")
    killed_dir = os.path.join(killed["runs_dir"], "killed")
    procs = _start_workers(as_cli_args(killed), 2)
    state = os.path.join(killed_dir, "workers", "worker_1", "checkpoint")
    deadline = time.time() + 300

    def recorded():
        try:
            with open(state) as f:
                return '"ckpt-20"' in f.read()
        except OSError:
            return False

    while not recorded() and time.time() < deadline:
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    time.sleep(1)
    for p in procs:
        p.kill()
        p.communicate()
    assert not os.path.exists(os.path.join(killed_dir, "checkpoints", "ckpt-40.index"))
    outputs = _finish(_start_workers(as_cli_args(killed) + ["--resume"], 2))
    step = int(re.search(r"Resuming .* at step (\d+)", outputs[0][0]).group(1))
    assert 20 <= step < 40
    resumed = _losses(killed_dir)
    np.testing.assert_allclose([resumed[s] for s in range(5, 41, 5)],
                               [many[s] for s in range(5, 41, 5)], rtol=1e-5)
