"""Dialogue corpora for chat fine-tuning: read, check and split conversations.

A dialogue corpus (`data.path`) is one of:
  * JSONL, one conversation per line in the widely used messages form:
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}]}
  * chatterbot-corpus YAML (a file, a directory or a glob of them): each
    conversation is a list of turns that alternate user, assistant, user...
  * `chatterbot:<language>`: the conversations of the chatterbot-corpus
    package itself (`tfchat.data.files.read_chatterbot_package`).

Every conversation is checked before training starts: known roles only, no
empty content, a system message only first, at least one assistant turn.
A problem raises `TfchatError` naming the file and line.

Conversations are split like documents in `tfchat.data.corpus`: conversation
i is held out when the running count floor(i * val_fraction) steps up, an
even, deterministic spread. Unlike plain-text corpora, dialogue corpora are
held in memory: each conversation is rendered whole (to truncate it from the
oldest turns), and a conversation is small.
"""

from tfchat.data.chat_template import ROLES, Message
from tfchat.data.files import (
    YAML_SUFFIXES, check_split, first_jsonl_record, read_chatterbot_file,
    read_chatterbot_package, read_json_lines, resolve_files, split_records,
)
from tfchat.errors import TfchatError



def is_dialogue_data(data_config):
    """Whether `data.path` holds conversations rather than plain text: the
    chatterbot package, YAML files, or JSONL whose first record has
    "messages". Decides `objective: auto`."""
    path = data_config.path
    if path.startswith("chatterbot:"):
        return True
    if all(f.endswith(YAML_SUFFIXES) for f in resolve_files(path)):
        return True
    record = first_jsonl_record(data_config)
    return record is not None and "messages" in record


def check_conversation(messages, where):
    """Raises `TfchatError` (prefixed by `where`) unless `messages` is a
    conversation tfchat can train on."""
    for number, m in enumerate(messages, start=1):
        if m.role not in ROLES:
            raise TfchatError(
                f"{where}: message {number} has unknown role {m.role!r}; "
                f"roles are {', '.join(ROLES)}."
            )
        if not m.content.strip():
            raise TfchatError(f"{where}: message {number} ({m.role}) has empty content.")
        if m.role == "system" and number > 1:
            raise TfchatError(f"{where}: a system message may only come first (message {number}).")
    if not any(m.role == "assistant" for m in messages):
        raise TfchatError(f"{where}: the conversation has no assistant turn.")


def read_messages_jsonl(path):
    """Conversations of a messages-form JSONL file; blank lines are skipped."""
    conversations = []
    for number, record in read_json_lines(path):
        where = f"{path} line {number}"
        turns = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(turns, list):
            raise TfchatError(
                f'{where}: expected an object {{"messages": [{{"role": ..., "content": ...}}, ...]}}.'
            )
        messages = []
        for index, turn in enumerate(turns, start=1):
            if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)
                    and isinstance(turn.get("content"), str)):
                raise TfchatError(
                    f'{where}: message {index} must be {{"role": "...", "content": "..."}} '
                    "with string values."
                )
            messages.append(Message(turn["role"], turn["content"]))
        check_conversation(messages, where)
        conversations.append(messages)
    return conversations


def read_chatterbot_yaml(path):
    """Conversations of a chatterbot-corpus YAML file; turns alternate user
    and assistant. Read by `tfchat.data.files.read_chatterbot_file`: turns
    are the text as written, and errors give the file and line."""
    return [_chatterbot_messages(c) for c in read_chatterbot_file(path)]


def _chatterbot_messages(conversation):
    messages = [
        Message("user" if i % 2 == 0 else "assistant", turn)
        for i, turn in enumerate(conversation.turns)
    ]
    check_conversation(messages, conversation.where)
    return messages


class DialogueCorpus:
    """A checked dialogue corpus, split into train and validation.

    `conversations(split)` is a list of conversations (lists of `Message`);
    `iter_texts(split)` yields every message's content, to train a tokenizer.
    """

    def __init__(self, data_config):
        self.config = data_config
        self.path = data_config.path
        if self.path.startswith("chatterbot:"):
            language = self.path.split(":", 1)[1]
            self._all = [
                _chatterbot_messages(c) for c in read_chatterbot_package(language)
            ]
        else:
            self._all = []
            for path in resolve_files(self.path):
                if path.endswith(YAML_SUFFIXES):
                    self._all += read_chatterbot_yaml(path)
                else:
                    self._all += read_messages_jsonl(path)
        self._splits = split_records(self._all, data_config.val_fraction, self.path,
                                     "conversations")

    @property
    def num_conversations(self):
        return len(self._all)

    def conversations(self, split):
        return self._splits[check_split(split)]

    def iter_texts(self, split):
        for messages in self.conversations(split):
            for m in messages:
                yield m.content
