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

With `data.group_field` every conversation has a group, which evaluation
reports reply scores per (`tfchat.evaluation.fairness`): in JSONL, a
top-level field of the record (or a field of its "metadata" object); in
chatterbot YAML and `chatterbot:<language>`, only `category` (the file's).
`groups(split)` lists them in `conversations(split)`'s order.
"""

from tfchat.data.chat_template import ROLES, Message
from tfchat.data.files import (
    YAML_SUFFIXES, check_split, first_jsonl_record, read_chatterbot_file,
    read_chatterbot_package, read_json_lines, resolve_files, split_records,
)
from tfchat.data.tasks import is_task_data
from tfchat.errors import TfchatError



def is_dialogue_data(data_config):
    """Whether `data.path` holds conversations rather than plain text: the
    chatterbot package, YAML files, JSONL whose first record has
    "messages", or task records (`tfchat.data.tasks`). Decides
    `objective: auto`."""
    path = data_config.path
    if path.startswith("chatterbot:"):
        return True
    if all(f.endswith(YAML_SUFFIXES) for f in resolve_files(path)):
        return True
    record = first_jsonl_record(data_config)
    # Task records (translation, summarisation, qa) are read as conversations.
    return (record is not None and "messages" in record) or is_task_data(data_config)


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


def conversation_group(record, field, where):
    """The group of a conversation record (`data.group_field`): its
    top-level `field`, else that field of its "metadata" object; missing or
    not a string or number is an error prefixed by `where` (file and line)."""
    metadata = record.get("metadata")
    if field in record:
        value = record[field]
    elif isinstance(metadata, dict) and field in metadata:
        value = metadata[field]
    else:
        raise TfchatError(f"{where}: no field {field!r} (data.group_field), at the top "
                          "level or in \"metadata\".")
    if value is None or isinstance(value, (bool, dict, list)) or not str(value).strip():
        raise TfchatError(f"{where}: group field {field!r} (data.group_field) must be a "
                          f"non-empty string or a number. Received: {value!r}")
    return str(value).strip()


def read_messages_jsonl(path, group_field="", groups=None):
    """Conversations of a messages-form JSONL file; blank lines are skipped.
    With `group_field`, each conversation's group is appended to `groups`."""
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
        if group_field:
            groups.append(conversation_group(record, group_field, where))
        conversations.append(messages)
    return conversations


def read_chatterbot_yaml(path):
    """Conversations of a chatterbot-corpus YAML file; turns alternate user
    and assistant. Read by `tfchat.data.files.read_chatterbot_file`: turns
    are the text as written, and errors give the file and line."""
    return [_chatterbot_messages(c) for c in read_chatterbot_file(path)]


def _chatterbot_group(conversation, field):
    if field != "category":
        raise TfchatError(f"data.group_field {field!r}: {conversation.where} is chatterbot "
                          "YAML, whose only group is its file's category (group_field category).")
    return conversation.category


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
        field = getattr(data_config, "group_field", "")
        groups = []
        if self.path.startswith("chatterbot:"):
            language = self.path.split(":", 1)[1]
            package = read_chatterbot_package(language)
            self._all = [_chatterbot_messages(c) for c in package]
            groups += [_chatterbot_group(c, field) for c in package if field]
        else:
            self._all = []
            for path in resolve_files(self.path):
                if path.endswith(YAML_SUFFIXES):
                    read = read_chatterbot_file(path)
                    self._all += [_chatterbot_messages(c) for c in read]
                    groups += [_chatterbot_group(c, field) for c in read if field]
                else:
                    self._all += read_messages_jsonl(path, field, groups)
        self._splits = split_records(self._all, data_config.val_fraction, self.path,
                                     "conversations")
        self._groups = (split_records(groups, data_config.val_fraction, self.path,
                                      "conversations") if field else None)

    @property
    def num_conversations(self):
        return len(self._all)

    def conversations(self, split):
        return self._splits[check_split(split)]

    def groups(self, split):
        """Each conversation's group (`data.group_field`), in
        `conversations(split)`'s order; None without a group field."""
        return None if self._groups is None else self._groups[check_split(split)]

    def iter_texts(self, split):
        for messages in self.conversations(split):
            for m in messages:
                yield m.content
