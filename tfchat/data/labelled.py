"""Labelled texts for classification, split into train and validation.

`data.path` is one of:
  * JSONL: one object per line with the text in `data.text_field` and the
    class in `data.label_field` (a string or a number).
  * CSV: a header row naming (at least) those two columns, then one example
    per row.
  * `chatterbot:<language>`: every utterance of the chatterbot-corpus
    conversations (the turns `tfchat.data.files` reads, as the causal and chat
    objectives see them), labelled with its file's category (ai, food,
    health, history, ...); an utterance repeated in one category counts once.
A directory or glob takes every .jsonl/.json/.csv file under it. Examples are
held out for validation evenly, as `tfchat.data.corpus` holds out documents.

The label vocabulary is the sorted set of classes in the training split; a
class seen only in validation is an error, as is a missing text or label
(with file and line number).

With `data.group_field` each example also has a group (a JSONL field or CSV
column: a string or a number), which evaluation reports metrics per
(`tfchat.evaluation.fairness`); `groups(split)` lists them. A record without
it is an error with its file and line.

Example:
```python
data = read_labelled(DataConfig(path="chatterbot:english"))
data.labels        # ("ai", "botprofile", ...)
data.train[0]      # ("What is AI?", "ai")
```
"""

import csv
import dataclasses

from tfchat.data.files import (
    JSONL_SUFFIXES, SPLITS, check_split, chatterbot_conversations, count_chars, is_val,
    read_json_lines, resolve_files,
)
from tfchat.errors import TfchatError



@dataclasses.dataclass
class LabelledData:
    """(text, label) pairs of each split, and the classes in id order."""

    train: list
    val: list
    labels: tuple
    # With data.group_field: {"train": [group, ...], "val": [...]}, one per example.
    group_values: dict = None

    def examples(self, split):
        """The (text, label) pairs of "train", "val" or "all" (train, then val)."""
        check_split(split, SPLITS + ("all",))
        return self.train + self.val if split == "all" else getattr(self, split)

    def label_ids(self, split):
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[label] for _, label in self.examples(split)]

    def texts(self, split):
        return [text for text, _ in self.examples(split)]

    def groups(self, split):
        """Each example's group (`data.group_field`), in `examples(split)`'s
        order; None without a group field."""
        if self.group_values is None:
            return None
        check_split(split, SPLITS + ("all",))
        if split == "all":
            return self.group_values["train"] + self.group_values["val"]
        return self.group_values[split]


def read_labelled(data_config, labels=None):
    """Reads and splits the labelled examples at `data_config.path`.

    `labels` fixes the class vocabulary (a trained run's); a class outside it
    is then an error. Otherwise it is the training split's classes.
    """
    group_field = getattr(data_config, "group_field", "")
    examples = list(_iter_examples(data_config, group_field))
    if not examples:
        raise TfchatError(f"No labelled examples found at {data_config.path}.")
    train, val, groups = [], [], {"train": [], "val": []}
    for i, (text, label, group) in enumerate(examples):
        split = "val" if is_val(i, data_config.val_fraction) else "train"
        (val if split == "val" else train).append((text, label))
        groups[split].append(group)
    given = labels is not None
    if not given:
        if not val:
            raise TfchatError(
                f"{data_config.path} has {len(examples)} example(s): too few to hold "
                "any out for validation (raise data.val_fraction or add examples)."
            )
        labels = tuple(sorted({label for _, label in train}))
        if len(labels) < 2:
            raise TfchatError(
                f"{data_config.path} has {len(labels)} class in its training "
                "split; classification needs at least 2."
            )
    else:
        labels = tuple(labels)
    known = set(labels)
    for split, pairs in (("train", train), ("validation", val)):
        unknown = sorted({label for _, label in pairs} - known)
        if not unknown:
            continue
        if given:
            raise TfchatError(
                f"Class {unknown[0]!r} of {data_config.path} is not one the run was "
                f"trained on ({', '.join(labels)})."
            )
        count = sum(1 for _, label in pairs if label == unknown[0])
        raise TfchatError(
            f"Class {unknown[0]!r} of {data_config.path} has no examples in the "
            f"training split ({count} in the {split} split); add training "
            "examples for it or remove it."
        )
    return LabelledData(train, val, labels, groups if group_field else None)


def iter_examples(data_config):
    """Yields every (text, label) pair at `data_config.path`, in order."""
    for text, label, _ in _iter_examples(data_config, ""):
        yield text, label


def _iter_examples(data_config, group_field):
    """Yields every (text, label, group) at `data_config.path`, in order;
    group is None without `group_field`."""
    path = data_config.path
    if path.startswith("chatterbot:"):
        if group_field:
            raise TfchatError(
                f"data.group_field {group_field!r}: {path} has no fields (its groups are "
                "its categories, the labels); group_field needs JSONL or CSV data."
            )
        seen = set()
        for category, turns in chatterbot_conversations(path.split(":", 1)[1]):
            for turn in turns:
                if (turn, category) not in seen:
                    seen.add((turn, category))
                    yield turn, category, None
        return
    for file in resolve_files(path):
        fmt = data_config.format
        if fmt == "auto":
            fmt = "jsonl" if file.endswith(JSONL_SUFFIXES) else "csv" if file.endswith(".csv") else None
        if fmt == "jsonl":
            yield from _read_jsonl(file, data_config.text_field, data_config.label_field,
                                   data_config.encoding_errors, group_field)
        elif fmt == "csv":
            yield from _read_csv(file, data_config.text_field, data_config.label_field,
                                 data_config.encoding_errors, group_field)
        else:
            raise TfchatError(
                f"{file}: labelled data must be .jsonl or .csv (or set data.format "
                "to jsonl or csv)."
            )


def _check_text(text, path, number, field):
    if not isinstance(text, str):
        raise TfchatError(f"{path} line {number}: text field {field!r} is not a string.")
    if not text.strip():
        raise TfchatError(f"{path} line {number}: empty text in field {field!r}.")
    return text


def _check_label(label, path, number, field):
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise TfchatError(
            f"{path} line {number}: label field {field!r} must be a string or an "
            f"integer. Received: {label!r}"
        )
    label = str(label).strip()
    if not label:
        raise TfchatError(f"{path} line {number}: missing label (field {field!r}).")
    return label


def check_group(value, path, number, field):
    """A record's group (`data.group_field`) as a string; anything but a
    non-empty string or a number is an error naming the file and line."""
    if value is None or isinstance(value, (bool, dict, list)) or not str(value).strip():
        raise TfchatError(
            f"{path} line {number}: group field {field!r} (data.group_field) must be a "
            f"non-empty string or a number. Received: {value!r}"
        )
    return str(value).strip()


def _read_jsonl(path, text_field, label_field, errors="strict", group_field=""):
    for number, record in read_json_lines(path, errors):
        if not isinstance(record, dict):
            raise TfchatError(f"{path} line {number}: not a JSON object.")
        for field, what in ((text_field, "text"), (label_field, "label"), (group_field, "group")):
            if field and field not in record:
                raise TfchatError(
                    f"{path} line {number}: missing {what} field {field!r} "
                    f"(set data.{what}_field to the field that holds it)."
                )
        yield (
            _check_text(record[text_field], path, number, text_field),
            _check_label(record[label_field], path, number, label_field),
            check_group(record[group_field], path, number, group_field) if group_field else None,
        )


def _read_csv(path, text_field, label_field, errors="strict", group_field=""):
    count_chars(path, errors)
    with open(path, encoding="utf-8", errors=errors, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise TfchatError(f"{path} is empty (a header row is needed).") from None
        except csv.Error as e:
            raise TfchatError(f"{path} line 1: {e}.") from None
        columns = [c.strip() for c in header]
        for field, what in ((text_field, "text"), (label_field, "label"), (group_field, "group")):
            if field and field not in columns:
                raise TfchatError(
                    f"{path} line 1: no {what} column {field!r} in the header "
                    f"({', '.join(columns)}); set data.{what}_field."
                )
        text_at, label_at = columns.index(text_field), columns.index(label_field)
        group_at = columns.index(group_field) if group_field else -1
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise TfchatError(f"{path} line {start}: {e}.") from None
            number, start = start, reader.line_num + 1
            if not row or not "".join(row).strip():
                continue
            if len(row) <= max(text_at, label_at, group_at):
                missing = ("label" if len(row) <= label_at else "text" if len(row) <= text_at
                           else "group")
                raise TfchatError(
                    f"{path} line {number}: missing {missing} (the row has "
                    f"{len(row)} of {len(columns)} columns)."
                )
            yield (
                _check_text(row[text_at], path, number, text_field),
                _check_label(row[label_at], path, number, label_field),
                check_group(row[group_at], path, number, group_field) if group_field else None,
            )
