"""Reading the user's data files: the helpers every data module shares.

`tfchat.data.corpus` (causal text), `tfchat.data.dialogues` (chat),
`tfchat.data.preferences` (dpo) and `tfchat.data.labelled` (classification)
all find their files, check UTF-8, read JSONL lines (`read_json_lines`),
hold out examples and name their splits (`check_split`) the same way, with
the functions here. The one reader of chatterbot-corpus YAML lives here
too, so that a `chatterbot:<language>` corpus gives the same turns to each
of them:

  * a turn is the text as written (`yes` stays "yes", `1.0` stays "1.0";
    the YAML is composed, never constructed into booleans or numbers),
    stripped of surrounding whitespace;
  * an empty turn (`-`, `~`, `null`, `''`), a turn that is not text, a
    conversation that is not a list, or one with fewer than two turns (no
    reply) is an error naming the file and line. Dropping the turn instead
    would shift every later turn to the other speaker.

The chatterbot-corpus package itself ships a few conversations that break
these rules (english/trivia.yml has an entry that YAML reads as one long
string); the user cannot fix those, so `chatterbot_conversations` skips them
quietly (a warning on every default run would read as the user's fault) and
keeps every well-formed conversation; `read_chatterbot_package(skipped=[])`
lists what it skipped.
"""

import codecs
import dataclasses
import glob
import json
import math
import os

import yaml

from tfchat.errors import TfchatError

# What `tf.strings.strip` strips.
ASCII_WHITESPACE = " \t\n\v\f\r"
# The splits every corpus holds out (`is_val` decides which).
SPLITS = ("train", "val")
YAML_SUFFIXES = (".yml", ".yaml")
# Files read as one JSON object per line.
JSONL_SUFFIXES = (".jsonl", ".json")
_CHUNK = 1 << 20
_YAML_NULL = "tag:yaml.org,2002:null"


def resolve_files(path):
    """The files of a data path: a file, every file under a directory
    (hidden ones skipped), or a glob; `chatterbot:<language>` has none."""
    if path.startswith("chatterbot:"):
        return []
    if any(c in path for c in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise TfchatError(f"No files match the data path {path!r}.")
        return files
    if os.path.isdir(path):
        files = sorted(
            os.path.join(root, name)
            for root, dirs, names in os.walk(path)
            for name in names
            if not name.startswith(".")
        )
        if not files:
            raise TfchatError(f"No files found under the data directory {path}.")
        return files
    if os.path.isfile(path):
        return [path]
    raise TfchatError(f"Data path not found: {path}")


def count_chars(path, errors="strict"):
    """Counts a file's characters ("\r" excluded) and "\n"s, checking it
    is UTF-8 as it streams (or, with errors="replace", counting each invalid
    sequence as one U+FFFD)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    count = newlines = offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            # Bytes of a character split across chunks wait in the decoder.
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise TfchatError(
                    f"{path} is not UTF-8 text: invalid byte at offset "
                    f"{offset - pending + e.start}."
                ) from None
            count += len(text) - text.count("\r")
            newlines += text.count("\n")
            if not chunk:
                return count, newlines
            offset += len(chunk)


def read_lines(path, errors="strict"):
    """The file's lines as `tf.data.TextLineDataset` splits them (at "\n"
    only), but keeping the "\n", and without carriage returns."""
    with open(path, encoding="utf-8", errors=errors, newline="\n") as f:
        for line in f:
            yield line.replace("\r", "")


def is_val(index, fraction):
    """Whether document `index` is held out (an even 1-in-1/fraction spread)."""
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def check_split(split, choices=SPLITS):
    """`split`, if it is one of `choices`; else the ValueError every corpus
    gives for a split name it does not hold (a caller's mistake, not the
    user's data, hence no TfchatError)."""
    if split not in choices:
        raise ValueError(f"split must be one of {tuple(choices)}. Received: split={split!r}")
    return split


def split_records(records, fraction, path, what, note=""):
    """{"train": [...], "val": [...]} of in-memory records (conversations,
    preference pairs), record i held out where `is_val` says; a split left
    empty is an error naming `path`, how many `what` there are, and `note`."""
    splits = {split: [] for split in SPLITS}
    for i, record in enumerate(records):
        splits["val" if is_val(i, fraction) else "train"].append(record)
    for split, held in splits.items():
        if not held:
            raise TfchatError(
                f"The {split} split of {path} has no {what} ({len(records)} in all{note}, "
                f"data.val_fraction {fraction}); add {what} or change data.val_fraction."
            )
    return splits


def first_jsonl_record(data_config):
    """The first record of `data.path`'s first file when the data is JSONL
    (data.format jsonl, or every file a .jsonl), if it parses to an
    object; else None. What `objective: auto` decides by."""
    if data_config.path.startswith("chatterbot:") or data_config.format not in ("auto", "jsonl"):
        return None
    files = resolve_files(data_config.path)
    if not (data_config.format == "jsonl" or all(f.endswith(JSONL_SUFFIXES) for f in files)):
        return None
    for line in read_lines(files[0]):
        if line.strip(ASCII_WHITESPACE):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                return None
            return record if isinstance(record, dict) else None
    return None


def read_json_lines(path, errors="strict"):
    """(line number, parsed value) for every non-blank line of a JSONL file;
    a line that is not JSON raises `TfchatError` naming the file and line.

    Every JSONL reader (text documents, labelled examples, conversations,
    preference pairs) goes through here, so that one file gives the same
    lines, line numbers and errors whatever reads it. Lines are those of
    `read_lines`, "blank" is what `tf.strings.strip` strips: the causal
    pipeline streams the same file with `tf.data.TextLineDataset` and
    must count the same documents. `errors` is `data.encoding_errors`."""
    count_chars(path, errors)  # fails with the byte offset if not UTF-8
    for number, line in enumerate(read_lines(path, errors), start=1):
        if not line.strip(ASCII_WHITESPACE):
            continue
        try:
            yield number, json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise TfchatError(f"{path} line {number}: not valid JSON ({e}).") from None


# --- chatterbot-corpus YAML ---


@dataclasses.dataclass(frozen=True)
class ChatterbotConversation:
    """One conversation of a chatterbot-corpus file: its turns (user, bot,
    user, ...) as written, and the file and line it starts on."""

    path: str
    line: int
    turns: tuple

    @property
    def where(self):
        return f"{self.path} line {self.line}"

    @property
    def category(self):
        """The file's name without its suffix (ai, food, ...), as the
        chatterbot package names its categories."""
        return os.path.splitext(os.path.basename(self.path))[0]


def read_chatterbot_file(path, skipped=None):
    """The conversations of a chatterbot-corpus YAML file (a list of
    `ChatterbotConversation`). The YAML is composed node by node, so turns
    keep the text written and errors give lines. A file that is not such
    YAML always raises `TfchatError`; a bad conversation does too, unless
    `skipped` is a list, which then gets its error message instead."""
    count_chars(path)  # fails with the byte offset if not UTF-8
    with open(path, encoding="utf-8") as f:
        try:
            root = yaml.compose(f, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = f" line {mark.line + 1}" if mark else ""
            raise TfchatError(f"{path}{line}: not valid YAML ({e.problem}).") from None
        except yaml.YAMLError as e:
            raise TfchatError(f"{path}: not valid YAML ({e}).") from None
    node = _mapping_value(root, "conversations")
    if not isinstance(node, yaml.SequenceNode):
        raise TfchatError(
            f"{path}: expected a chatterbot-corpus file with a 'conversations' "
            "list of turn lists."
        )
    conversations = []
    for entry in node.value:
        try:
            conversations.append(_read_conversation(path, entry))
        except TfchatError as e:
            if skipped is None:
                raise
            skipped.append(str(e))
    return conversations


def _read_conversation(path, node):
    where = f"{path} line {node.start_mark.line + 1}"
    if not isinstance(node, yaml.SequenceNode):
        raise TfchatError(f"{where}: a conversation must be a list of turns.")
    turns = []
    for index, turn in enumerate(node.value):
        line = turn.start_mark.line + 1
        if not isinstance(turn, yaml.ScalarNode):
            raise TfchatError(f"{path} line {line}: a turn must be text.")
        if turn.tag == _YAML_NULL or not turn.value.strip():
            role = "user" if index % 2 == 0 else "assistant"
            raise TfchatError(f"{path} line {line}: turn {index + 1} ({role}) is empty.")
        turns.append(turn.value.strip())
    if len(turns) < 2:
        raise TfchatError(f"{where}: the conversation has no assistant turn.")
    return ChatterbotConversation(path, node.start_mark.line + 1, tuple(turns))


def _mapping_value(node, key):
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def chatterbot_folder(language):
    """The folder of the chatterbot-corpus package's `language` files."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise TfchatError(
            "The chatterbot-corpus package is not installed "
            "(pip install chatterbot-corpus)."
        ) from None
    folder = os.path.join(os.path.dirname(chatterbot_corpus.__file__), "data", language)
    if not os.path.isdir(folder):
        raise TfchatError(f"chatterbot-corpus has no language {language!r}.")
    return folder


def read_chatterbot_package(language="english", skipped=None):
    """Every well-formed conversation (`ChatterbotConversation`) of the
    chatterbot-corpus package's `language`, file by file in name order; the
    malformed ones the package ships are skipped, and their messages
    appended to `skipped` when it is a list."""
    folder = chatterbot_folder(language)
    conversations, skipped = [], [] if skipped is None else skipped
    for name in sorted(os.listdir(folder)):
        if name.endswith(YAML_SUFFIXES):
            conversations += read_chatterbot_file(os.path.join(folder, name), skipped)
    return conversations


def chatterbot_conversations(language="english"):
    """Yields (category, [turn, ...]) for each conversation of the
    chatterbot-corpus package (see `read_chatterbot_package`)."""
    for conversation in read_chatterbot_package(language):
        yield conversation.category, list(conversation.turns)


def write_json_atomic(path, value, indent=2):
    """Writes `value` as JSON to `path` through a temporary file renamed into
    place, so a crash never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=indent, ensure_ascii=False)
    os.replace(tmp, path)
