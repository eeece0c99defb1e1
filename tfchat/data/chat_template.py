"""Chat templates: how a conversation becomes tokens, for training and for
generation alike, in tfchat's own format or a pretrained family's.

A `ChatTemplate` (`tfchat.data.chat_format`) is data: the text before and
after each role's content, and the end-of-turn marker that closes an
assistant reply. `TEMPLATES` holds the generic ones (tfchat, chatml, plain)
and every pretrained family's own (`tfchat.families`: Llama 3's headers,
Gemma's turns, Mistral's [INST]).

A prompt for generation is the conversation so far followed by the
assistant's prefix; the model writes the reply and ends it with the
end-of-turn marker, where generation stops. A conversation starts with the
tokenizer's start token where it has one and the template writes it
(`Tokenizer.start_ids`; Llama 3's <|begin_of_text|>; ChatML writes none),
and with the template's default system message when it has one and the
conversation none (Qwen2.5 and SmolLM2 do).

Each run's tokenizer carries its template (`tokenizer.chat_template`, set
from `config.tokenizer.chat_template` by `use_chat_template`), so every
caller renders the same way. `template_from_jinja` recognises a Hugging Face
checkpoint's Jinja `chat_template`.

One function, `encode_conversations`, renders both training examples and
prompts, so the two always agree. In training its `weights` are 1 on the
tokens the model should learn to write: every assistant content token and
the end-of-turn marker closing it; everything else (prefixes, the system and
user turns, what follows the marker) is context with weight 0. The ids are
the pieces (prefix, content, suffix) tokenized one by one; for tfchat's own
tokenizers that is what the rendered text (`render_text`) tokenizes to, and
the exported chat signature builds its prompt ids the same way
(`encode_prompt_tf`), so serving and training agree for every tokenizer.

A conversation longer than the token budget loses its oldest exchanges (a
user turn and the replies after it) first; a leading system message is kept.
If the newest exchange alone is still too long, a training example keeps its
first tokens and a prompt its last ones (`cut_tokens` says how many went).
A training example also sheds the turns after its last assistant reply
(they teach nothing).

`render_prompt_tf` is the same prompt rendering as TensorFlow ops (string
tensors in, one prompt string out), and `encode_prompt_tf` the prompt's ids.

Example:
```python
messages = [Message("user", "Hi!"), Message("assistant", "Hello.")]
render_text(messages)        # "<|user|>Hi!<|end|><|assistant|>Hello.<|end|>"
render_text(messages, TEMPLATES["chatml"])
encoded = encode_conversation(tokenizer, messages, max_tokens=129)
encoded.ids, encoded.weights  # weights are 1 on "Hello." and its end marker
```
"""

import dataclasses
import re

import tensorflow as tf

from tfchat.data.augment import ROLE_CODES, TEMPLATE
from tfchat.data.chat_format import ROLES, ChatTemplate  # noqa: F401  (re-exported)
from tfchat.errors import TfchatError
from tfchat.families import chat_templates


TEMPLATES = chat_templates()
# tfchat's own format, read by its tokenizers as single reserved tokens.
MARKERS = dict(TEMPLATES["tfchat"].prefixes)
END_OF_TURN = TEMPLATES["tfchat"].end_of_turn


def get_template(name, default_system=""):
    """The template called `name`, with `default_system` if given."""
    if name not in TEMPLATES:
        raise TfchatError(
            f"Unknown chat template {name!r}; use one of {', '.join(TEMPLATES)} (or auto)."
        )
    template = TEMPLATES[name]
    if default_system and not template.system_role:
        raise TfchatError(
            f"The {name} chat format has no system turn, so it cannot have a default system "
            "message; set tokenizer.system_prompt ''."
        )
    if default_system:
        template = dataclasses.replace(template, default_system=default_system)
    return template


def template_from_jinja(jinja):
    """(template name, default system message) for a Hugging Face
    `chat_template` Jinja string: the first template whose markers it all
    holds; anything else is rendered `plain`."""
    for template in TEMPLATES.values():
        if jinja and template.markers and all(m in jinja for m in template.markers):
            return template.name, _literal_system_message(jinja, template)
    return "plain", ""


def _literal_system_message(jinja, template):
    """The system message a Jinja template writes for conversations without
    one (Qwen2.5 and SmolLM2 do), where it is a literal; else ""."""
    prefix, suffix = template.prefixes["system"], template.suffixes["system"]
    if not template.system_role or not prefix:
        return ""
    # The template source escapes newlines as \n.
    pattern = (re.escape(prefix.replace("\n", "\\n")) + r"([^'\"{}]+?)"
               + re.escape(suffix.replace("\n", "\\n").split("\\n")[0]))
    match = re.search(pattern, jinja)
    return match.group(1) if match else ""


def use_chat_template(tokenizer, tokenizer_config):
    """Gives `tokenizer` the template `tokenizer_config` names (`auto`:
    tfchat's for tfchat's own tokenizers, `plain` for a pretrained one)."""
    name = tokenizer_config.chat_template
    if name == "auto":
        name = "plain" if tokenizer.kind == "pretrained" else "tfchat"
    tokenizer.chat_template = get_template(name, tokenizer_config.system_prompt)
    return tokenizer


@dataclasses.dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


@dataclasses.dataclass
class Encoded:
    """A rendered conversation: `ids` and per-token `weights` (1 = a token
    the assistant writes), and what truncation left out. `roles`: whose
    content each token is (`tfchat.data.augment`'s SYSTEM, USER, ASSISTANT;
    TEMPLATE for the template's own markers), which augmentation reads."""

    ids: list
    weights: list
    dropped_messages: int = 0
    cut_tokens: int = 0
    roles: list = dataclasses.field(default_factory=list)

    @property
    def truncated(self):
        return bool(self.dropped_messages or self.cut_tokens)


def _with_default_system(messages, template):
    template.check_roles([m.role for m in messages])
    if template.default_system and not (messages and messages[0].role == "system"):
        return [Message("system", template.default_system)] + list(messages)
    return list(messages)


def render_text(messages, template=TEMPLATES["tfchat"], add_generation_prompt=False, start=""):
    """The conversation as one string (after `start`, the tokenizer's start
    token's text, if any); with `add_generation_prompt`, ending in the
    assistant's prefix so a model continues with the reply."""
    messages = _with_default_system(messages, template)
    text = start + "".join(
        template.prefixes[m.role] + template.content(m.content) + template.suffixes[m.role]
        for m in messages
    )
    return text + (template.prefixes["assistant"] if add_generation_prompt else "")


def _role_index(roles):
    """[N] role strings -> [N] indices into ROLES; an unknown role fails with
    an InvalidArgumentError naming the valid ones."""
    matches = tf.equal(roles[:, None], tf.constant(ROLES)[None, :])  # [N, len(ROLES)]
    check = tf.debugging.assert_equal(
        tf.reduce_all(tf.reduce_any(matches, axis=1)), True,
        message=f"every role must be one of {', '.join(ROLES)}",
    )
    with tf.control_dependencies([check]):
        return tf.argmax(tf.cast(matches, tf.int32), axis=1)


def _known_roles(roles, template):
    """[N] indices into ROLES of `roles`, failing (InvalidArgumentError) on
    an unknown role or a system turn the template cannot write."""
    index = _role_index(roles)
    if template.system_role:
        return index
    check = tf.debugging.assert_equal(
        tf.reduce_any(tf.equal(roles, "system")), False,
        message=f"the {template.name} chat format has no system role",
    )
    with tf.control_dependencies([check]):
        return tf.identity(index)


def render_prompt_tf(roles, contents, template=TEMPLATES["tfchat"]):
    """`render_text(messages, template, add_generation_prompt=True)` in
    TensorFlow ops (the start token is the tokenizer's to add).

    Args:
        roles: string tensor [N], each one of `ROLES`.
        contents: string tensor [N], the messages' texts.

    Returns:
        A scalar string tensor, identical to the Python rendering. An unknown
        role fails with an InvalidArgumentError naming the valid roles.
    """
    roles = tf.convert_to_tensor(roles, tf.string)
    contents = tf.convert_to_tensor(contents, tf.string)
    index = _known_roles(roles, template)
    prefixes = tf.gather(tf.constant([template.prefixes[r] for r in ROLES]), index)
    suffixes = tf.gather(tf.constant([template.suffixes[r] for r in ROLES]), index)
    if template.strip_content:
        contents = tf.strings.strip(contents)
    turns = tf.strings.reduce_join(prefixes + contents + suffixes)
    if template.default_system:
        has_system = tf.logical_and(tf.size(roles) > 0, tf.equal(roles[:1], "system"))
        system = (template.prefixes["system"] + template.content(template.default_system)
                  + template.suffixes["system"])
        turns = tf.where(tf.reduce_any(has_system), turns, system + turns)
    return turns + template.prefixes["assistant"]


def chat_turns_tf(tokenizer, roles, contents):
    """`encode_prompt_tf`'s ids with its turns kept apart, the content
    tokenized once: (ids int32 [None]: start ids, turns, the assistant's
    prefix; turn sizes [N]; roles [N], the template's default system message
    added; the number of start ids; the assistant prefix's length)."""
    template = tokenizer.chat_template
    roles = tf.convert_to_tensor(roles, tf.string)
    contents = tf.convert_to_tensor(contents, tf.string)
    if template.default_system:
        missing = tf.logical_not(tf.reduce_any(tf.equal(roles[:1], "system")))
        roles = tf.cond(missing, lambda: tf.concat([["system"], roles], 0), lambda: roles)
        contents = tf.cond(missing, lambda: tf.concat([[template.default_system], contents], 0),
                           lambda: contents)
    if template.strip_content:
        contents = tf.strings.strip(contents)
    index = _known_roles(roles, template)
    # The template's pieces are constants: tokenized once, eagerly, rather
    # than traced into the graph (a byte-level BPE's graph is large, and
    # exporting traced it once per piece).
    with tf.init_scope():
        pieces = [template.prefixes[r] for r in ROLES] + [template.suffixes[r] for r in ROLES]
        piece_ids = tokenizer.tokenize_pieces(pieces)
    prefixes = tf.ragged.constant(piece_ids[: len(ROLES)], dtype=tf.int32)
    suffixes = tf.ragged.constant(piece_ids[len(ROLES):], dtype=tf.int32)
    body = tokenizer.tokenize(contents)  # [N, None]
    turns = tf.concat([tf.gather(prefixes, index), body, tf.gather(suffixes, index)], axis=1)
    start = list(tokenizer.start_ids) if template.add_start_token else []
    assistant = piece_ids[ROLES.index("assistant")]
    ids = tf.concat([tf.constant(start, tf.int32), turns.flat_values,
                     tf.constant(assistant, tf.int32)], axis=0)
    return ids, tf.cast(turns.row_lengths(), tf.int32), roles, len(start), len(assistant)


def encode_prompt_tf(tokenizer, roles, contents):
    """The ids `encode_conversation(tokenizer, messages,
    add_generation_prompt=True)` gives (without truncation), in TensorFlow
    ops: start ids, then each message's prefix, content and suffix tokenized
    one by one, then the assistant's prefix. Returns int32 [None]."""
    return chat_turns_tf(tokenizer, roles, contents)[0]


def encode_conversation(tokenizer, messages, max_tokens=None, add_generation_prompt=False):
    """Renders one conversation to ids and weights; see module docs."""
    return encode_conversations(
        tokenizer, [messages], max_tokens, add_generation_prompt
    )[0]


def encode_conversations(tokenizer, conversations, max_tokens=None, add_generation_prompt=False):
    """`encode_conversation` for many conversations, tokenizing every
    message's content in one batched call, with `tokenizer.chat_template`."""
    template = tokenizer.chat_template
    conversations = [_with_default_system(messages, template) for messages in conversations]
    contents = [template.content(m.content) for messages in conversations for m in messages]
    # One tokenizer call for all the text: per-message calls would dominate
    # the time to prepare a dialogue corpus.
    content_ids = tokenizer.tokenize(tf.constant(contents, tf.string)).to_list() if contents else []
    pieces = [template.prefixes[r] for r in ROLES] + [template.suffixes[r] for r in ROLES]
    pieces += [template.end_of_turn]
    piece_ids = dict(zip(pieces, tokenizer.tokenize_pieces(pieces)))
    end_ids = piece_ids[template.end_of_turn]
    # A pretrained family's start token opens every conversation, where the
    # template writes one.
    start = list(tokenizer.start_ids) if template.add_start_token else []
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
            prefix, suffix = piece_ids[template.prefixes[role]], piece_ids[template.suffixes[role]]
            ids = prefix + body + suffix
            learn = int(role == "assistant" and not add_generation_prompt)
            # The reply and its end-of-turn marker; not what follows it.
            learnt = len(body) + (len(end_ids) if role == "assistant" else 0)
            weights = [0] * len(prefix) + [learn] * learnt
            whose = [TEMPLATE] * len(prefix) + [ROLE_CODES[role]] * len(body)
            turns[index] = (ids, weights + [0] * (len(ids) - len(weights)),
                            whose + [TEMPLATE] * len(suffix))
        suffix = piece_ids[template.prefixes["assistant"]] if add_generation_prompt else []
        fitted = _fit(turns, roles, suffix, budget, add_generation_prompt)
        fitted.ids, fitted.weights = start + fitted.ids, [0] * len(start) + fitted.weights
        fitted.roles = [TEMPLATE] * len(start) + fitted.roles
        encoded.append(fitted)
    return encoded


def chat_stop_ids(tokenizer):
    """The ids a reply ends at: the tokenizer's end tokens, and the
    template's end-of-turn marker where it is one token (else generation
    stops at its text, `chat_stop_strings`)."""
    end = tokenizer.tokenize_pieces([tokenizer.chat_template.end_of_turn])[0]
    stops = tuple(tokenizer.stop_ids)
    return stops + (tuple(end) if len(end) == 1 and end[0] not in stops else ())


def chat_stop_strings(tokenizer):
    return (tokenizer.chat_template.end_of_turn,)


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
        return sum(len(turn[0]) for turn in group)

    total = size(head) + sum(size(e) for e in exchanges) + len(suffix)
    dropped = 0
    while max_tokens is not None and total > max_tokens and len(exchanges) > 1:
        oldest = exchanges.pop(0)
        total -= size(oldest)
        dropped += len(oldest)
    ids, weights, whose = [], [], []
    for turn_ids, turn_weights, turn_roles in head + [t for e in exchanges for t in e]:
        ids += turn_ids
        weights += turn_weights
        whose += turn_roles
    ids += suffix
    weights += [0] * len(suffix)
    whose += [TEMPLATE] * len(suffix)
    cut = 0
    if max_tokens is not None and len(ids) > max_tokens:
        cut = len(ids) - max_tokens
        # A prompt must end with the assistant marker; a training example
        # keeps the start of the reply it teaches.
        kept = slice(cut, None) if keep_end else slice(None, max_tokens)
        ids, weights, whose = ids[kept], weights[kept], whose[kept]
    return Encoded(ids, weights, dropped, cut, whose)
