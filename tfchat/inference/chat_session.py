"""A conversation with a chat model: `ChatSession` keeps the history and the
system message, asks a `Generator` for each reply, and keeps every reply
shown to the last message (`retry`), for judging them (`prefer`, `last_reply`)."""

from tfchat.data.chat_template import Message
from tfchat.errors import TfchatError


class ChatSession:
    """A conversation with a model: the history, the system message, and
    the sampling settings each reply uses."""

    def __init__(self, generator, system="", max_new_tokens=200, **sampling):
        self.generator = generator
        self.system = system
        self.history = []
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        # The conversation the last message's replies answer, and each reply
        # shown to it (the first, then one per `retry`).
        self.context = []
        self.seen = []  # what of it the model saw (`_seen`)
        self.replies = []
        self._asked = []  # the history up to the last message

    def messages(self):
        system = [Message("system", self.system)] if self.system else []
        return system + self.history

    def ask(self, text):
        """Adds the user's `text` to the history; returns the prompt for the
        reply (an `Encoded`: `truncated` says if old turns were left out)."""
        self.history.append(Message("user", text))
        self._asked = list(self.history)
        self.context = self.messages()
        self.replies = []
        prompt = self.generator.chat_prompt(self.context, self.max_new_tokens)
        self.seen = self._seen(prompt)
        return prompt

    def _seen(self, prompt):
        """The messages of `context` that `prompt` holds: the oldest turns
        left out to fit the model's context are gone (a system message
        stays), as a preference pair recorded from them should be."""
        head = self.context[:1] if self.context[:1] and self.context[0].role == "system" else []
        return head + self.context[len(head) + prompt.dropped_messages:]

    def reply(self, prompt):
        """Yields the reply to `prompt` (from `ask` or `retry`) in pieces as it
        is generated, then adds it to the history."""
        sampling = dict(self.sampling)
        if sampling.get("seed") is not None:
            # Another seed for each reply to the same message, so that a
            # retry with --seed gives another reply (and a rerun the same).
            sampling["seed"] += len(self.replies)
        pieces = []
        try:
            for piece in self.generator.stream_chat(
                self.context, self.max_new_tokens, prompt=prompt, **sampling
            ):
                pieces.append(piece)
                yield piece
        finally:
            # An interrupted reply joins the history as far as it got.
            text = "".join(pieces)
            self.history.append(Message("assistant", text))
            self.replies.append(text)

    def retry(self):
        """Takes the last reply out of the history to answer the last message
        again; returns the prompt for `reply`. The replies so far are kept,
        to judge with `prefer`."""
        if not self.replies:
            raise TfchatError("There is no reply to retry yet.")
        self.history = list(self._asked)
        return self.generator.chat_prompt(self.context, self.max_new_tokens)

    def prefer(self, number):
        """Reply `number` (from 1) to the last message was the best: it
        becomes the history's reply. Returns (chosen, [the other, different
        replies])."""
        if len(self.replies) < 2:
            raise TfchatError("Only one reply to compare; /retry for another first.")
        if not 1 <= number <= len(self.replies):
            raise TfchatError(f"There are replies 1 to {len(self.replies)}.")
        chosen = self.replies[number - 1]
        self.history[-1] = Message("assistant", chosen)
        return chosen, [r for r in self.replies if r != chosen]

    def last_reply(self):
        """(the conversation it answers as the model saw it, the reply now
        in the history)."""
        if not self.replies:
            raise TfchatError("There is no reply to judge yet.")
        return self.seen, self.history[-1].content

    def reset(self):
        self.history = []
        self.context = []
        self.seen = []
        self.replies = []
        self._asked = []

    def truncation_note(self, prompt):
        context = self.generator.backbone.block_size
        parts = []
        if prompt.dropped_messages:
            parts.append(f"the oldest {prompt.dropped_messages} message(s) were left out")
        if prompt.cut_tokens:
            parts.append(f"{prompt.cut_tokens} token(s) were cut from its start")
        return (
            "(note: the conversation no longer fits this model's context of "
            f"{context} tokens with room for a reply; {' and '.join(parts)})"
        )
