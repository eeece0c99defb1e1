"""Preference data for `objective: dpo`: read, check, split, encode and
append pairs of a better (chosen) and a worse (rejected) reply to a prompt.

A preference file is JSONL, one record per line, in any of the forms
TRL's preference datasets use:

  * explicit prompt: {"prompt": P, "chosen": R, "rejected": R}, where P is
    a string (one user message) or a list of messages ending with a user
    turn, and each R a string (one assistant message), a message, or a list
    of messages starting with an assistant turn. "messages" may stand for
    "prompt" (messages JSONL with chosen/rejected replies added).
  * implicit prompt: {"chosen": [...], "rejected": [...]}, two whole
    conversations; the prompt is the messages they share from the start.
  * labelled replies (what `/good` and `/bad` in `python -m tfchat.chat
    --feedback` write): {"prompt": P, "completion": R, "label": true|false}.
    Every good reply is paired with every bad reply to the same prompt; a
    reply with no opposite is counted and left out.

Every record is checked before training starts, with the file and line of
the first problem: a missing field, an empty message, a prompt that does
not end with the user, identical chosen and rejected replies.

`encode_pairs` renders each pair as two conversations under the run's
chat template (`tfchat.data.chat_template`), as SFT does, with weights on
the reply's assistant tokens only: a pair's log-probabilities are sums
over exactly those tokens. `FeedbackLog` appends records, one flushed and
synced line per judgement, so a killed chat loses none.
"""

import collections
import dataclasses
import json
import os
import typing

from tfchat.data.chat_template import ROLES, Message, encode_conversations
from tfchat.data.files import (
    JSONL_SUFFIXES, check_split, first_jsonl_record, read_json_lines, resolve_files,
    split_records,
)
from tfchat.errors import TfchatError

PAIR_FORM = '{"prompt": ..., "chosen": ..., "rejected": ...}'
LABELLED_FORM = '{"prompt": ..., "completion": ..., "label": true|false}'


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """A prompt (messages ending with the user's) and two replies to it
    (assistant messages), the chosen one better; `where` names its source."""

    prompt: typing.Tuple[Message, ...]
    chosen: typing.Tuple[Message, ...]
    rejected: typing.Tuple[Message, ...]
    where: str = ""


def is_preference_data(data_config):
    """Whether `data.path` is JSONL whose first record is a preference
    pair or a labelled reply (decides `objective: auto`)."""
    record = first_jsonl_record(data_config)
    return record is not None and (
        {"chosen", "rejected"} <= record.keys() or {"completion", "label"} <= record.keys())


def _messages(value, where, name, default_role):
    """A record's field as a tuple of `Message`s: a string is one message
    of `default_role`, a dict one message, a list several."""
    if isinstance(value, str):
        value = [{"role": default_role, "content": value}]
    elif isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise TfchatError(
            f'{where}: "{name}" must be a string or a non-empty list of '
            '{"role": ..., "content": ...} messages.'
        )
    messages = []
    for number, turn in enumerate(value, start=1):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)
                and isinstance(turn.get("content"), str)):
            raise TfchatError(
                f'{where}: "{name}" message {number} must be {{"role": "...", "content": "..."}} '
                "with string values."
            )
        if turn["role"] not in ROLES:
            raise TfchatError(f'{where}: "{name}" message {number} has unknown role '
                              f"{turn['role']!r}; roles are {', '.join(ROLES)}.")
        if not turn["content"].strip():
            what = "reply" if name in ("chosen", "rejected", "completion") else "message"
            raise TfchatError(f'{where}: the {name} {what} is empty'
                              + (f" (message {number})." if len(value) > 1 else "."))
        messages.append(Message(turn["role"], turn["content"]))
    return tuple(messages)


def _check_prompt(prompt, where):
    for number, m in enumerate(prompt, start=1):
        if m.role == "system" and number > 1:
            raise TfchatError(f"{where}: a system message may only come first in the prompt "
                              f"(message {number}).")
    if prompt[-1].role != "user":
        raise TfchatError(f"{where}: the prompt must end with a user message "
                          f"(its last is {prompt[-1].role}).")


def _check_reply(reply, where, name):
    if reply[0].role != "assistant":
        raise TfchatError(f"{where}: the {name} reply must start with an assistant message "
                          f"(it starts with {reply[0].role}).")
    if any(m.role == "system" for m in reply):
        raise TfchatError(f"{where}: the {name} reply has a system message.")


def _split_implicit(chosen, rejected, where):
    """Two whole conversations -> (prompt, chosen reply, rejected reply):
    the prompt is the messages they share from the start."""
    shared = 0
    while (shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]):
        shared += 1
    if shared == len(chosen) == len(rejected):
        raise TfchatError(f"{where}: the chosen and rejected replies are identical.")
    if shared == 0:
        raise TfchatError(f'{where}: without a "prompt", chosen and rejected must be whole '
                          "conversations that start with the same prompt messages.")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def read_preferences_jsonl(path):
    """(pairs, unpaired) of a preference JSONL file: its `PreferencePair`s in
    file order (labelled replies paired per prompt, each pair placed at its
    later line) and the number of labelled replies left without an opposite."""
    pairs = []  # (line number, pair)
    labelled = collections.OrderedDict()  # prompt -> {True: [(line, reply)], False: [...]}
    for number, record in read_json_lines(path):
        where = f"{path} line {number}"
        if not isinstance(record, dict):
            raise TfchatError(f"{where}: expected an object {PAIR_FORM}.")
        if "completion" in record or "label" in record:
            for name in ("prompt", "completion", "label"):
                if name not in record:
                    raise TfchatError(f'{where}: missing field "{name}"; a labelled reply is '
                                      f"{LABELLED_FORM}.")
            if not isinstance(record["label"], bool):
                raise TfchatError(f'{where}: "label" must be true or false.')
            prompt = _messages(record["prompt"], where, "prompt", "user")
            completion = _messages(record["completion"], where, "completion", "assistant")
            _check_prompt(prompt, where)
            _check_reply(completion, where, "completion")
            labelled.setdefault(prompt, {True: [], False: []})[record["label"]].append(
                (number, completion))
            continue
        prompt_key = "prompt" if "prompt" in record else "messages" if "messages" in record else None
        for name in ("chosen", "rejected"):
            if name not in record:
                raise TfchatError(f'{where}: missing field "{name}"; a preference pair is '
                                  f"{PAIR_FORM}.")
        if prompt_key is None:
            chosen = _messages(record["chosen"], where, "chosen", "assistant")
            rejected = _messages(record["rejected"], where, "rejected", "assistant")
            prompt, chosen, rejected = _split_implicit(chosen, rejected, where)
        else:
            prompt = _messages(record[prompt_key], where, "prompt", "user")
            chosen = _messages(record["chosen"], where, "chosen", "assistant")
            rejected = _messages(record["rejected"], where, "rejected", "assistant")
        _check_prompt(prompt, where)
        _check_reply(chosen, where, "chosen")
        _check_reply(rejected, where, "rejected")
        if chosen == rejected:
            raise TfchatError(f"{where}: the chosen and rejected replies are identical.")
        pairs.append((number, PreferencePair(prompt, chosen, rejected, where)))
    unpaired = 0
    for prompt, replies in labelled.items():
        good, bad = replies[True], replies[False]
        if not good or not bad:
            unpaired += len(good) + len(bad)
        for good_line, chosen in good:
            for bad_line, rejected in bad:
                if chosen != rejected:  # one reply marked both ways teaches nothing
                    first, last = sorted((good_line, bad_line))
                    pairs.append((last, PreferencePair(
                        prompt, chosen, rejected, f"{path} lines {first} and {last}")))
    pairs.sort(key=lambda item: item[0])
    return [pair for _, pair in pairs], unpaired


class PreferenceCorpus:
    """The checked preference pairs of `data.path` (JSONL files), split into
    train and validation as dialogue corpora are (`split_records`)."""

    def __init__(self, data_config):
        self.config = data_config
        self.path = data_config.path
        if self.path.startswith("chatterbot:"):
            raise TfchatError("objective dpo reads preference pairs from JSONL files "
                              f"({PAIR_FORM} per line), not {self.path}.")
        self._all, self.unpaired = [], 0
        for path in resolve_files(self.path):
            if not (data_config.format == "jsonl" or path.endswith(JSONL_SUFFIXES)):
                raise TfchatError(f"{path}: objective dpo reads preference pairs from JSONL "
                                  f"({PAIR_FORM} per line; data.format jsonl for other suffixes).")
            pairs, unpaired = read_preferences_jsonl(path)
            self._all += pairs
            self.unpaired += unpaired
        note = f", {self.unpaired} labelled replies without an opposite" if self.unpaired else ""
        self._splits = split_records(self._all, data_config.val_fraction, self.path,
                                     "preference pairs", note)

    @property
    def num_pairs(self):
        return len(self._all)

    def pairs(self, split):
        return self._splits[check_split(split)]

    def iter_texts(self, split):
        for pair in self.pairs(split):
            for m in pair.prompt + pair.chosen + pair.rejected:
                yield m.content


def encode_pairs(tokenizer, pairs, max_tokens):
    """Each `PreferencePair` -> (chosen, rejected) `Encoded`s of at most
    `max_tokens` ids: the prompt and the reply under the tokenizer's chat
    template, weights 1 on the reply's assistant tokens only (not on
    assistant turns inside the prompt). A reply that does not fit loses its
    end (`cut_tokens`); a prompt that leaves no room for a reply token is an
    error naming the pair's line."""
    prompts = encode_conversations(tokenizer, [list(p.prompt) for p in pairs],
                                   add_generation_prompt=True)
    whole = encode_conversations(
        tokenizer, [list(p.prompt + reply) for p in pairs for reply in (p.chosen, p.rejected)]
    )
    encoded = []
    for index, (pair, prompt) in enumerate(zip(pairs, prompts)):
        start = len(prompt.ids)
        if start >= max_tokens:
            raise TfchatError(
                f"{pair.where}: the prompt is {start} tokens with the chat template, which "
                f"leaves no room for a reply within model.block_size {max_tokens - 1}; "
                "shorten it or raise model.block_size."
            )
        replies = []
        for e in whole[2 * index: 2 * index + 2]:
            # The pieces are tokenized one by one, so the prompt's ids start
            # the whole conversation's.
            assert e.ids[:start] == prompt.ids, "the prompt's ids must begin the pair's"
            weights = [0] * start + e.weights[start:]
            cut = max(0, len(e.ids) - max_tokens)
            e = dataclasses.replace(e, ids=e.ids[:max_tokens], weights=weights[:max_tokens],
                                    cut_tokens=cut)
            replies.append(e)
        encoded.append(tuple(replies))
    return encoded


def _message_dicts(messages):
    return [{"role": m.role, "content": m.content} for m in messages]


def pair_record(prompt, chosen, rejected):
    """The JSON record of a preference pair (conversational form)."""
    return {"prompt": _message_dicts(prompt), "chosen": _message_dicts(chosen),
            "rejected": _message_dicts(rejected)}


def labelled_record(prompt, completion, label):
    """The JSON record of one reply judged good (True) or bad (False)."""
    return {"prompt": _message_dicts(prompt), "completion": _message_dicts(completion),
            "label": bool(label)}


class FeedbackLog:
    """Appends preference records to a JSONL file, one line per judgement,
    flushed and synced to disk before `add` returns."""

    def __init__(self, path):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise TfchatError(f"Cannot write feedback to {path}: no folder {folder}.")
        # A file cut off mid-line (a crash elsewhere) would glue the next
        # record to the torn one; start on a fresh line.
        self._needs_newline = False
        if os.path.isfile(path) and os.path.getsize(path):
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                self._needs_newline = f.read(1) != b"\n"
        self.records = 0

    def add(self, record):
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self._needs_newline:
            line = "\n" + line
            self._needs_newline = False
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records += 1
