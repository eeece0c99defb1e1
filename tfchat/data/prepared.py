"""A corpus tokenized once (`python -m tfchat.prepare`), read back as tokens.

Tokenizing is most of the input work of causal-LM training, and it is the
same every epoch; big corpora are tokenized once and training reads the
tokens back (nanoGPT's `prepare.py`, Megatron's indexed datasets). A
prepared folder is:

    <out>/index.json            what is in it (below); written last, and
                                rewritten after every finished shard
    <out>/tokenizer/            the tokenizer it was made with
    <out>/train/shard-00000.tfrecord ...
    <out>/val/shard-00000.tfrecord ...

Each TFRecord record is one piece of the token stream, as
`tfchat.data.pipeline` would have tokenized it: one document (with its
start and end tokens) of a JSONL or chatterbot corpus, or a run of lines
of a text file. Ids are little-endian uint16 when the vocabulary fits, else
int32. `index.json` holds the tokenizer's fingerprint (SHA-256 of its
files) and settings, the source corpus settings, and per split the shards'
files, records, documents and tokens, and how many source texts each
consumed (how an interrupted `prepare` resumes: finished shards are kept,
the rest is redone).

`data.path` may then name the folder: `PreparedCorpus` reads it, and
training packs the tokens as it would have packed freshly tokenized ones
(the same blocks, for the same seed). A run whose tokenizer is not the
folder's is refused.
"""

import dataclasses
import glob
import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf

from tfchat.data.files import check_split, write_json_atomic
from tfchat.data.pipeline import tokenize_batches
from tfchat.data.sharding import WHOLE
from tfchat.errors import TfchatError

INDEX_FILE = "index.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "tfchat-prepared-tokens"
VERSION = 1
# Tokens per shard file: at most 2 x 50M = 100 MB of uint16 ids, enough
# files for file-level sharding over many workers on a big corpus.
DEFAULT_SHARD_TOKENS = 50_000_000
# The tokenizer settings that make the vocabulary (a chat template does not).
_NOT_VOCABULARY = ("chat_template", "system_prompt")


def is_prepared(path):
    """Whether `path` is a folder written by `prepare`."""
    return os.path.isfile(os.path.join(path, INDEX_FILE))


def fingerprint(tokenizer_dir):
    """SHA-256 over a saved tokenizer's file names and bytes."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(tokenizer_dir)):
        digest.update(name.encode("utf-8") + b"\0")
        with open(os.path.join(tokenizer_dir, name), "rb") as f:
            digest.update(f.read())
        digest.update(b"\0")
    return digest.hexdigest()


def vocabulary_settings(tokenizer_config):
    return {k: v for k, v in dataclasses.asdict(tokenizer_config).items()
            if k not in _NOT_VOCABULARY}


def _read_index(path):
    with open(os.path.join(path, INDEX_FILE), encoding="utf-8") as f:
        index = json.load(f)
    if index.get("format") != FORMAT:
        raise TfchatError(f"{path}/{INDEX_FILE} is not a tfchat prepared-data index.")
    if index.get("version") != VERSION:
        raise TfchatError(f"{path} was prepared by another tfchat version "
                          f"(format {index.get('version')}, this one reads {VERSION}); "
                          "prepare it again.")
    return index


def tokenizer_settings(path):
    """The `tokenizer` config section the folder at `path` was prepared with."""
    return dict(_read_index(path)["tokenizer"]["settings"])


class PreparedCorpus:
    """A prepared folder as training reads it (`data.path` naming it)."""

    is_prepared = True

    def __init__(self, data_config):
        self.path = data_config.path
        self.index = _read_index(self.path)
        if not self.index["complete"]:
            raise TfchatError(
                f"{self.path} is not fully prepared (interrupted?); run the same "
                "python -m tfchat.prepare command again to finish it."
            )
        self.is_documents = self.index["source"]["documents"]
        self.tokenizer_dir = os.path.join(self.path, TOKENIZER_DIR)
        self.num_tokens = sum(s["tokens"] for s in self.index["splits"].values())

    def check_tokenizer(self, tokenizer_dir, whose):
        """Fails unless the saved tokenizer at `tokenizer_dir` is the one the
        tokens were made with."""
        if fingerprint(tokenizer_dir) != self.index["tokenizer"]["fingerprint"]:
            raise TfchatError(
                f"The tokenizer of {whose} ({tokenizer_dir}) is not the one {self.path} was "
                "prepared with, so its ids mean other tokens. Prepare the corpus with it: "
                f"python -m tfchat.prepare ... --tokenizer-from <run>."
            )

    def check_settings(self, tokenizer_config):
        """Fails if the config asks for another tokenizer than the folder's."""
        theirs = self.index["tokenizer"]["settings"]
        for key, mine in vocabulary_settings(tokenizer_config).items():
            if key in theirs and theirs[key] != mine:
                raise TfchatError(
                    f"tokenizer.{key} is {mine!r} but {self.path} was prepared with "
                    f"{theirs[key]!r}; use the prepared tokenizer's settings or prepare "
                    "the corpus again."
                )

    def files(self, split):
        shards = self.index["splits"][check_split(split)]["shards"]
        return [os.path.join(self.path, s["file"]) for s in shards]

    def id_sequences(self, split, shard=WHOLE):
        """A dataset of the split's 1-D int32 id pieces (documents, or runs
        of text), `shard`'s part only: whole files when there are at least
        as many as workers, else every W-th record."""
        files = self.files(split)
        if not files:
            return tf.data.Dataset.from_tensor_slices(tf.zeros([0, 0], tf.int32))
        mine = shard.files(files)
        records = tf.data.TFRecordDataset(mine if mine is not None else files)
        if mine is None:
            records = shard.dataset(records)
        dtype = tf.uint16 if self.index["dtype"] == "uint16" else tf.int32
        return records.map(lambda r: tf.cast(tf.io.decode_raw(r, dtype, little_endian=True),
                                              tf.int32))

    def iter_texts(self, split):
        raise TfchatError(f"{self.path} holds tokens, not text: its tokenizer comes with it.")


def prepare(corpus, tokenizer, tokenizer_config, out, shard_tokens=DEFAULT_SHARD_TOKENS,
            verbose=1):
    """Tokenizes both splits of `corpus` with `tokenizer` into the folder
    `out` (see module docs); resumes a folder an earlier call left
    unfinished (with the same corpus and tokenizer). Streams: memory does
    not grow with the corpus. Returns the index."""
    os.makedirs(out, exist_ok=True)
    tokenizer_dir = os.path.join(out, TOKENIZER_DIR)
    source = {"path": corpus.path, "format": corpus.format,
              "documents": corpus.is_documents, "val_fraction": corpus.config.val_fraction,
              "text_field": corpus.config.text_field,
              "encoding_errors": corpus.config.encoding_errors}
    index = _read_index(out) if is_prepared(out) else None
    if index is not None:
        if index["source"] != source:
            raise TfchatError(f"{out} was prepared from other data ({index['source']}); "
                              "choose another --out or delete it.")
        scratch = os.path.join(out, "tokenizer.new")
        tokenizer.save(scratch)
        same = fingerprint(scratch) == index["tokenizer"]["fingerprint"]
        _remove_tree(scratch)
        if not same:
            raise TfchatError(f"{out} was prepared with another tokenizer; choose another "
                              "--out or delete it.")
        if index["complete"]:
            if verbose:
                print(f"{out} is already prepared.")
            return index
        if verbose:
            done = sum(len(s["shards"]) for s in index["splits"].values())
            print(f"Resuming {out}: {done} shard(s) already written.")
    else:
        tokenizer.save(tokenizer_dir)
        index = {
            "format": FORMAT, "version": VERSION, "complete": False, "source": source,
            "tokenizer": {"fingerprint": fingerprint(tokenizer_dir),
                          "settings": vocabulary_settings(tokenizer_config),
                          "vocabulary_size": tokenizer.vocabulary_size},
            "dtype": "uint16" if tokenizer.vocabulary_size <= 65536 else "int32",
            "splits": {split: {"shards": [], "texts": 0, "records": 0, "documents": 0,
                               "tokens": 0, "complete": False}
                       for split in ("train", "val")},
        }
        write_json_atomic(os.path.join(out, INDEX_FILE), index)
    dtype = np.dtype("<u2" if index["dtype"] == "uint16" else "<i4")  # little-endian
    start = time.perf_counter()
    for split in ("train", "val"):
        _prepare_split(corpus, tokenizer, out, index, split, dtype, shard_tokens, verbose)
    index["complete"] = True
    write_json_atomic(os.path.join(out, INDEX_FILE), index)
    if verbose:
        tokens = sum(s["tokens"] for s in index["splits"].values())
        print(f"Prepared {out}: {tokens:,} tokens in "
              f"{sum(len(s['shards']) for s in index['splits'].values())} shard(s), "
              f"{time.perf_counter() - start:.1f} s.")
    return index


def _prepare_split(corpus, tokenizer, out, index, split, dtype, shard_tokens, verbose):
    info = index["splits"][split]
    if info["complete"]:
        return
    folder = os.path.join(out, split)
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(folder, "*.partial")):
        os.remove(stale)  # a shard cut short by the interruption
    # Texts of finished shards are skipped unread by the tokenizer;
    # `tokenize_batches` runs the tokenizer on all cores, in order.
    texts = corpus.texts(split).skip(info["texts"])
    batches = tokenize_batches(texts, tokenizer, add_eos=corpus.is_documents)
    shard = None

    def finish(shard):
        shard["writer"].close()
        os.replace(shard["path"] + ".partial", shard["path"])
        entry = {k: shard[k] for k in ("file", "texts", "records", "documents", "tokens")}
        info["shards"].append(entry)
        for key in ("texts", "records", "documents", "tokens"):
            info[key] += entry[key]
        write_json_atomic(os.path.join(out, INDEX_FILE), index)
        if verbose:
            print(f"{split}: {entry['file']}, {entry['tokens']:,} tokens "
                  f"({info['tokens']:,} in all).", flush=True)

    for ragged in batches:
        if shard is None:
            name = f"shard-{len(info['shards']):05d}.tfrecord"
            path = os.path.join(folder, name)
            shard = {"file": f"{split}/{name}", "path": path, "texts": 0, "records": 0,
                     "documents": 0, "tokens": 0,
                     "writer": tf.io.TFRecordWriter(path + ".partial")}
        flat = ragged.flat_values.numpy().astype(dtype)
        ends = ragged.row_splits.numpy()
        texts = len(ends) - 1
        if corpus.is_documents:
            pieces = [flat[a:b] for a, b in zip(ends[:-1], ends[1:])]
        else:  # a text stream: one record per run of lines
            pieces = [flat]
        for ids in pieces:
            shard["writer"].write(ids.tobytes())
        shard["tokens"] += len(flat)
        shard["records"] += len(pieces)
        shard["documents"] += texts if corpus.is_documents else 0
        shard["texts"] += texts
        if shard["tokens"] >= shard_tokens:
            finish(shard)
            shard = None
    if shard is not None:
        finish(shard)
    info["complete"] = True
    write_json_atomic(os.path.join(out, INDEX_FILE), index)


def _remove_tree(path):
    for name in os.listdir(path):
        os.remove(os.path.join(path, name))
    os.rmdir(path)
