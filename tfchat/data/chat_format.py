"""What a chat template is, and the templates no model family owns.

A `ChatTemplate` is data: the text before and after each role's content, and
the end-of-turn marker that closes an assistant reply. The generic ones:

    tfchat   <|system|>Be brief.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>
    chatml   <|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n
             (Qwen2.5, SmolLM2-Instruct and many fine-tunes of other families)
    plain    User:\nHi!\n\nAssistant:\nHello.\n\n (base models without chat tokens)

A pretrained family's own format lives in its module (`tfchat.families`);
`tfchat.data.chat_template` renders all of them. Pure Python: no TensorFlow.
"""

import dataclasses
import json
import typing

from tfchat.errors import TfchatError

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """What surrounds each message.

    name: its name in configs (`tokenizer.chat_template`).
    prefixes: role -> text before the content.
    suffixes: role -> text after it; an assistant's starts with
        `end_of_turn`.
    end_of_turn: the marker the model writes to end its reply.
    strip_content: contents are stripped of surrounding whitespace.
    default_system: the system message of a conversation that has none.
    add_start_token: a conversation starts with the tokenizer's start token
        (where its Jinja writes `bos_token`; ChatML's writes none).
    markers: strings a checkpoint's Jinja template or its special tokens
        hold when it uses this format (how `tfchat.convert` recognises it).
    system_role: False where the format has no system turn (its Jinja raises
        on one), so rendering a system message is an error.
    """

    name: str
    prefixes: typing.Mapping[str, str]
    suffixes: typing.Mapping[str, str]
    end_of_turn: str
    strip_content: bool = False
    default_system: str = ""
    add_start_token: bool = True
    markers: typing.Tuple[str, ...] = ()
    system_role: bool = True

    def content(self, text):
        return text.strip() if self.strip_content else text

    def check_roles(self, roles):
        """Raises `TfchatError` when a conversation has a turn the format
        cannot write."""
        if not self.system_role and "system" in roles:
            raise TfchatError(
                f"The {self.name} chat format has no system turn (its own Jinja template "
                "refuses one); drop the system messages from the data, or put their text "
                "in the first user message."
            )

    def to_jinja(self):
        """This template as a Hugging Face `chat_template` (Jinja), for
        `tokenizer_config.json`: what transformers, vLLM and llama.cpp
        render from, giving `render_text`'s text (tests check)."""
        quote = json.dumps  # a JSON string literal is a valid Jinja one
        prefixes = "{" + ", ".join(f"{quote(r)}: {quote(self.prefixes[r])}" for r in ROLES) + "}"
        suffixes = "{" + ", ".join(f"{quote(r)}: {quote(self.suffixes[r])}" for r in ROLES) + "}"
        content = "message['content'] | trim" if self.strip_content else "message['content']"
        parts = [f"{{%- set prefixes = {prefixes} -%}}{{%- set suffixes = {suffixes} -%}}"]
        if not self.system_role:
            parts.append("{%- if messages and messages[0]['role'] == 'system' -%}"
                         "{{- raise_exception('System role not supported') -}}{%- endif -%}")
        if self.add_start_token:
            parts.append("{{- bos_token -}}")
        if self.default_system:
            system = self.prefixes["system"] + self.content(self.default_system) + self.suffixes["system"]
            parts.append("{%- if not messages or messages[0]['role'] != 'system' -%}"
                         f"{{{{- {quote(system)} -}}}}{{%- endif -%}}")
        parts.append("{%- for message in messages -%}"
                     f"{{{{- prefixes[message['role']] + {content} + suffixes[message['role']] -}}}}"
                     "{%- endfor -%}")
        parts.append("{%- if add_generation_prompt -%}"
                     f"{{{{- {quote(self.prefixes['assistant'])} -}}}}{{%- endif -%}}")
        return "".join(parts)


def same_for_roles(prefix, suffix):
    """(prefixes, suffixes) with `{role}` in `prefix` filled per role."""
    return {role: prefix.format(role=role) for role in ROLES}, {role: suffix for role in ROLES}


TFCHAT = ChatTemplate(
    "tfchat",
    prefixes={"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"},
    suffixes={role: "<|end|>" for role in ROLES},
    end_of_turn="<|end|>",
)
CHATML = ChatTemplate(
    "chatml", *same_for_roles("<|im_start|>{role}\n", "<|im_end|>\n"), end_of_turn="<|im_end|>",
    add_start_token=False, markers=("<|im_start|>", "<|im_end|>"),
)
# Newlines around every piece: a byte-level BPE splits text there anyway,
# so the pieces tokenize as the whole text does.
PLAIN = ChatTemplate(
    "plain",
    prefixes={"system": "System:\n", "user": "User:\n", "assistant": "Assistant:\n"},
    suffixes={role: "\n\n" for role in ROLES},
    end_of_turn="\n\n",
)
GENERIC_TEMPLATES = (TFCHAT, CHATML, PLAIN)
