"""The chat template: rendering, the assistant-token weights, truncation, and
the in-graph prompt renderer; for the char and the BPE tokenizer."""

import pytest
import tensorflow as tf

from tfchat.data.chat_template import (
    END_OF_TURN,
    MARKERS,
    Message,
    encode_conversation,
    encode_conversations,
    render_prompt_tf,
    render_text,
)
from tfchat.data.pipeline import chat_dataset
from tfchat.data.tokenizer import CharTokenizer, SentencePieceTokenizer

CONVERSATION = [
    Message("system", "You are terse."),
    Message("user", "Hi! How are you?"),
    Message("assistant", "Fine, thanks."),
    Message("user", "And the weather\nthere?"),
    Message("assistant", "Sunny; café open. 🙂"),
]
TEXTS = [m.content for m in CONVERSATION] + [
    "the quick brown fox jumps over the lazy dog " * 20,
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"-()\n",
]


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(request):
    if request.param == "char":
        return CharTokenizer.train(TEXTS)
    return SentencePieceTokenizer.train(TEXTS * 20, 400)


def tokenize(tokenizer, text):
    return tokenizer.tokenize(tf.constant(text)).numpy().tolist()


def test_render_text_format():
    text = render_text(CONVERSATION[:3], add_generation_prompt=False)
    assert text == (
        "<|system|>You are terse.<|end|><|user|>Hi! How are you?<|end|>"
        "<|assistant|>Fine, thanks.<|end|>"
    )
    assert render_text(CONVERSATION[:2], add_generation_prompt=True).endswith(
        "<|end|><|assistant|>"
    )


def test_weights_mark_exactly_the_assistant_tokens(tokenizer):
    encoded = encode_conversation(tokenizer, CONVERSATION)
    assert not encoded.truncated
    # The ids are what the rendered string tokenizes to, so training and
    # the string-based (exported) prompt path agree.
    assert encoded.ids == tokenize(tokenizer, render_text(CONVERSATION))
    # Rebuild the expected weights turn by turn, independently.
    end = tokenizer.token_id(END_OF_TURN)
    expected_ids, expected_weights = [], []
    for m in CONVERSATION:
        body = tokenize(tokenizer, m.content)
        learn = int(m.role == "assistant")
        expected_ids += [tokenizer.token_id(MARKERS[m.role])] + body + [end]
        expected_weights += [0] + [learn] * (len(body) + 1)
    assert encoded.ids == expected_ids
    assert encoded.weights == expected_weights
    learned = [t for t, w in zip(encoded.ids, encoded.weights) if w]
    replies = [m.content for m in CONVERSATION if m.role == "assistant"]
    assert learned == tokenize(tokenizer, replies[0]) + [end] + tokenize(tokenizer, replies[1]) + [end]
    # The markers before a reply are context, not something to learn.
    assistant = tokenizer.token_id(MARKERS["assistant"])
    assert all(w == 0 for t, w in zip(encoded.ids, encoded.weights) if t == assistant)


def test_prompt_is_the_training_prefix(tokenizer):
    full = encode_conversation(tokenizer, CONVERSATION)
    prompt = encode_conversation(tokenizer, CONVERSATION[:4], add_generation_prompt=True)
    # The prompt ends at the assistant marker, exactly where training's
    # reply tokens begin.
    assert full.ids[: len(prompt.ids)] == prompt.ids
    assert full.weights[len(prompt.ids)] == 1 and full.weights[len(prompt.ids) - 1] == 0
    assert set(prompt.weights) == {0}


def test_in_graph_prompt_renderer_matches_python(tokenizer):
    conversations = [CONVERSATION[:1] + CONVERSATION[1:2], CONVERSATION[:4], CONVERSATION[1:2]]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    def render(roles, contents):
        return render_prompt_tf(roles, contents)

    for messages in conversations:
        roles = [m.role for m in messages]
        contents = [m.content for m in messages]
        expected = render_text(messages, add_generation_prompt=True)
        assert render(tf.constant(roles), tf.constant(contents)).numpy().decode() == expected
        assert render_prompt_tf(roles, contents).numpy().decode() == expected
        # And the string tokenizes to the prompt ids generation uses.
        prompt = encode_conversation(tokenizer, messages, add_generation_prompt=True)
        assert tokenize(tokenizer, expected) == prompt.ids
    with pytest.raises(tf.errors.InvalidArgumentError, match="role"):
        render_prompt_tf(["user", "bot"], ["a", "b"])


def test_truncation_drops_oldest_exchanges_and_keeps_the_system_message():
    tokenizer = CharTokenizer.train(TEXTS)
    turns = [Message("system", "sys")]
    for i in range(6):
        turns += [Message("user", f"question {i}"), Message("assistant", f"answer {i}")]
    full = encode_conversation(tokenizer, turns)
    budget = len(full.ids) - 10
    trained = encode_conversation(tokenizer, turns, max_tokens=budget)
    assert trained.dropped_messages == 2 and trained.cut_tokens == 0
    assert len(trained.ids) <= budget
    text = tokenizer.detokenize(tf.constant(trained.ids)).numpy().decode()
    assert text.startswith("<|system|>sys<|end|><|user|>question 1<|end|>")
    assert text.endswith("answer 5<|end|>")

    prompt = encode_conversation(tokenizer, turns[:-1], max_tokens=30, add_generation_prompt=True)
    text = tokenizer.detokenize(tf.constant(prompt.ids)).numpy().decode()
    # Only the newest exchange fits (the system message stays) ...
    assert text == "<|system|>sys<|end|><|user|>question 5<|end|><|assistant|>"
    assert prompt.dropped_messages == 10 and prompt.cut_tokens == 0
    # ... and when even that is too long, a prompt keeps its end.
    prompt = encode_conversation(tokenizer, turns[:-1], max_tokens=12, add_generation_prompt=True)
    assert len(prompt.ids) == 12 and prompt.cut_tokens > 0
    assert tokenizer.detokenize(tf.constant(prompt.ids)).numpy().decode().endswith(
        "5<|end|><|assistant|>"
    )
    # A training example too long for the budget keeps its start.
    example = encode_conversation(tokenizer, turns[:3], max_tokens=12)
    assert example.ids == encode_conversation(tokenizer, turns[:3]).ids[:12]
    # A trailing user turn (no reply to learn) is shed before anything
    # else, so it never pushes the last reply out.
    trailing = encode_conversation(tokenizer, turns[:4], max_tokens=len(full.ids))
    assert trailing.ids == encode_conversation(tokenizer, turns[:3]).ids


def test_chat_dataset_aligns_weights_with_targets():
    tokenizer = CharTokenizer.train(TEXTS)
    conversations = [CONVERSATION[1:3], CONVERSATION]
    encoded = encode_conversations(tokenizer, conversations, max_tokens=65)
    x, y, w = next(iter(chat_dataset(encoded, 64, 2, drop_remainder=False, packing=False)))
    x = x["token_ids"]
    assert x.shape == y.shape == w.shape == (2, 64)
    for row, e in enumerate(encoded):
        n = len(e.ids)
        assert x[row, : n - 1].numpy().tolist() == e.ids[:-1]
        assert y[row, : n - 1].numpy().tolist() == e.ids[1:]
        # The weight of each target is the template's weight of that token.
        assert w[row, : n - 1].numpy().tolist() == e.weights[1:]
        assert not w[row, n - 1:].numpy().any()  # padding
        assert not y[row, n - 1:].numpy().any()
