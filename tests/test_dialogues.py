"""Dialogue corpora: messages JSONL and chatterbot YAML, the split by
conversation, `objective: auto`, and every kind of bad input."""

import json
import sys
import types

import pytest

from conftest import write_chat_jsonl, write_jsonl, write_text
from tfchat import config as config_lib
from tfchat import fit, objectives
from tfchat.config import DataConfig
from tfchat.data import corpus as corpus_lib
from tfchat.data import files as files_lib
from tfchat.data.chat_template import Message
from tfchat.data.corpus import Corpus
from tfchat.data.dialogues import DialogueCorpus, is_dialogue_data, read_chatterbot_yaml
from tfchat.data.labelled import read_labelled
from tfchat.errors import TfchatError

CHATTERBOT_YAML = """\
categories:
- greetings
conversations:
- - Hello
  - Hi there!
- - How are you?
  - I am fine.
  - Good to hear.
  - Thanks.
- - 42
  - The answer.
"""


def numbered(n):
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(n)]


def test_messages_jsonl_and_split_by_conversation(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", numbered(40))
    corpus = DialogueCorpus(DataConfig(path=path, val_fraction=0.1))
    train, val = corpus.conversations("train"), corpus.conversations("val")
    assert corpus.num_conversations == 40 and len(train) == 36 and len(val) == 4
    # Whole conversations go to one side, spread evenly, the same every time.
    questions = lambda split: [c[0].content for c in split]  # noqa: E731
    assert sorted(questions(train) + questions(val), key=lambda q: int(q.split()[1])) == [
        f"question {i}" for i in range(40)
    ]
    assert questions(val) == ["question 9", "question 19", "question 29", "question 39"]
    again = DialogueCorpus(DataConfig(path=path, val_fraction=0.1))
    assert again.conversations("val") == val
    assert val[0] == [Message("user", "question 9"), Message("assistant", "answer 9")]
    assert list(corpus.iter_texts("val"))[:2] == ["question 9", "answer 9"]


def test_chatterbot_yaml_turns_alternate(tmp_path):
    path = write_text(tmp_path / "greetings.yml", CHATTERBOT_YAML)
    conversations = read_chatterbot_yaml(path)
    assert conversations[0] == [Message("user", "Hello"), Message("assistant", "Hi there!")]
    assert [m.role for m in conversations[1]] == ["user", "assistant", "user", "assistant"]
    assert conversations[2][0] == Message("user", "42")


def test_chatterbot_package_corpus():
    corpus = DialogueCorpus(DataConfig(path="chatterbot:english"))
    assert corpus.num_conversations > 1000
    for messages in corpus.conversations("val")[:50]:
        assert messages[0].role == "user" and messages[1].role == "assistant"


def test_objective_auto_follows_the_data(tmp_path):
    def objective(path, **data):
        settings = {"data": {"path": path, **data}}
        return objectives.resolve(config_lib.build_config(overrides=settings)).objective

    assert config_lib.Config().objective == "auto"
    assert objective("chatterbot:english") == "chat"
    assert objective(write_chat_jsonl(tmp_path / "chats.jsonl")) == "chat"
    assert objective(write_text(tmp_path / "c.yaml", CHATTERBOT_YAML)) == "chat"
    assert objective(write_text(tmp_path / "book.txt", "some text\n" * 10)) == "causal"
    assert objective(write_jsonl(tmp_path / "docs.jsonl", [{"text": "a"}] * 3)) == "causal"
    explicit = config_lib.build_config(overrides={"objective": "causal"})
    assert objectives.resolve(explicit).objective == "causal"
    assert not is_dialogue_data(DataConfig(path=str(tmp_path / "book.txt")))


BAD_JSONL = [
    ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: the conversation has no assistant turn"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "line 2: message 1 has unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}',
     "line 2: message 1 (user) has empty content"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}',
     "line 2: not valid JSON"),
    ('{"text": "hi"}', "line 2: expected an object"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}',
     "line 2: message 1 must be"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, '
     '{"role": "assistant", "content": "c"}]}', "line 2: a system message may only come first"),
]


@pytest.mark.parametrize("line,message", BAD_JSONL)
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    good = json.dumps(numbered(1)[0])
    path = write_text(tmp_path / "chats.jsonl", good + "\n" + line + "\n")
    with pytest.raises(TfchatError) as e:
        DialogueCorpus(DataConfig(path=path))
    assert str(e.value).startswith(path) and message in str(e.value)


BAD_YAML = [
    ("conversations:\n- - Hello\n  - [unclosed\n", "line 4: not valid YAML"),
    ("conversations:\n- - Hello\n  - Hi\n- - Lonely question\n", "line 4: the conversation has no assistant turn"),
    ("conversations:\n- - Hello\n  -\n", "line 3: turn 2 (assistant) is empty"),
    ("categories: [a]\n", "expected a chatterbot-corpus file"),
]


@pytest.mark.parametrize("text,message", BAD_YAML)
def test_bad_yaml_names_file_and_line(tmp_path, text, message):
    path = write_text(tmp_path / "bad.yml", text)
    with pytest.raises(TfchatError) as e:
        DialogueCorpus(DataConfig(path=path))
    assert str(e.value).startswith(path) and message in str(e.value)


def test_too_few_conversations_to_hold_one_out(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", numbered(3))
    with pytest.raises(TfchatError, match="val split .* no conversations"):
        DialogueCorpus(DataConfig(path=path, val_fraction=0.1))


def test_fit_reports_bad_dialogue_data_in_one_line(tmp_path, capsys):
    path = write_text(tmp_path / "chats.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n')
    code = fit.main(["--data.path", path, "--runs_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"error: {path} line 1: the conversation has no assistant turn.\n"


# --- one reader of chatterbot YAML for the causal, chat and labelled paths ---

QUIRKS_YAML = """\
categories:
- quirks
conversations:
- - yes
  - no
- - 1.50
  - 007
- - true
  - off
- - Hello
  -
  - Hi
- - ~
  - Nothing was said.
- - 'null'
  - "a quoted null stays text"
- - 2001-01-01
  - 0x1F
"""
PLAIN_YAML = """\
conversations:
- - Good morning
  - Morning!
- - How are you?
  - Fine, thanks.
  - Glad to hear it.
  - Bye.
"""
# What every path reads from the two files above (plain.yml first, by name):
# turns are the text as written, and a conversation with an empty turn is
# left out whole rather than shifting its later turns to the other speaker.
FAKE_PACKAGE_TURNS = [
    ("plain", ("Good morning", "Morning!")),
    ("plain", ("How are you?", "Fine, thanks.", "Glad to hear it.", "Bye.")),
    ("quirks", ("yes", "no")),
    ("quirks", ("1.50", "007")),
    ("quirks", ("true", "off")),
    ("quirks", ("null", "a quoted null stays text")),
    ("quirks", ("2001-01-01", "0x1F")),
]


def fake_chatterbot_package(monkeypatch, tmp_path, files):
    """Makes `import chatterbot_corpus` find a package whose `fake` language
    is `files` (name -> YAML text)."""
    package = tmp_path / "chatterbot_corpus"
    for name, text in files.items():
        write_text(package / "data" / "fake" / name, text)
    module = types.ModuleType("chatterbot_corpus")
    module.__file__ = str(package / "__init__.py")
    monkeypatch.setitem(sys.modules, "chatterbot_corpus", module)


def transcript(turns):
    return "".join(f"{'User' if i % 2 == 0 else 'Bot'}: {t}\n" for i, t in enumerate(turns))


def read_every_way(path, val_fraction=0.1):
    """The conversations of `path` as the causal corpus (transcripts), the
    chat corpus (turn tuples) and the labelled data ((turn, class) pairs) see
    them, each sorted."""
    config = DataConfig(path=path, val_fraction=val_fraction)
    corpus = Corpus(config)
    causal = sorted(list(corpus.iter_texts("train")) + list(corpus.iter_texts("val")))
    dialogues = DialogueCorpus(config)
    chat = []
    for messages in dialogues.conversations("train") + dialogues.conversations("val"):
        assert [m.role for m in messages] == [
            "user" if i % 2 == 0 else "assistant" for i in range(len(messages))
        ]
        chat.append(tuple(m.content for m in messages))
    labelled = read_labelled(config)
    return causal, sorted(chat), sorted(labelled.train + labelled.val)


def assert_read_alike(path, conversations, val_fraction=0.1):
    """Each path reads exactly `conversations` ((category, turns) pairs)."""
    causal, chat, labelled = read_every_way(path, val_fraction)
    assert causal == sorted(transcript(turns) for _, turns in conversations)
    assert chat == sorted(turns for _, turns in conversations)
    assert labelled == sorted({(t, c) for c, turns in conversations for t in turns})


def test_chatterbot_turns_are_the_text_written_on_every_path(tmp_path, monkeypatch):
    fake_chatterbot_package(monkeypatch, tmp_path, {"quirks.yml": QUIRKS_YAML, "plain.yml": PLAIN_YAML})
    assert_read_alike("chatterbot:fake", FAKE_PACKAGE_TURNS, val_fraction=0.5)
    # The two conversations with an empty turn were skipped, and named.
    skipped = []
    files_lib.read_chatterbot_package("fake", skipped)
    assert len(skipped) == 2
    assert "quirks.yml line 11: turn 2 (assistant) is empty" in skipped[0]
    assert "quirks.yml line 13: turn 1 (user) is empty" in skipped[1]
    assert [(c, tuple(t)) for c, t in corpus_lib.chatterbot_conversations("fake")] == FAKE_PACKAGE_TURNS
    # The same files given as a path are the user's to fix: an error.
    with pytest.raises(TfchatError, match=r"quirks.yml line 11: turn 2 \(assistant\) is empty"):
        DialogueCorpus(DataConfig(path=str(tmp_path / "chatterbot_corpus" / "data" / "fake")))
    plain = read_chatterbot_yaml(str(tmp_path / "chatterbot_corpus" / "data" / "fake" / "plain.yml"))
    assert [tuple(m.content for m in c) for c in plain] == [t for _, t in FAKE_PACKAGE_TURNS[:2]]


def test_chatterbot_english_reads_the_same_turns_on_every_path():
    skipped = []
    conversations = [(c.category, c.turns)
                     for c in files_lib.read_chatterbot_package("english", skipped)]
    assert len(conversations) > 2000
    # The package's own malformed entry: english/trivia.yml reads one as a string.
    assert len(skipped) == 1 and "trivia.yml" in skipped[0]
    assert_read_alike("chatterbot:english", conversations)
    # Every turn is whole text: none is a lone character of a string that
    # YAML read as a conversation.
    assert all(len(turns) >= 2 for _, turns in conversations)
    assert sum(len(t) == 1 and not t.isalnum() for _, turns in conversations for t in turns) == 0
