"""A conversation with a chat model: `ChatSession` keeps the history and the
system message, and asks a `Generator` for each reply."""

from tfchat.data.chat_template import Message


class ChatSession:
    """A conversation with a model: the history, the system message, and
    the sampling settings each reply uses."""

    def __init__(self, generator, system="", max_new_tokens=200, **sampling):
        self.generator = generator
        self.system = system
        self.history = []
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling

    def messages(self):
        system = [Message("system", self.system)] if self.system else []
        return system + self.history

    def ask(self, text):
        """Adds the user's `text` to the history; returns the prompt for the
        reply (an `Encoded`: `truncated` says if old turns were left out)."""
        self.history.append(Message("user", text))
        return self.generator.chat_prompt(self.messages(), self.max_new_tokens)

    def reply(self, prompt):
        """Yields the reply to `prompt` (from `ask`) in pieces as it is
        generated, then adds it to the history."""
        pieces = []
        try:
            for piece in self.generator.stream_chat(
                self.messages(), self.max_new_tokens, prompt=prompt, **self.sampling
            ):
                pieces.append(piece)
                yield piece
        finally:
            # An interrupted reply joins the history as far as it got.
            self.history.append(Message("assistant", "".join(pieces)))

    def reset(self):
        self.history = []

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
