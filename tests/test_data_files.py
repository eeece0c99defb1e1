"""The readers every corpus shares (`tfchat.data.files`): one JSONL reader,
so text documents, labelled examples, conversations and preference pairs
read the same lines and report a bad one alike; one split check, so every
corpus refuses an unknown split name with the same message."""

import inspect
import json

import pytest

from tfchat import objectives
from tfchat.config import DataConfig, TokenizerConfig
from tfchat.data import prepared
from tfchat.data.corpus import Corpus
from tfchat.data.dialogues import DialogueCorpus
from tfchat.data.labelled import read_labelled
from tfchat.data.preferences import PreferenceCorpus
from tfchat.data.tokenizer import CharTokenizer
from tfchat.errors import TfchatError

from conftest import write_jsonl, write_text

# (reader of a data path, one good record) per kind of JSONL input.
JSONL_READERS = {
    "text documents": (Corpus, {"text": "a document"}),
    "labelled examples": (read_labelled, {"text": "a text", "label": "x"}),
    "conversations": (DialogueCorpus, {"messages": [{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "yo"}]}),
    "preference pairs": (PreferenceCorpus, {"prompt": "hi", "chosen": "yes", "rejected": "no"}),
}


def _read(kind, path, **data):
    reader, _ = JSONL_READERS[kind]
    return reader(DataConfig(path=path, **data))


def _error(kind, path):
    with pytest.raises(TfchatError) as info:
        _read(kind, path)
    return str(info.value)


@pytest.mark.parametrize("kind", JSONL_READERS)
def test_every_jsonl_reader_names_a_bad_line_alike(tmp_path, kind):
    """Lines end at "\\n" only, as `tf.data.TextLineDataset` (which streams
    causal documents) ends them: a lone carriage return between JSON tokens
    is whitespace, not a line break, so line 3 is line 3 for every reader."""
    good = json.dumps(JSONL_READERS[kind][1])
    split_by_cr = good.replace('": ', '":\r ', 1)
    path = write_text(tmp_path / "data.jsonl", f"{split_by_cr}\n{good}\r\nnot json\n{good}\n")
    assert _error(kind, path) == (
        f"{path} line 3: not valid JSON (Expecting value: line 1 column 1 (char 0)).")


def test_the_jsonl_readers_agree_on_blank_lines(tmp_path):
    """Blank is what `tf.strings.strip` strips (ASCII whitespace); a line of
    other whitespace is a line that is not JSON, for every reader."""
    messages = set()
    for kind, (_, record) in JSONL_READERS.items():
        good = json.dumps(record)
        path = write_text(tmp_path / kind / "data.jsonl",
                          f"{good}\n \t\n\u00a0\n{good}\n{good}\n")
        messages.add(_error(kind, path).replace(path, "FILE"))
    assert len(messages) == 1
    assert messages.pop().startswith("FILE line 3: not valid JSON (")


@pytest.mark.parametrize("kind", ["text documents", "labelled examples"])
def test_encoding_errors_replace_reaches_the_jsonl_reader(tmp_path, kind):
    """`data.encoding_errors replace` reads JSONL with bad bytes as U+FFFD."""
    record = JSONL_READERS[kind][1]
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({**record, "text": f"text {i}", "label": "xy"[i % 2]}).encode()
             for i in range(9)]
    lines.append(b'{"text": "bad \xfe byte", "label": "x"}')  # the one held out
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(TfchatError, match="not UTF-8 text"):
        _read(kind, str(path))
    data = _read(kind, str(path), encoding_errors="replace")
    texts = list(data.iter_texts("val") if kind == "text documents" else data.texts("val"))
    assert texts == ["bad \ufffd byte"]


SPLIT_MESSAGE = "split must be one of ('train', 'val'). Received: split='test'"


@pytest.fixture
def corpora(tmp_path):
    """{name: (corpus, its split-taking methods)} for every kind of corpus."""
    text = Corpus(DataConfig(path=write_text(tmp_path / "t.txt", "abc\n" * 20)))
    folder = str(tmp_path / "prepared")
    prepared.prepare(text, CharTokenizer.train(text.iter_texts("train")),
                     TokenizerConfig(kind="char"), folder, verbose=0)
    chats = write_jsonl(tmp_path / "c.jsonl", [JSONL_READERS["conversations"][1]] * 10)
    pairs = write_jsonl(tmp_path / "p.jsonl", [JSONL_READERS["preference pairs"][1]] * 10)
    return {
        "text": (text, ["texts", "iter_texts"]),
        "prepared": (prepared.PreparedCorpus(DataConfig(path=folder)), ["files", "id_sequences"]),
        "dialogue": (DialogueCorpus(DataConfig(path=chats)), ["conversations", "iter_texts"]),
        "preferences": (PreferenceCorpus(DataConfig(path=pairs)), ["pairs", "iter_texts"]),
    }


def test_every_corpus_refuses_an_unknown_split_alike(corpora):
    for name, (corpus, methods) in corpora.items():
        for method in methods:
            with pytest.raises(ValueError) as info:
                result = getattr(corpus, method)("test")
                list(result)  # a generator checks on its first item
            assert str(info.value) == SPLIT_MESSAGE, f"{name}.{method}"


def test_labelled_data_names_its_splits_and_all(tmp_path):
    records = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)]
    data = read_labelled(DataConfig(path=write_jsonl(tmp_path / "d.jsonl", records)))
    for method in ("examples", "texts", "label_ids"):
        with pytest.raises(ValueError) as info:
            getattr(data, method)("labels")  # an attribute, not a split
        assert str(info.value) == (
            "split must be one of ('train', 'val', 'all'). Received: split='labels'")
    assert len(data.examples("all")) == 20


def test_only_labelled_objectives_take_labels():
    """A resumed run's labels are passed to the objectives that keep them
    (`Objective.labelled`), and only those accept them."""
    for name, objective in objectives.REGISTRY.items():
        takes_labels = "labels" in inspect.signature(objective.read_data).parameters
        assert takes_labels == objective.labelled, name
