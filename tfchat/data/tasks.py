"""Task formats for chat fine-tuning: translation, summarisation and question
answering records, each read as a conversation of one exchange.

A task corpus is JSONL (`data.path`), one record a line:

    translation     {"source": ..., "target": ...}  (+ "source_lang", "target_lang")
    summarisation   {"document": ..., "summary": ...}
    qa              {"question": ..., "answer": ...}  (+ "context"; "answer" may
                    be a list of acceptable answers: the first is trained on,
                    scoring takes the best)

Other keys are kept out of the prompt and allowed (ids, metadata). `data.task`
names the format, or `auto` (the default) reads it from the first record's
keys ("messages" is a conversation: task none). Every record becomes the
conversation [user: the rendered prompt, assistant: target | summary |
answer], so the chat objective trains on it as on any conversation, and
`tfchat.evaluation.tasks` scores its replies with the task's metrics.

The prompt is data: `data.prompt_template`, a Python format string over the
record's fields (`{source}`, `{source_lang}`, `{target_lang}`, `{document}`,
`{question}`, `{context}`; `{{` and `}}` for literal braces). An optional
field a record lacks renders empty. Empty, the task's default
(`DEFAULT_TEMPLATES`) is used, leaving out the parts about an optional
field the record lacks ("Translate: ..." without languages, no "Context:"
without a context).

A record that lacks a key, or whose value is not a non-empty string, stops
the run with `TfchatError` naming the file and line.
"""

import dataclasses
import string

from tfchat.data.chat_template import Message
from tfchat.data.files import (
    YAML_SUFFIXES, check_split, first_jsonl_record, read_json_lines, resolve_files, split_records,
)
from tfchat.errors import TfchatError

TASKS = ("translation", "summarisation", "qa")  # tfchat.config.TASKS, with auto and none
# Per task: (required fields, the one the assistant writes; optional fields).
# The required fields other than the reply are the prompt's.
FIELDS = {
    "translation": (("source", "target"), ("source_lang", "target_lang")),
    "summarisation": (("document", "summary"), ()),
    "qa": (("question", "answer"), ("context",)),
}
REPLY_FIELD = {"translation": "target", "summarisation": "summary", "qa": "answer"}
# The field every template of the task must name (the prompt's content).
MAIN_FIELD = {"translation": "source", "summarisation": "document", "qa": "question"}

# The default prompts. Parts in `_OPTIONAL_PARTS` are left out of a record
# that lacks their field. Listed in `data.prompt_template`'s --help
# (tfchat/config.py; tests/test_tasks.py checks they agree).
DEFAULT_TEMPLATES = {
    "translation": "Translate from {source_lang} to {target_lang}: {source}",
    "summarisation": "Summarise: {document}",
    "qa": "Context: {context} Question: {question}",
}
_OPTIONAL_PARTS = {
    "translation": {"source_lang": " from {source_lang}", "target_lang": " to {target_lang}"},
    "qa": {"context": "Context: {context} "},
}


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """What scoring needs of a record beyond its conversation: the task, the
    acceptable replies (the first is trained on) and the target language."""

    task: str
    references: tuple
    target_lang: str = ""
    group: str = ""  # its data.group_field value, if any


class TaskConversation(list):
    """A task record's conversation: a list of `Message` (what every chat
    reader gives) that also carries its `TaskRecord` as `.record`."""

    def __init__(self, messages, record):
        super().__init__(messages)
        self.record = record


def detect_task(record):
    """The task a record's keys name: "none" for a conversation
    ("messages") or anything else, else one of TASKS."""
    if not isinstance(record, dict) or "messages" in record:
        return "none"
    for task in TASKS:
        if all(key in record for key in FIELDS[task][0]):
            return task
    # A record with some of a task's own fields (not "source", which many
    # documents carry as metadata), and no text: that task, short of a
    # field, which reading it then names with its file and line.
    if "text" not in record:
        for task in ("summarisation", "qa"):
            if any(key in record for key in FIELDS[task][0]):
                return task
    return "none"


def corpus_task(data_config):
    """The task of `data.path`: `data.task` where it names one (or none),
    else (`auto`) that of the first JSONL record (`detect_task`). A task
    on data that is not JSONL is an error."""
    task = data_config.task
    if task == "auto":
        return detect_task(first_jsonl_record(data_config))
    if task in TASKS:
        path = data_config.path
        if path.startswith("chatterbot:") or any(f.endswith(YAML_SUFFIXES)
                                                  for f in resolve_files(path)):
            raise TfchatError(
                f"data.task {task} reads JSONL records ({', '.join(FIELDS[task][0])}); "
                f"{path} is chatterbot YAML."
            )
    return task


def is_task_data(data_config):
    """Whether `data.path` holds task records (`objective: auto` trains them
    as chat)."""
    return corpus_task(data_config) in TASKS


def template_fields(template):
    """The field names a format string names; a malformed one (unbalanced
    braces, `{0}`, `{a.b}`, `{a[0]}`) raises ValueError."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"{{{name}}} is not a field name")
        names.append(name)
    return names


def check_template(task, template):
    """Raises `TfchatError` unless `template` (data.prompt_template) can
    render `task`'s records: fields of the task's prompt only, its main
    field among them."""
    prompt_fields = [f for f in (*FIELDS[task][0], *FIELDS[task][1]) if f != REPLY_FIELD[task]]
    try:
        names = template_fields(template)
    except ValueError as e:
        raise TfchatError(f"data.prompt_template {template!r} does not parse ({e}); "
                          "write literal braces as {{ and }}.") from None
    unknown = sorted(set(names) - set(prompt_fields))
    if unknown:
        raise TfchatError(
            f"data.prompt_template names {', '.join('{' + n + '}' for n in unknown)}, which "
            f"task {task} records have no prompt field for; use "
            f"{', '.join('{' + f + '}' for f in prompt_fields)}."
        )
    if MAIN_FIELD[task] not in names:
        raise TfchatError(
            f"data.prompt_template must name {{{MAIN_FIELD[task]}}}, the {task} record's "
            "content, or the prompt would not say what to answer."
        )


def default_template(task, record):
    """`DEFAULT_TEMPLATES[task]` without the parts about the optional
    fields `record` lacks."""
    if task == "translation":
        parts = _OPTIONAL_PARTS[task]
        return ("Translate" + "".join(parts[f] for f in parts if record.get(f))
                + ": {source}")
    if task == "qa" and not record.get("context"):
        return DEFAULT_TEMPLATES[task].replace(_OPTIONAL_PARTS[task]["context"], "")
    return DEFAULT_TEMPLATES[task]


def render_prompt(task, record, template=""):
    """The user message of `record`: `template` (or the task's default)
    filled in with its fields, an optional field it lacks as ""."""
    values = {f: record.get(f, "") for f in (*FIELDS[task][0], *FIELDS[task][1])}
    return (template or default_template(task, record)).format(**values)


def _string(record, key, where, required):
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise TfchatError(f'{where}: "{key}" must be a non-empty string.')
    return value


def task_conversation(task, record, where, template=""):
    """`record` checked and made a `TaskConversation`; a problem raises
    `TfchatError` prefixed by `where` (the file and line)."""
    required, optional = FIELDS[task]
    if not isinstance(record, dict):
        raise TfchatError(f"{where}: expected an object with {', '.join(map(repr, required))} "
                          f"(a {task} record).")
    missing = [key for key in required if key not in record]
    if missing:
        has = ", ".join(map(repr, sorted(record))) or "no keys"
        raise TfchatError(
            f"{where}: a {task} record needs {' and '.join(map(repr, required))}; this one "
            f"lacks {', '.join(map(repr, missing))} (it has {has})."
        )
    reply_field = REPLY_FIELD[task]
    fields = {}
    for key in (*required, *optional):
        if key == "answer" and isinstance(record[key], list):
            answers = record[key]
            if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
                raise TfchatError(f'{where}: "answer" must be a non-empty string or a list '
                                  "of them.")
            fields[key] = answers
        else:
            fields[key] = _string(record, key, where, key in required)
    references = fields[reply_field]
    references = tuple(references) if isinstance(references, list) else (references,)
    prompt_values = {k: v for k, v in fields.items() if k != reply_field}
    messages = [Message("user", render_prompt(task, prompt_values, template)),
                Message("assistant", references[0])]
    return TaskConversation(messages, TaskRecord(task, references, fields.get("target_lang", "")))


def _group(record, field, where):
    if field not in record:
        raise TfchatError(f"{where}: no field {field!r} (data.group_field).")
    value = record[field]
    if value is None or isinstance(value, (bool, dict, list)) or not str(value).strip():
        raise TfchatError(f"{where}: group field {field!r} (data.group_field) must be a "
                          f"non-empty string or a number. Received: {value!r}")
    return str(value).strip()


def read_task_jsonl(path, task, data_config):
    """The `TaskConversation`s of a JSONL file of `task` records, rendered
    with `data.prompt_template` (checked first)."""
    template = data_config.prompt_template
    if template:
        check_template(task, template)
    field = getattr(data_config, "group_field", "")
    conversations = []
    for number, record in read_json_lines(path, data_config.encoding_errors):
        where = f"{path} line {number}"
        conversation = task_conversation(task, record, where, template)
        if field:
            conversation.record = dataclasses.replace(conversation.record,
                                                      group=_group(record, field, where))
        conversations.append(conversation)
    return conversations


class TaskCorpus:
    """A checked task corpus (JSONL records of one task), split into train
    and validation like a `DialogueCorpus`, whose interface it has:
    `conversations(split)` (`TaskConversation`s), `iter_texts(split)`,
    `groups(split)`, `num_conversations`; and `task`."""

    def __init__(self, data_config, task):
        self.config = data_config
        self.path = data_config.path
        self.task = task
        self._all = []
        for path in resolve_files(self.path):
            self._all += read_task_jsonl(path, task, data_config)
        self._splits = split_records(self._all, data_config.val_fraction, self.path,
                                     f"{task} records")

    @classmethod
    def for_data(cls, data_config):
        """The `TaskCorpus` of `data.path` if it holds task records
        (`corpus_task`), else None; a prompt template for data that holds
        none is an error."""
        task = corpus_task(data_config)
        if task in TASKS:
            return cls(data_config, task)
        if data_config.prompt_template:
            raise TfchatError(
                f"data.prompt_template renders task records ({', '.join(TASKS)}), but "
                f"{data_config.path} holds conversations (data.task {data_config.task}); "
                "leave it empty or set data.task."
            )
        return None

    @property
    def num_conversations(self):
        return len(self._all)

    def conversations(self, split):
        return self._splits[check_split(split)]

    def groups(self, split):
        """Each record's group (`data.group_field`, a top-level field), in
        `conversations(split)`'s order; None without a group field."""
        if not getattr(self.config, "group_field", ""):
            return None
        return [c.record.group for c in self.conversations(split)]

    def iter_texts(self, split):
        for messages in self.conversations(split):
            for m in messages:
                yield m.content
