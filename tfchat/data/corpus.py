"""Find the user's text and stream it, split into train and validation.

A corpus is one of:
  * text: a file, a directory (every file under it) or a glob. Each file is
    split by characters: its first `1 - val_fraction` go to training, the
    rest to validation (tiny-shakespeare's published 90/10 split). Lines end
    at "\n" only, and carriage returns are dropped (CRLF reads as LF), as
    `tf.data.TextLineDataset` reads them.
  * JSONL: one JSON object per line, its text in `text_field`; each object
    is a document.
  * `chatterbot:<language>`: the conversations of the chatterbot-corpus
    package (as `tfchat.data.files` reads them, the same turns the chat and
    classification objectives see), rendered as plain "User:/Bot:"
    transcripts, one document each.
Documents are split evenly: document i is held out when the running count
floor(i * val_fraction) steps up, so every part of the corpus is represented.

`Corpus.texts(split)` is a `tf.data.Dataset` of strings that reads the files
as it goes; `Corpus.iter_texts(split)` yields the same strings in Python (for
tokenizer training). Neither holds a file in memory. Problems with the input
raise `TfchatError` naming the file and the line or byte offset.
"""

import json

import tensorflow as tf

from tfchat.data.files import (
    JSONL_SUFFIXES, check_split, chatterbot_conversations, count_chars, is_val, read_json_lines,
    read_lines, resolve_files,
)
from tfchat.data.sharding import WHOLE
from tfchat.errors import TfchatError

# Lines of a text file shared out to one worker at a time, when there are
# fewer files than workers (at most: a small split is cut finer): blocks
# then rarely straddle two workers' runs.
_SHARD_LINES = 256


def _is_val_tf(index, fraction):
    index = tf.cast(index, tf.float64)
    return tf.math.floor((index + 1) * fraction) > tf.math.floor(index * fraction)


class _TextFileSplit:
    """Where one text file's train part ends: after `lines` whole lines and
    `head` (the start of the next line); `tail` is that line's remainder."""

    def __init__(self, path, val_fraction, errors="strict"):
        self.path = path
        self.chars, self.newlines = count_chars(path, errors)
        boundary = int(self.chars * (1 - val_fraction))
        self.lines, self.head, self.tail = 0, "", ""
        seen = 0
        for line in read_lines(path, errors):
            if seen + len(line) > boundary:
                cut = boundary - seen
                self.head, self.tail = line[:cut], line[cut:]
                break
            seen += len(line)
            self.lines += 1


def _add_newline(line):
    return line + "\n"


def _add_newline_unless_last(index, line, newlines):
    # Line `index` ends with "\n" unless it is a last line that had none.
    return line + tf.where(index < newlines, "\n", "")


class Corpus:
    """A user's corpus, split into train and validation; see module docs."""

    def __init__(self, data_config):
        self.config = data_config
        self.errors = data_config.encoding_errors
        self.path = data_config.path
        self.files = resolve_files(self.path)
        if self.path.startswith("chatterbot:"):
            self.format = "chatterbot"
        elif data_config.format != "auto":
            self.format = data_config.format
        elif all(f.endswith(JSONL_SUFFIXES) for f in self.files):
            self.format = "jsonl"
        else:
            self.format = "text"
        # Documents get an end-of-text token between them; text files are one
        # running stream each.
        self.is_documents = self.format != "text"
        self._scan()

    # --- scanning: validate the input once, before any training starts ---

    def _scan(self):
        fraction = self.config.val_fraction
        if self.format == "text":
            self._splits = [_TextFileSplit(f, fraction, self.errors) for f in self.files]
            total = sum(s.chars for s in self._splits)
            if total == 0:
                raise TfchatError(f"The corpus at {self.path} is empty.")
            self.num_chars = total
        else:
            if self.format == "chatterbot":
                self._documents = chatterbot_transcripts(self.path.split(":", 1)[1])
            count = chars = 0
            for text in self._iter_documents():
                count += 1
                chars += len(text)
            if chars == 0:
                raise TfchatError(f"The corpus at {self.path} has no text.")
            if count < 2:
                raise TfchatError(
                    f"The corpus at {self.path} has {count} document; at least "
                    "2 are needed to hold one out for validation."
                )
            self.num_documents, self.num_chars = count, chars

    def _iter_documents(self):
        """Yields every document's text, checking JSONL line by line."""
        if self.format == "chatterbot":
            yield from self._documents
            return
        field = self.config.text_field
        for path in self.files:
            for number, record in read_json_lines(path, self.errors):
                yield _document_text(record, field, path, number)

    # --- streaming ---

    def iter_texts(self, split):
        """Yields the split's text pieces in Python, in dataset order."""
        check_split(split)
        fraction = self.config.val_fraction
        if self.format != "text":
            for i, text in enumerate(self._iter_documents()):
                if is_val(i, fraction) == (split == "val"):
                    yield text
            return
        for s in self._splits:
            for number, line in enumerate(read_lines(s.path, self.errors)):
                if number < s.lines:
                    if split == "train":
                        yield line
                elif number == s.lines:
                    # Empty when the split point is a line end (`texts`
                    # drops empty strings too).
                    piece = s.head if split == "train" else s.tail
                    if piece:
                        yield piece
                elif split == "val":
                    yield line

    def texts(self, split, shard=WHOLE):
        """A `tf.data.Dataset` of the split's strings, read lazily; only
        `shard`'s part of them (`tfchat.data.sharding`): whole files when
        there are enough, else runs of `_SHARD_LINES` lines of a text file
        (a running stream stays contiguous within each run) or single
        documents."""
        check_split(split)
        fraction = self.config.val_fraction
        want_val = split == "val"
        if self.format == "text":
            splits = shard.files(self._splits)
            sharded_by_file = splits is not None
            splits = splits if sharded_by_file else self._splits
            paths = [s.path for s in splits]
            lines = tf.constant([s.lines for s in splits], tf.int64)
            newlines = tf.constant([s.newlines for s in splits], tf.int64)
            heads = [s.head for s in splits]
            tails = [s.tail for s in splits]
            if split == "train":
                # Every whole line before the split point ends with "\n".
                def part(path, n, newlines, head, tail):
                    body = tf.data.TextLineDataset(path).take(n).map(_add_newline)
                    return body.concatenate(tf.data.Dataset.from_tensors(head))
            else:
                def part(path, n, newlines, head, tail):
                    body = (
                        tf.data.TextLineDataset(path).skip(n + 1)
                        .enumerate(start=n + 1)
                        .map(lambda i, line: _add_newline_unless_last(i, line, newlines))
                    )
                    return tf.data.Dataset.from_tensors(tail).concatenate(body)
            ds = tf.data.Dataset.from_tensor_slices((paths, lines, newlines, heads, tails))
            ds = ds.flat_map(part).filter(lambda t: tf.strings.length(t) > 0)
            if not sharded_by_file and not shard.whole:
                # Shorter runs for a small split, so every worker gets some.
                line_count = sum((s.lines + 1) if split == "train" else (s.newlines - s.lines + 1)
                                 for s in splits)
                run = max(1, min(_SHARD_LINES, line_count // (8 * shard.count)))
                ds = shard.dataset(ds.batch(run)).unbatch()
            return ds.map(self._fix_encoding)

        if self.format == "chatterbot":
            ds = tf.data.Dataset.from_tensor_slices(self._documents)
        else:
            ds = tf.data.TextLineDataset(self.files).map(self._fix_encoding)
            ds = ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
        ds = ds.enumerate().filter(lambda i, t: _is_val_tf(i, fraction) == want_val)
        # Shared out before the JSON is parsed, so each worker parses only
        # its own documents.
        ds = shard.dataset(ds.map(lambda i, t: t))
        if self.format == "jsonl":
            ds = _checkpointable_with_py_function(ds.map(self._extract_text_tf))
        return ds

    def _fix_encoding(self, text):
        # Strict input was checked by `_scan`; replace mode swaps each
        # invalid sequence for U+FFFD, as Python's decoder did in `_scan`.
        if self.errors == "strict":
            return text
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")

    def _extract_text_tf(self, line):
        # JSON cannot be parsed with TensorFlow ops; the lines were already
        # validated by `_scan`, so this Python step cannot fail mid-training.
        field = self.config.text_field

        def extract(raw):
            return json.loads(raw.numpy().decode("utf-8"))[field].encode("utf-8")

        text = tf.py_function(extract, [line], tf.string)
        text.set_shape([])
        return text


def _checkpointable_with_py_function(ds):
    """Lets a checkpoint save an iterator over `ds` although `ds` runs a
    `tf.py_function` (tf.data refuses by default, so every JSONL run failed
    at its first checkpoint). Safe here: the function is a pure function of
    its input line, so there is no state to lose; the file position is
    saved as usual."""
    options = tf.data.Options()
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE
    )
    return ds.with_options(options)


def _document_text(record, field, path, number):
    """The text of JSONL line `number`'s parsed `record`."""
    if not isinstance(record, dict) or field not in record:
        raise TfchatError(
            f"{path} line {number}: no text field {field!r} "
            "(set data.text_field to the field that holds the text)."
        )
    if not isinstance(record[field], str):
        raise TfchatError(
            f"{path} line {number}: field {field!r} is not a string."
        )
    return record[field]


def chatterbot_transcripts(language="english"):
    """The conversations as plain transcripts, alternating User and Bot."""
    transcripts = []
    for _, turns in chatterbot_conversations(language):
        lines = [
            f"{'User' if i % 2 == 0 else 'Bot'}: {turn}" for i, turn in enumerate(turns)
        ]
        transcripts.append("\n".join(lines) + "\n")
    return transcripts
