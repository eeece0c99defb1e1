"""A corpus passed through the data-hygiene stage (`tfchat.data.hygiene`)
once, into a cleaned copy that the run's corpus then reads as it reads the
original: `clean_corpus(data_config, cache_dir, seed)`.

Cleaning before anything else reads the corpus means a duplicate is removed
before the train/validation split (it cannot sit on both sides), the
streaming pipeline and its exact resume stay as they are (the copy does not
change), and every reader (documents, conversations, preference pairs,
labelled examples) sees the same cleaned text. The copy is kept in
`cache_dir` under a digest of the settings and the source files (path, size,
modification time), so a resumed run, another worker or a second run with the
same settings reuses it.

What a document is:
  * JSONL: one record. Every string in it is a part of the document (a
    text field, each message's content, a prompt and its replies), except
    the values of `KEPT_KEYS` (roles, names, labels), which are copied
    unchanged. A removed document's line is left out.
  * Text files: each paragraph (text between blank lines); the kept
    paragraphs are written back separated by blank lines.

With `data.balance_field` the training split of the copy is then resampled
(`_balance`); validation keeps its documents. `reading_config` is the one
way training and evaluation get the config that reads the copy.
"""

import collections
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import tempfile

from tfchat.data.files import (
    JSONL_SUFFIXES, YAML_SUFFIXES, count_chars, is_val, read_json_lines, read_lines,
    resolve_files,
)
from tfchat.data import pii
from tfchat.data.tasks import FIELDS
from tfchat.data.hygiene import BLOCKED, Hygiene
from tfchat.errors import TfchatError

# Values that are not text to clean: who speaks, labels, identifiers.
KEPT_KEYS = ("role", "from", "name", "type", "id", "label", "tool_call_id")
# A record's fields that hold its document (with data.text_field, and a task
# record's text fields, `_document_keys`): what the readers train on. Other
# fields (a source, a URL, a title) are metadata, copied as written: they
# are neither cleaned nor part of what makes two documents duplicates.
TEXT_KEYS = ("messages", "prompt", "chosen", "rejected", "completion")
REPORT = "data_report.json"
SOURCES = "sources.json"  # which file, and line, of the corpus each copy's line is


def hygiene_enabled(data):
    """Whether any hygiene setting of `data` (a `DataConfig`) is on.
    `fix_unicode`, on by default, counts only for the corpora the stage
    reads (text and JSONL): the chatterbot corpus is clean already, and a
    CSV's cells are left to its reader, so they train as before."""
    return bool(_chosen_settings(data)) or (data.fix_unicode and not _unread_format(data))


def _chosen_settings(data):
    """The hygiene settings `data` turns on, besides the default Unicode repair."""
    defaults = type(data)()
    names = ("dedup", "min_chars", "max_chars", "languages", "max_repetition", "scrub_pii",
             "blocklist", "balance_field")
    return [n for n in names if getattr(data, n) != getattr(defaults, n)]


def _unread_format(data):
    """Whether `data` is a corpus the stage does not read (chatterbot, its
    YAML files, CSV)."""
    if data.path.startswith("chatterbot:") or data.format == "csv":
        return True
    return any(f.endswith((".csv",) + YAML_SUFFIXES) for f in resolve_files(data.path))


def reading_config(config):
    """(the config a run's data is read with, the `Cleaned` copy or None):
    with hygiene settings on (and raw data, not a prepared folder), `config`
    with its data section pointing at the cleaned copy, made once under
    `<runs_dir>/.cleaned/`. Training and every later reading of the run's
    data (evaluation) go through here, so both see the same documents and
    the same split."""
    from tfchat.data.prepared import is_prepared

    if not hygiene_enabled(config.data) or is_prepared(config.data.path):
        return config, None
    cleaned = clean_corpus(config.data, os.path.join(config.runs_dir, ".cleaned"),
                           config.train.seed)
    return dataclasses.replace(config, data=cleaned.data), cleaned


def placeholders(data):
    """The strings the stage writes into the text (PII placeholders, the
    blocked-term mask), which a new BPE vocabulary keeps as single pieces."""
    symbols = [pii.PLACEHOLDERS[pii.TYPES.index(t)] for t in pii.parse_types(data.scrub_pii)] \
        if data.scrub_pii else []
    if data.blocklist and data.blocklist_action == "mask":
        symbols.append(BLOCKED)
    return tuple(symbols)


def make_hygiene(data, seed):
    """The `Hygiene` stage `data`'s settings describe (bad settings raise
    `TfchatError`: unknown PII types or languages, a bad blocklist file)."""
    return Hygiene(
        fix_unicode=data.fix_unicode, dedup=data.dedup, dedup_threshold=data.dedup_threshold,
        seed=seed, min_chars=data.min_chars, max_chars=data.max_chars, languages=data.languages,
        max_repetition=data.max_repetition, scrub_pii=data.scrub_pii or None,
        blocklist=data.blocklist or None, blocklist_action=data.blocklist_action,
    )


@dataclasses.dataclass
class Cleaned:
    """The cleaned copy: `data` (the `DataConfig` that reads it: the files
    under `folder`/data/), the stage's `report` (a dict, `folder`/
    data_report.json's contents)."""

    data: object
    report: dict
    folder: str


def _digest(data, seed, files):
    settings = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    stamp = [(os.path.abspath(f), os.path.getsize(f), os.path.getmtime(f)) for f in files]
    if data.blocklist and os.path.isfile(data.blocklist):
        stamp.append((os.path.abspath(data.blocklist), os.path.getsize(data.blocklist),
                      os.path.getmtime(data.blocklist)))
    blob = json.dumps([settings, seed, stamp], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def clean_corpus(data, cache_dir, seed=1):
    """Cleans the corpus `data` names into `cache_dir/<digest>/` (once; see
    module docs) and returns a `Cleaned`."""
    if data.path.startswith("chatterbot:"):
        chosen = ", ".join(f"data.{name}" for name in _chosen_settings(data))
        raise TfchatError(f"The data-hygiene settings ({chosen}) read text and JSONL files; the "
                          "chatterbot corpus is clean already: leave them off for it, or "
                          "write its conversations to JSONL first.")
    files = resolve_files(data.path)
    if not files:
        raise TfchatError(f"No files at {data.path}.")
    hygiene = make_hygiene(data, seed)  # bad settings fail before any work
    folder = os.path.join(cache_dir, _digest(data, seed, files))
    report_path = os.path.join(folder, REPORT)
    jsonl = data.format in ("jsonl",) or (data.format == "auto" and all(
        f.endswith(JSONL_SUFFIXES) for f in files))
    if data.format == "csv" or (data.format == "auto" and any(f.endswith(".csv") for f in files)):
        raise TfchatError("The data-hygiene settings read text and JSONL corpora, not CSV; "
                          "convert the CSV to JSONL (one object a line) first.")
    if any(f.endswith(YAML_SUFFIXES) for f in files):
        raise TfchatError("The data-hygiene settings read text and JSONL corpora, not "
                          "chatterbot-corpus YAML files; convert them to JSONL conversations "
                          '({"messages": [...]} a line) first.')
    suffix = ".jsonl" if jsonl else ".txt"
    if data.balance_field and not jsonl:
        raise TfchatError("data.balance_field names a JSONL field; the corpus at "
                          f"{data.path} is text.")
    if not os.path.isfile(report_path):
        os.makedirs(cache_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".cleaning-", dir=cache_dir)
        try:
            _clean_into(staging, files, suffix, jsonl, hygiene, data, seed)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # a bad record leaves nothing behind
            try:
                os.rmdir(cache_dir)  # only if no other copy is in it
            except OSError:
                pass
            raise
        try:
            os.replace(staging, folder)
        except OSError:  # another worker or run made the same copy first
            shutil.rmtree(staging, ignore_errors=True)
            if not os.path.isfile(report_path):
                raise
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    if not report["documents_read"]:
        raise TfchatError(f"The corpus at {data.path} is empty: no documents to read.")
    if not report["documents_kept"]:
        raise TfchatError(f"The data-hygiene stage removed every document of {data.path} "
                          f"({report['removed']}); see {report_path}.")
    cleaned = dataclasses.replace(data, path=os.path.join(folder, "data"),
                                  format="jsonl" if jsonl else "text")
    if "balance" in report:
        # Validation stays the same documents at the same share of places.
        cleaned = dataclasses.replace(cleaned, val_fraction=report["balance"]["val_fraction"])
    return Cleaned(cleaned, report, folder)


def _clean_into(staging, files, suffix, jsonl, hygiene, data, seed):
    """Writes the cleaned copy of `files` into the folder `staging`: data/,
    the report and where each line came from."""
    os.makedirs(os.path.join(staging, "data"))
    sources = {}
    for index, path in enumerate(files):
        name = f"{index:05d}{suffix}"
        out = os.path.join(staging, "data", name)
        if jsonl:
            anchors = _clean_jsonl(path, out, hygiene, data)
        else:
            _clean_text(path, out, hygiene, data)
            anchors = None
        sources[name] = {"source": os.path.abspath(path), "anchors": anchors}
    report = {"source": data.path, **hygiene.report.to_dict()}
    if data.balance_field:
        report["balance"] = _balance(os.path.join(staging, "data"), data, seed)
        # One file of resampled records: no line has one source line.
        sources = {f"00000{suffix}": {"source": data.path, "anchors": None}}
    with open(os.path.join(staging, SOURCES), "w", encoding="utf-8") as f:
        json.dump(sources, f, ensure_ascii=False)
    with open(os.path.join(staging, REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)


def _strings(value, key=None):
    """The cleanable strings of a JSON value, depth first."""
    if isinstance(value, str):
        if key not in KEPT_KEYS:
            yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)


def _replace(value, parts, key=None):
    """`value` with its cleanable strings taken from the iterator `parts`."""
    if isinstance(value, str):
        return value if key in KEPT_KEYS else next(parts)
    if isinstance(value, dict):
        return {k: _replace(v, parts, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, parts, key) for v in value]
    return value


def _clean_jsonl(path, out, hygiene, data):
    """Cleans the JSONL file `path` into `out`; returns the anchors that
    map the copy's line numbers to the source's (`name_sources`): [copy
    line, source line] wherever the offset between them changes."""
    metadata = {data.label_field, data.balance_field, data.group_field, ""}
    anchors, written = [], 0
    with open(out, "w", encoding="utf-8") as f:
        for number, record in read_json_lines(path, data.encoding_errors):
            if data.balance_field and not (isinstance(record, dict) and data.balance_field in record):
                raise TfchatError(f"{path} line {number}: no field {data.balance_field!r} "
                                  "(data.balance_field) to balance on.")
            if isinstance(record, dict):
                text_keys = _document_keys(record, data.text_field) - metadata
                strings = [s for k, v in record.items() if k in text_keys for s in _strings(v, k)]
            else:
                strings = list(_strings(record))
            if not isinstance(record, dict) or text_keys & record.keys():
                result = hygiene.process(strings)
                if result.texts is None:
                    continue
                parts = iter(result.texts)
                if isinstance(record, dict):
                    record = {k: (_replace(v, parts, k) if k in text_keys else v)
                              for k, v in record.items()}
                else:
                    record = _replace(record, parts)
            # else nothing of a document: copied as it is, for the reader to say
            # what is wrong with it, naming this line.
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
            if not anchors or number - written != anchors[-1][1] - anchors[-1][0]:
                anchors.append([written, number])
    return anchors


_COPY_PATH = re.compile(r"(\S*?[/\\]\.cleaned[/\\][0-9a-f]{16})[/\\]data"
                        r"(?:[/\\](\d{5}\.(?:jsonl|txt)))?(?: line (\d+))?")


def name_sources(message):
    """`message` (an error) with each place in a cleaned copy ("<copy>/data/
    00000.jsonl line 7") named as the user's own file and line, which is
    what they can open and fix."""

    def source(match):
        folder, name, line = match.groups()
        if name is None:  # the copy's folder: the corpus it copies
            try:
                with open(os.path.join(folder, REPORT), encoding="utf-8") as f:
                    return json.load(f)["source"]
            except (OSError, ValueError, KeyError):
                return match.group(0)
        try:
            with open(os.path.join(folder, SOURCES), encoding="utf-8") as f:
                where = json.load(f)[name]
        except (OSError, ValueError, KeyError):
            return match.group(0)
        anchors = where["anchors"]
        if line is None or not anchors:
            return f"{match.group(0)} (the cleaned copy of {where['source']})"
        line = int(line)
        copy_line, source_line = max((a for a in anchors if a[0] <= line), default=anchors[0])
        return f"{where['source']} line {source_line + line - copy_line}"

    return _COPY_PATH.sub(source, message)


def _document_keys(record, text_field):
    """The fields of the JSONL `record` that hold its document."""
    keys = {text_field, *TEXT_KEYS}
    for required, optional in FIELDS.values():  # a task record's, where it is one
        if set(required) <= record.keys():
            keys.update(name for name in required + optional if not name.endswith("_lang"))
    return keys


def _paragraphs(path, errors):
    count_chars(path, errors)  # fails with the byte offset if not UTF-8
    lines = []
    for line in read_lines(path, errors):
        if line.strip():
            lines.append(line)
        elif lines:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def _clean_text(path, out, hygiene, data):
    with open(out, "w", encoding="utf-8") as f:
        first = True
        for paragraph in _paragraphs(path, data.encoding_errors):
            result = hygiene.process(paragraph.rstrip("\n"))
            if result.texts is None:
                continue
            f.write(("" if first else "\n\n") + result.texts[0])
            first = False
        if not first:
            f.write("\n")


def _balance(folder, data, seed):
    """Resamples the training split of the cleaned files in `folder` (one
    file results) so every group of `data.balance_field` has as many
    documents as the smallest (`down`) or the largest (`up`); validation
    keeps its documents. The training and validation documents are laid
    out so that the corpus' own split rule (`is_val` at the returned
    `val_fraction`) puts exactly the same ones on each side."""
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    records = [line for path in files for line in open(path, encoding="utf-8")]
    train, val = [], []
    for i, line in enumerate(records):
        (val if is_val(i, data.val_fraction) else train).append(line)
    groups = collections.defaultdict(list)
    for line in train:
        value = json.loads(line)[data.balance_field]
        groups[value if isinstance(value, str) else json.dumps(value, sort_keys=True)].append(line)
    if not val or len(groups) < 2:
        raise TfchatError(f"data.balance_field {data.balance_field!r}: the training split has "
                          f"{len(groups)} group(s) and validation {len(val)} document(s); balancing "
                          "needs two groups and a validation split.")
    rng = random.Random(seed)
    target = (min if data.balance == "down" else max)(len(g) for g in groups.values())
    balanced = []
    for key in sorted(groups):
        members = groups[key]
        if target <= len(members):
            picked = sorted(rng.sample(range(len(members)), target))
            balanced += [members[i] for i in picked]
        else:
            extra = sorted(rng.sample(range(len(members)), target % len(members)))
            balanced += members * (target // len(members)) + [members[i] for i in extra]
    rng.shuffle(balanced)
    total = len(balanced) + len(val)
    # floor(total * fraction) places are validation ones: exactly len(val).
    fraction = (len(val) + 0.5) / total
    train_iter, val_iter = iter(balanced), iter(val)
    for path in files:
        os.remove(path)
    with open(os.path.join(folder, "00000.jsonl"), "w", encoding="utf-8") as f:
        for i in range(total):
            f.write(next(val_iter) if is_val(i, fraction) else next(train_iter))
    return {"field": data.balance_field, "mode": data.balance, "val_fraction": fraction,
            "before": {k: len(g) for k, g in sorted(groups.items())},
            "after": dict.fromkeys(sorted(groups), target)}
