"""The chat template: how a conversation becomes tokens, for training and
for generation alike.

    <|system|>Be brief.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>

Every message is its role's marker, the content, and `<|end|>`. A prompt for
generation is the conversation so far followed by `<|assistant|>`; the model
writes the reply and ends it with `<|end|>`, where generation stops. The
markers are reserved tokens of both tokenizers (`tfchat.data.tokenizer`), so
the rendered text tokenizes to exactly the ids `encode_conversation` builds
(tests check this for char and BPE).

One function, `encode_conversation`, renders both training examples and
prompts, so the two always agree. In training its `weights` are 1 on the
tokens the model should learn to write: every assistant content token and
the `<|end|>` closing an assistant turn; everything else (markers, the system
and user turns) is context with weight 0.

A conversation longer than the token budget loses its oldest exchanges (a
user turn and the replies after it) first; a leading system message is kept.
If the newest exchange alone is still too long, a training example keeps its
first tokens and a prompt its last ones (`cut_tokens` says how many went).
A training example also sheds the turns after its last assistant reply
(they teach nothing).

`render_prompt_tf` is the same prompt rendering as TensorFlow ops, for
exported models (string tensors in, one prompt string out).

Example:
```python
messages = [Message("user", "Hi!"), Message("assistant", "Hello.")]
render_text(messages)        # "<|user|>Hi!<|end|><|assistant|>Hello.<|end|>"
encoded = encode_conversation(tokenizer, messages, max_tokens=129)
encoded.ids, encoded.weights  # weights are 1 on "Hello." and its <|end|>
```
"""

import dataclasses

import tensorflow as tf

ROLES = ("system", "user", "assistant")
MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end|>"


@dataclasses.dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


@dataclasses.dataclass
class Encoded:
    """A rendered conversation: `ids` and per-token `weights` (1 = a token
    the assistant writes), and what truncation left out."""

    ids: list
    weights: list
    dropped_messages: int = 0
    cut_tokens: int = 0

    @property
    def truncated(self):
        return bool(self.dropped_messages or self.cut_tokens)


def render_text(messages, add_generation_prompt=False):
    """The conversation as one string; with `add_generation_prompt`, ending
    in the assistant marker so a model continues with the reply."""
    text = "".join(MARKERS[m.role] + m.content + END_OF_TURN for m in messages)
    return text + (MARKERS["assistant"] if add_generation_prompt else "")


def render_prompt_tf(roles, contents):
    """`render_text(messages, add_generation_prompt=True)` in TensorFlow ops.

    Args:
        roles: string tensor [N], each one of `ROLES`.
        contents: string tensor [N], the messages' texts.

    Returns:
        A scalar string tensor, identical to the Python rendering. An unknown
        role fails with an InvalidArgumentError naming the valid roles.
    """
    roles = tf.convert_to_tensor(roles, tf.string)
    contents = tf.convert_to_tensor(contents, tf.string)
    known = tf.constant(ROLES)
    matches = tf.equal(roles[:, None], known[None, :])  # [N, len(ROLES)]
    check = tf.debugging.assert_equal(
        tf.reduce_all(tf.reduce_any(matches, axis=1)), True,
        message=f"every role must be one of {', '.join(ROLES)}",
    )
    with tf.control_dependencies([check]):
        index = tf.argmax(tf.cast(matches, tf.int32), axis=1)
    markers = tf.gather(tf.constant([MARKERS[r] for r in ROLES]), index)
    turns = tf.strings.reduce_join(markers + contents + END_OF_TURN)
    return turns + MARKERS["assistant"]


def encode_conversation(tokenizer, messages, max_tokens=None, add_generation_prompt=False):
    """Renders one conversation to ids and weights; see module docs."""
    return encode_conversations(
        tokenizer, [messages], max_tokens, add_generation_prompt
    )[0]


def encode_conversations(tokenizer, conversations, max_tokens=None, add_generation_prompt=False):
    """`encode_conversation` for many conversations, tokenizing every
    message's content in one batched call."""
    contents = [m.content for messages in conversations for m in messages]
    # One tokenizer call for all the text: per-message calls would dominate
    # the time to prepare a dialogue corpus.
    content_ids = tokenizer.tokenize(tf.constant(contents, tf.string)).to_list() if contents else []
    end_ids = tokenizer.marker_ids(END_OF_TURN)
    marker_ids = {role: tokenizer.marker_ids(MARKERS[role]) for role in ROLES}
    # A pretrained family's start token opens every conversation.
    start = list(tokenizer.start_ids)
    budget = None if max_tokens is None else max_tokens - len(start)
    encoded, position = [], 0
    for messages in conversations:
        turns = []
        for m in messages:
            body = content_ids[position]
            position += 1
            turns.append((m.role, body))
        if not add_generation_prompt:
            # Turns after the last reply teach nothing; left in, they could
            # push that reply out when the conversation is truncated.
            while turns and turns[-1][0] != "assistant":
                turns.pop()
        roles = [role for role, _ in turns]
        for index, (role, body) in enumerate(turns):
            marker = marker_ids[role]
            ids = marker + body + end_ids
            learn = int(role == "assistant" and not add_generation_prompt)
            turns[index] = (ids, [0] * len(marker) + [learn] * (len(ids) - len(marker)))
        suffix = marker_ids["assistant"] if add_generation_prompt else []
        fitted = _fit(turns, roles, suffix, budget, add_generation_prompt)
        fitted.ids, fitted.weights = start + fitted.ids, [0] * len(start) + fitted.weights
        encoded.append(fitted)
    return encoded


def chat_stop_ids(tokenizer):
    """The ids a reply ends at: the tokenizer's end tokens, and `<|end|>`
    where it is one token (tfchat's vocabularies; in a pretrained one it is
    several, and generation stops at its text instead)."""
    end = tokenizer.marker_ids(END_OF_TURN)
    return tuple(tokenizer.stop_ids) + (tuple(end) if len(end) == 1 else ())


def _fit(turns, roles, suffix, max_tokens, keep_end):
    """Joins the turns' (ids, weights), leaving out the oldest exchanges
    (keeping a leading system message) until they fit in `max_tokens`."""
    head = turns[:1] if roles[:1] == ["system"] else []
    body = turns[len(head):]
    # Exchanges start at each user turn, so a reply never loses its question
    # while an older exchange stays.
    starts = [i for i, role in enumerate(roles[len(head):]) if role == "user" and i > 0]
    exchanges = [body[a:b] for a, b in zip([0] + starts, starts + [len(body)])]

    def size(group):
        return sum(len(ids) for ids, _ in group)

    total = size(head) + sum(size(e) for e in exchanges) + len(suffix)
    dropped = 0
    while max_tokens is not None and total > max_tokens and len(exchanges) > 1:
        oldest = exchanges.pop(0)
        total -= size(oldest)
        dropped += len(oldest)
    ids, weights = [], []
    for turn_ids, turn_weights in head + [t for e in exchanges for t in e]:
        ids += turn_ids
        weights += turn_weights
    ids += suffix
    weights += [0] * len(suffix)
    cut = 0
    if max_tokens is not None and len(ids) > max_tokens:
        cut = len(ids) - max_tokens
        # A prompt must end with the assistant marker; a training example
        # keeps the start of the reply it teaches.
        if keep_end:
            ids, weights = ids[cut:], weights[cut:]
        else:
            ids, weights = ids[:max_tokens], weights[:max_tokens]
    return Encoded(ids, weights, dropped, cut)
