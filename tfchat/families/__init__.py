"""The pretrained model families tfchat converts from and exports to, one
module each, found here by name.

A family's module holds everything about it: how its keras-hub backbone (and,
where tfchat reads it itself, its Hugging Face config) maps to tfchat's
decoder options, its weights in and out, its tokenizer's specifics, its chat
formats and their markers, what its exports need beyond keras-hub's writer,
and its known limits (`tfchat.families.base.Family`). Pure Python and
numpy: importing this loads neither TensorFlow nor keras-hub.

Adding a family: a module `tfchat/families/<name>.py` defining its `FAMILY`,
and one line in `REGISTRY` below.

A converted run records its family in `model.family` (`none` for tfchat's
own decoders); runs written before that field existed are recognised by
their decoder options (`family_of_old_run`), among the families that
existed then.
"""

from tfchat.data.chat_format import GENERIC_TEMPLATES
from tfchat.errors import TfchatError
from tfchat.families import gemma, gpt2, llama, mistral, qwen2, qwen3

REGISTRY = {family.name: family for family in (
    gpt2.FAMILY, llama.FAMILY, qwen2.FAMILY, mistral.FAMILY, gemma.FAMILY, qwen3.FAMILY,
)}
# `model.family` of a decoder no pretrained family has.
NONE = "none"
# The families of runs written before `model.family`, in the order their
# decoder options were tried then.
_BEFORE_RECORDING = ("gpt2", "llama", "qwen2")


def get(name):
    """The `Family` called `name`; `TfchatError` naming the valid ones."""
    if name not in REGISTRY:
        raise TfchatError(
            f"Unknown model.family {name!r}; use one of {', '.join((NONE, *REGISTRY))}."
        )
    return REGISTRY[name]


def of_run(model_config):
    """The `Family` of a run's `ModelConfig`, or None for tfchat's own."""
    if model_config.family == NONE:
        return None
    return get(model_config.family)


def family_of_old_run(model_config, tokenizer_kind):
    """The family name a run written before `model.family` existed is of:
    a pretrained tokenizer's run with a known family's decoder options, else
    `none`."""
    if tokenizer_kind != "pretrained":
        return NONE
    for name in _BEFORE_RECORDING:
        if REGISTRY[name].has_decoder(model_config):
            return name
    return NONE


def family_of_backbone(class_name):
    """The `Family` that reads keras-hub backbones of `class_name`, or None."""
    return next((f for f in REGISTRY.values() if class_name in f.backbones), None)


def family_of_model_type(model_type):
    """The `Family` of a Hugging Face `model_type`, or None."""
    return next((f for f in REGISTRY.values() if model_type in f.model_types), None)


def family_of_tokenizer(class_name):
    """The `Family` whose runs use keras-hub tokenizers of `class_name`."""
    return next((f for f in REGISTRY.values() if class_name in f.hub_classes), None)


def supported_families():
    """One line per family, for `--help` and errors."""
    lines = []
    for f in REGISTRY.values():
        line = (f"  {f.name}: {f.examples}; keras-hub {', '.join(f.backbones)}; "
                f"Hugging Face model_type {', '.join(f.model_types)}")
        if f.limits:
            line += f". Not supported: {f.limits}"
        lines.append(line)
    return "\n".join(lines)


def supported_model_types():
    return ", ".join(t for f in REGISTRY.values() for t in f.model_types)


def supported_backbones():
    return ", ".join(b for f in REGISTRY.values() for b in f.backbones)


def architectures():
    return tuple(f.architecture for f in REGISTRY.values())


def exportable_families():
    """One phrase per family, for errors: its name and decoder options."""
    return "; ".join(f"{f.name} ({f.describe_decoder()})" for f in REGISTRY.values())


def chat_templates():
    """{name: ChatTemplate}: the generic templates, then every family's own."""
    templates = {t.name: t for t in GENERIC_TEMPLATES}
    for family in REGISTRY.values():
        templates.update({t.name: t for t in family.chat_templates})
    return templates


def stop_tokens(tokenizer_class):
    """The special tokens besides the end token that end a reply of a run
    whose keras-hub tokenizer is of `tokenizer_class`."""
    family = family_of_tokenizer(tokenizer_class)
    return family.stop_tokens if family else ()
