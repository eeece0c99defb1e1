"""`Family`: everything tfchat knows about one family of pretrained
decoders, declared by the family's own module (`tfchat.families.<name>`)."""

import dataclasses
import typing


def _nothing(*args, **kwargs):
    return {}


@dataclasses.dataclass(frozen=True)
class HuggingFaceForm:
    """A family whose Hugging Face checkpoints tfchat reads and writes
    itself (keras-hub 0.32 reads or writes them wrongly, or not at all), in
    the shared RMSNorm-decoder tensor layout (`weights.hugging_face_tensors`).

    gpt_args(config, block_size) -> `GPT` arguments from its config.json
        (a dict), raising ValueError for what tfchat cannot run.
    config(gpt, context, dtype) -> the config.json to write.
    write_tokenizer(hub_tokenizer, directory, tokenizer_config) -> writes the
        tokenizer's files (`tokenizer_config` is the tokenizer_config.json
        dict so far, chat template included; the family adds its keys).
    """

    gpt_args: typing.Callable
    config: typing.Callable
    write_tokenizer: typing.Callable


@dataclasses.dataclass(frozen=True)
class Family:
    """A checkpoint family tfchat can start from, and export back to.

    name: tfchat's name for it, recorded in a converted run's config as
        `model.family` (and kept by runs fine-tuned from it).
    backbones: the keras-hub backbone classes it reads.
    model_types: the Hugging Face `config.json` `model_type`s of it.
    examples: checkpoints of the family, for `--help`.
    architecture: the Hugging Face `architectures` entry of its config.json.
    gpt_args(backbone, block_size) -> `GPT` keyword arguments for a
        keras-hub backbone (ValueError for what tfchat cannot run).
    copy_weights(backbone, gpt): fills a built GPT with the backbone's weights.
    hub_args(gpt) -> keyword arguments of the keras-hub backbone it exports to.
    copy_weights_back(gpt, backbone): fills that built backbone with the
        GPT's weights (the inverse of `copy_weights`).
    hub_classes: the keras-hub tokenizer classes of its runs, each with the
        (backbone, CausalLM, CausalLMPreprocessor) classes it exports with
        and whether keras-hub's own exporter writes them in Hugging Face form.
    decoder: the GPT decoder options every model of the family has (for
        messages, and to recognise runs written before `model.family`).
    chat_templates: the family's own chat formats (`ChatTemplate`s).
    limits: what tfchat does not support of the family, for `--help`.
    missing_backbone_args(kind, path) -> extra keras-hub `from_preset`
        arguments for a source of `kind` ("keras-hub" or "hugging-face")
        at `path`, where keras-hub's reader drops something.
    hugging_face: set where tfchat reads and writes the family's Hugging
        Face form itself (`HuggingFaceForm`); else keras-hub does, and
        `complete_hugging_face` adds what its exporter leaves out.
    complete_hugging_face(directory, config, gpt, context, hub_tokenizer):
        adds to keras-hub's export (`config` is its config.json dict, to
        update in place; files may be written into `directory`).
    complete_preset(directory, backbone): the same for a keras-hub preset.
    stop_tokens: special tokens besides the tokenizer's end token that end
        a reply.
    multi_head_only: its attention has as many key/value heads as query
        heads (no grouped-query attention).
    """

    name: str
    backbones: typing.Tuple[str, ...]
    model_types: typing.Tuple[str, ...]
    examples: str
    architecture: str
    gpt_args: typing.Callable
    copy_weights: typing.Callable
    hub_args: typing.Callable
    copy_weights_back: typing.Callable
    hub_classes: typing.Mapping[str, typing.Tuple[str, str, str, bool]]
    decoder: typing.Mapping[str, object]
    chat_templates: tuple = ()
    limits: str = ""
    missing_backbone_args: typing.Callable = _nothing
    hugging_face: typing.Optional[HuggingFaceForm] = None
    complete_hugging_face: typing.Callable = _nothing
    complete_preset: typing.Callable = _nothing
    stop_tokens: typing.Tuple[str, ...] = ()
    multi_head_only: bool = False

    def describe_decoder(self):
        return ", ".join(
            f"{k} {str(v).lower() if isinstance(v, bool) else v}" for k, v in self.decoder.items()
        ) + (", num_kv_heads = num_heads" if self.multi_head_only else "")

    def has_decoder(self, model):
        """Whether `model` (a `GPT` or a `ModelConfig`) has the family's
        decoder options."""
        if self.multi_head_only and (model.num_kv_heads or model.num_heads) != model.num_heads:
            return False
        return all(getattr(model, k) == v for k, v in self.decoder.items())
