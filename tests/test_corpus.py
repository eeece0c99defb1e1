import math

import pytest

from tfchat.config import DataConfig
from tfchat.data import corpus as corpus_lib
from tfchat.data import files as files_lib
from tfchat.data.corpus import Corpus
from tfchat.errors import TfchatError

from conftest import write_jsonl, write_text


def tf_texts(corpus, split):
    """The tf.data split's strings, decoded."""
    batches = corpus.texts(split).batch(4096).as_numpy_iterator()
    return [t.decode("utf-8") for batch in batches for t in batch]


def py_texts(corpus, split):
    return list(corpus.iter_texts(split))


def assert_split(corpus, split, expected):
    """Both readers give `expected` (joined) and the same pieces."""
    py, tf_ = py_texts(corpus, split), tf_texts(corpus, split)
    assert "".join(py) == expected
    assert "".join(tf_) == expected
    assert py == tf_


def test_shakespeare_split_is_first_90_last_10_percent(shakespeare_path):
    with open(shakespeare_path, encoding="utf-8", newline="") as f:
        content = f.read()
    corpus = Corpus(DataConfig(path=shakespeare_path, val_fraction=0.1))
    assert corpus.format == "text" and not corpus.is_documents
    assert corpus.num_chars == len(content)
    cut = int(len(content) * 0.9)
    assert_split(corpus, "train", content[:cut])
    assert_split(corpus, "val", content[cut:])


@pytest.mark.parametrize(
    "text",
    [
        "".join(f"line {i}\n" for i in range(40)),
        # No final newline: the last line must not gain one.
        "".join(f"line {i}\n" for i in range(40)) + "last line, no newline",
        # A split point exactly at a line end.
        "abcd\n" * 20,
        "né café 字 🙂\n\n  spaced   out\t\n" * 7,
        "one single line without any newline at all",
    ],
    ids=["lines", "no-final-newline", "cut-at-line-end", "unicode", "one-line"],
)
@pytest.mark.parametrize("val_fraction", [0.1, 0.37])
def test_text_file_split(tmp_path, text, val_fraction):
    path = write_text(tmp_path / "t.txt", text)
    corpus = Corpus(DataConfig(path=path, val_fraction=val_fraction))
    cut = int(len(text) * (1 - val_fraction))
    assert_split(corpus, "train", text[:cut])
    assert_split(corpus, "val", text[cut:])


def test_carriage_returns_are_dropped_consistently(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"first line\r\nsecond\r\n" * 10 + b"lone\rreturn\n" * 5)
    text = path.read_bytes().decode("utf-8").replace("\r", "")
    corpus = Corpus(DataConfig(path=str(path), val_fraction=0.25))
    cut = int(len(text) * 0.75)
    assert_split(corpus, "train", text[:cut])
    assert_split(corpus, "val", text[cut:])


def test_directory_and_glob(tmp_path):
    a = "alpha " * 30 + "\n"
    b = "".join(f"beta {i}\n" for i in range(20))
    write_text(tmp_path / "d" / "a.txt", a)
    write_text(tmp_path / "d" / "sub" / "b.txt", b)
    write_text(tmp_path / "d" / ".hidden.txt", "hidden\n" * 10)
    write_text(tmp_path / "d" / "notes.md", "markdown\n" * 10)

    def first(t):
        return t[: int(len(t) * 0.9)]

    def rest(t):
        return t[int(len(t) * 0.9):]

    # A directory: every non-hidden file under it, in path order, each split.
    corpus = Corpus(DataConfig(path=str(tmp_path / "d")))
    md = "markdown\n" * 10
    assert corpus.files == sorted(corpus.files) and len(corpus.files) == 3
    assert_split(corpus, "train", first(a) + first(md) + first(b))
    assert_split(corpus, "val", rest(a) + rest(md) + rest(b))

    # A glob: only the matching files.
    corpus = Corpus(DataConfig(path=str(tmp_path / "d" / "**" / "*.txt")))
    assert [f.rsplit("/", 1)[1] for f in corpus.files] == ["a.txt", "b.txt"]
    assert_split(corpus, "train", first(a) + first(b))
    assert_split(corpus, "val", rest(a) + rest(b))


def test_jsonl_documents_with_custom_field(tmp_path):
    docs = [f"document {i}: {'é' * (i % 3)} text\nwith a newline" for i in range(50)]
    records = [{"body": d, "id": i} for i, d in enumerate(docs)]
    records.insert(10, "   ")  # blank lines are skipped
    path = write_jsonl(tmp_path / "docs.jsonl", records)
    corpus = Corpus(DataConfig(path=path, text_field="body", val_fraction=0.1))
    assert corpus.format == "jsonl" and corpus.is_documents
    assert corpus.num_documents == len(docs)
    train, val = py_texts(corpus, "train"), py_texts(corpus, "val")
    assert tf_texts(corpus, "train") == train
    assert tf_texts(corpus, "val") == val
    # Whole documents, each in exactly one split, in corpus order.
    assert sorted(train + val) == sorted(docs)
    assert [d for d in docs if d in val] == val
    assert len(val) == math.floor(len(docs) * 0.1)
    # Held-out documents are spread over the corpus: one per 10 documents.
    for start in range(0, len(docs), 10):
        assert sum(d in val for d in docs[start:start + 10]) == 1


def test_format_override_reads_jsonl_as_text(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"doc {i}"} for i in range(20)])
    corpus = Corpus(DataConfig(path=path, format="text"))
    assert not corpus.is_documents
    assert "".join(py_texts(corpus, "train")).startswith('{"text": "doc 0"}\n')


def test_missing_path(tmp_path):
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(TfchatError, match="not found") as info:
        Corpus(DataConfig(path=missing))
    assert missing in str(info.value)
    with pytest.raises(TfchatError, match="No files match"):
        Corpus(DataConfig(path=str(tmp_path / "*.nothing")))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(TfchatError, match="No files found"):
        Corpus(DataConfig(path=str(tmp_path / "empty_dir")))


def test_empty_file(tmp_path):
    path = write_text(tmp_path / "empty.txt", "")
    with pytest.raises(TfchatError, match="empty"):
        Corpus(DataConfig(path=path))


@pytest.mark.parametrize(
    "data,chunk",
    [
        (b"hello world\xffmore text\n", 1 << 20),
        (b"hello world\xffmore text\n", 4),
        # A truncated multi-byte character at the very end of the file.
        (b"caf\xc3\xa9 ok and cut \xc3", 1 << 20),
        # A bad continuation byte of a character split across read chunks.
        (b"abcd\xc3\x28 and more", 5),
    ],
)
def test_non_utf8_file_reports_byte_offset(tmp_path, monkeypatch, data, chunk):
    monkeypatch.setattr(files_lib, "_CHUNK", chunk)
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start
    with pytest.raises(TfchatError, match=f"offset {offset}\\b") as info:
        Corpus(DataConfig(path=str(path)))
    assert str(path) in str(info.value)


def test_multibyte_characters_across_read_chunks_are_fine(tmp_path, monkeypatch):
    monkeypatch.setattr(files_lib, "_CHUNK", 3)
    text = "é字🙂 mixed widths\n" * 12
    path = write_text(tmp_path / "u.txt", text)
    corpus = Corpus(DataConfig(path=path))
    assert corpus.num_chars == len(text)
    cut = int(len(text) * 0.9)
    assert_split(corpus, "train", text[:cut])


def test_non_utf8_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    data = b'{"text": "ok"}\n{"text": "\xfe"}\n'
    path.write_bytes(data)
    offset = data.index(b"\xfe")
    with pytest.raises(TfchatError, match=f"offset {offset}\\b"):
        Corpus(DataConfig(path=str(path)))


def test_jsonl_line_not_json(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, "", "{not json", {"text": "b"}])
    with pytest.raises(TfchatError) as info:
        Corpus(DataConfig(path=path))
    assert f"{path} line 3" in str(info.value)
    assert "not valid JSON" in str(info.value)


@pytest.mark.parametrize("bad", [{"txt": "b"}, ["text", "b"], {"text": 3}])
def test_jsonl_line_missing_field(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, bad])
    with pytest.raises(TfchatError) as info:
        Corpus(DataConfig(path=path))
    assert f"{path} line 3" in str(info.value)
    assert "'text'" in str(info.value)


def test_jsonl_needs_two_documents(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "only one"}])
    with pytest.raises(TfchatError, match="at least"):
        Corpus(DataConfig(path=path))


def test_chatterbot_english_splits_by_conversation():
    corpus = Corpus(DataConfig(path="chatterbot:english", val_fraction=0.1))
    assert corpus.format == "chatterbot" and corpus.is_documents
    transcripts = corpus_lib.chatterbot_transcripts("english")
    assert corpus.num_documents == len(transcripts) > 50
    train, val = py_texts(corpus, "train"), py_texts(corpus, "val")
    assert tf_texts(corpus, "train") == train
    assert tf_texts(corpus, "val") == val
    assert len(val) == math.floor(len(transcripts) * 0.1)
    # Each piece is one whole conversation, and none is in both splits.
    assert sorted(train + val) == sorted(transcripts)
    for text in train + val:
        lines = text.splitlines()
        assert lines[0].startswith("User: ") and lines[1].startswith("Bot: ")
        assert text.endswith("\n")


def test_chatterbot_unknown_language():
    with pytest.raises(TfchatError, match="klingon"):
        Corpus(DataConfig(path="chatterbot:klingon"))


def test_bad_split_name(tmp_path):
    corpus = Corpus(DataConfig(path=write_text(tmp_path / "t.txt", "abc\n" * 5)))
    with pytest.raises(ValueError, match="split"):
        corpus.texts("test")
