"""Property-based tests for the chat template and the dialogue, YAML and
labelled-CSV readers."""

import json
import os
import tempfile

import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfchat.data.chat_template import (
    END_OF_TURN, MARKERS, ROLES, Message, encode_conversation, render_prompt_tf, render_text,
)
from tfchat.data.dialogues import read_messages_jsonl
from tfchat.data.tokenizer import CharTokenizer
from tfchat.errors import TfchatError

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECIALS = tuple(MARKERS.values()) + (END_OF_TURN,)

# Message text: anything, but not the special markers themselves (a user
# typing "<|end|>" is a separate question from the template's behaviour).
content = st.text(max_size=12).filter(lambda t: not any(s in t for s in SPECIALS))
conversation = st.lists(
    st.builds(Message, st.sampled_from(ROLES), content), min_size=1, max_size=6
)


@FUZZ
@given(conversation)
def test_graph_and_python_render_the_same_prompt(messages):
    graph = render_prompt_tf([m.role for m in messages], [m.content for m in messages])
    assert graph.numpy().decode("utf-8") == render_text(messages, add_generation_prompt=True)


@FUZZ
@given(conversation)
def test_weights_cover_exactly_the_assistant_turns(messages):
    text = render_text(messages)
    tokenizer = CharTokenizer.train([text + "x"])
    encoded = encode_conversation(tokenizer, messages)
    learned = [i for i, w in zip(encoded.ids, encoded.weights) if w]
    # Turns after the last assistant reply are dropped from training text.
    expected = "".join(m.content + END_OF_TURN for m in messages if m.role == "assistant")
    # <|end|> detokenizes to its own text, so it shows in `got` too.
    got = tokenizer.detokenize(tf.constant([learned], tf.int32)).numpy()[0].decode("utf-8")
    assert got == expected
    assert len(encoded.ids) == len(encoded.weights)


record = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(ROLES + ("robot",)),
                                    "content": st.text(max_size=10)}), max_size=4)
    .map(lambda m: json.dumps({"messages": m})),
    st.text(max_size=20),
    st.just('{"messages": "not a list"}'),
    st.just('{"messages": [{"role": "user", "content": 3}]}'),
    st.integers(1, 20000).map(lambda d: "[" * d + "]" * d),
)


@FUZZ
@given(st.lists(record, min_size=1, max_size=6))
def test_messages_jsonl_is_read_or_rejected_naming_its_line(lines):
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    try:
        try:
            conversations = read_messages_jsonl(path)
        except TfchatError as e:
            assert f"{path} line " in str(e)
            number = int(str(e).split(" line ")[1].split(":")[0])
            assert 1 <= number <= len(lines)
            return
        # Everything read is a list of known-role messages.
        for messages in conversations:
            assert messages and all(m.role in ROLES for m in messages)
    finally:
        os.unlink(path)


def read_bytes_as_file(suffix, data, read):
    """Writes `data` to a temporary file and returns `read(path)`, or None
    when the reader refused the file with an error that names it."""
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        return read(path)
    except TfchatError as e:
        assert str(e).startswith(path)
        return None
    finally:
        os.unlink(path)


@FUZZ
@given(st.binary(max_size=300))
def test_chatterbot_yaml_reader_survives_random_bytes(data):
    from tfchat.data.dialogues import read_chatterbot_yaml

    conversations = read_bytes_as_file(".yml", b"conversations:\n- - " + data,
                                       read_chatterbot_yaml)
    for messages in conversations or []:
        assert all(m.role in ROLES for m in messages)


@FUZZ
@given(st.binary(max_size=300))
def test_labelled_csv_reader_survives_random_bytes(data):
    from tfchat.data.labelled import _read_csv

    rows = read_bytes_as_file(".csv", b"text,label\n" + data,
                              lambda path: list(_read_csv(path, "text", "label")))
    # What is read are (text, label) pairs of non-empty strings.
    assert all(isinstance(t, str) and isinstance(label, str) and t.strip() and label.strip()
               for t, label in rows or [])
