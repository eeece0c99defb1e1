"""Pretrained checkpoints as tfchat runs: `convert` writes a run folder of an
untouched pretrained model (step 0) that every command works on.

Sources (`describe_source` says which a string is, before any weights load):
  * a keras-hub preset directory (`metadata.json`, `config.json`,
    `model.weights.h5`, `tokenizer.json`, `assets/`);
  * a Hugging Face checkpoint directory (`config.json` with a `model_type`,
    `*.safetensors`, the tokenizer's files);
  * a hub handle, `hf://owner/name` or `kaggle://owner/model/keras/variant`,
    downloaded by keras-hub when the machine is online.

keras-hub reads every one of them (`Backbone.from_preset` converts Hugging
Face checkpoints itself) and the family's module (`tfchat.families`) maps
its weights into tfchat's `GPT`, except the Hugging Face checkpoints of the
families tfchat reads itself (`Family.hugging_face`: keras-hub 0.32 gets
them wrong), whose config.json and safetensors are read here; the
checkpoint's own tokenizer is kept as a `PretrainedTokenizer`. The run folder is written beside its final place and
renamed into it, so a failed conversion leaves nothing behind.

Memory: keras-hub's backbone and tfchat's GPT are alive together (two
copies of the weights), plus one layer's arrays in flight; the backbone is
released before the checkpoint is written (benchmarks/RESULTS.md has the
peak RSS).

Example:
```python
convert("hf://HuggingFaceTB/SmolLM2-135M", "runs/smollm2")
run = tfchat.run.load_run("runs/smollm2")
```
"""

import dataclasses
import gc
import json
import os
import shutil
import tempfile

import tensorflow as tf

from tfchat import config as config_lib
from tfchat.data.chat_template import TEMPLATES, template_from_jinja
from tfchat.errors import TfchatError
from tfchat.families import (
    architectures, family_of_backbone, family_of_model_type, supported_backbones,
    supported_model_types,
)
from tfchat.families.weights import load_hugging_face_tensors, read_safetensors
from tfchat.run import CONFIG_FILE, TOKENIZER_DIR, RunFolder

HANDLE_PREFIXES = ("hf://", "kaggle://", "gs://", "modelscope://")
# The context given to a rope model whose checkpoint does not record one.
DEFAULT_ROPE_CONTEXT = 2048
# Weights stay float32 unless asked (bfloat16 halves the memory and disk).
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Source:
    """What a source string names: `kind` is "keras-hub", "hugging-face" or
    "handle"; `family` the `Family` (None for a handle, known only once
    downloaded); `context` the longest context the config records (0 if none)."""

    path: str
    kind: str
    family: object = None
    context: int = 0


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TfchatError(f"Cannot read {path}: {e}") from None


def is_tfchat_run(path):
    return os.path.isdir(os.path.join(path, TOKENIZER_DIR)) and os.path.isfile(
        os.path.join(path, CONFIG_FILE)
    )


def describe_source(source):
    """The `Source` a string names, checked as far as it can be without
    loading weights; raises `TfchatError` saying what is wrong."""
    if source.startswith(HANDLE_PREFIXES):
        return Source(source, "handle")
    if "://" in source:
        raise TfchatError(
            f"Unknown handle {source!r}: use hf://, kaggle:// or a local directory."
        )
    if not os.path.isdir(source):
        raise TfchatError(f"{source} is not a directory (nor an hf:// or kaggle:// handle).")
    if is_tfchat_run(source):
        raise TfchatError(f"{source} is already a tfchat run; use it with --init_from or --run.")
    config_path = os.path.join(source, "config.json")
    if not os.path.isfile(config_path):
        raise TfchatError(
            f"{source} has no config.json: neither a keras-hub preset nor a Hugging Face checkpoint."
        )
    config = _read_json(config_path)
    if os.path.isfile(os.path.join(source, "metadata.json")):
        return _keras_hub_source(source, config)
    return _hugging_face_source(source, config)


def _keras_hub_source(source, config):
    class_name = config.get("class_name", "?")
    family = family_of_backbone(class_name)
    if family is None:
        raise TfchatError(
            f"{source} holds a keras-hub {class_name}, which tfchat cannot convert; "
            f"it converts {supported_backbones()} (python -m tfchat.convert --help)."
        )
    _require(source, ["model.weights.h5", "tokenizer.json"], "keras-hub preset")
    return Source(source, "keras-hub", family)


def _hugging_face_source(source, config):
    model_type = config.get("model_type")
    family = family_of_model_type(model_type)
    if family is None:
        raise TfchatError(
            f"{source}/config.json has model_type {model_type!r}, which tfchat cannot "
            f"convert; it converts model_type {supported_model_types()} "
            "(python -m tfchat.convert --help)."
        )
    others = [a for a in config.get("architectures") or [] if not a.endswith("ForCausalLM")
              and a not in architectures()]
    if others:
        raise TfchatError(
            f"{source} is a {others[0]}; tfchat converts causal language models "
            f"({', '.join(architectures())})."
        )
    names = os.listdir(source)
    if not any(n.endswith(".safetensors") for n in names):
        raise TfchatError(f"{source} has no *.safetensors weights (PyTorch .bin files are not read).")
    if "tokenizer.json" not in names and "tokenizer.model" not in names \
            and not {"vocab.json", "merges.txt"} <= set(names):
        raise TfchatError(
            f"{source} has no tokenizer files (tokenizer.json, tokenizer.model, or vocab.json "
            "and merges.txt)."
        )
    context = int(config.get("max_position_embeddings") or config.get("n_positions") or 0)
    return Source(source, "hugging-face", family, context)


def _require(source, names, what):
    missing = [n for n in names if not os.path.isfile(os.path.join(source, n))]
    if missing:
        raise TfchatError(f"{source} is a {what} without {', '.join(missing)}.")


def _one_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _load_keras_hub(source, dtype):
    """keras-hub's backbone and tokenizer of `source`, with errors made
    one-line: a failed download says the machine may be offline. The
    backbone is None where tfchat reads the weights itself
    (`_reads_itself`)."""
    import keras_hub  # pylint: disable=import-outside-toplevel  (slow; after argument checks)

    try:
        # keras-hub picks among the tokenizer classes of a backbone in no
        # fixed order (Mistral's SentencePiece or its Tekken one): a family
        # with one is asked for by name.
        classes = tuple(source.family.hub_classes) if source.family else ()
        tokenizer_cls = (getattr(keras_hub.models, classes[0]) if len(classes) == 1
                         else keras_hub.tokenizers.Tokenizer)
        tokenizer = tokenizer_cls.from_preset(source.path)
        if _reads_itself(source):
            return None, tokenizer, source.family
        extra = source.family.missing_backbone_args(source.kind, source.path) if source.family else {}
        backbone = keras_hub.models.Backbone.from_preset(source.path, dtype=dtype, **extra)
    except Exception as e:  # keras-hub, huggingface_hub and h5py raise many kinds
        if source.kind == "handle":
            raise TfchatError(
                f"Could not load {source.path}: {_one_line(e)}. If this machine is offline, "
                "download the checkpoint where there is a network and pass its local directory."
            ) from None
        raise TfchatError(f"Could not load {source.path}: {_one_line(e)}") from None
    family = family_of_backbone(type(backbone).__name__)
    if family is None:
        raise TfchatError(
            f"{source.path} is a keras-hub {type(backbone).__name__}, which tfchat cannot "
            f"convert; it converts {supported_backbones()} (python -m tfchat.convert --help)."
        )
    return backbone, tokenizer, family


def _reads_itself(source):
    return source.kind == "hugging-face" and source.family.hugging_face is not None


def checkpoint_chat_template(source, tokenizer):
    """(template name, default system message) of a checkpoint: from the Jinja
    `chat_template` in a Hugging Face directory's tokenizer_config.json, else
    from the tokenizer's special tokens (a keras-hub preset keeps no
    template): ChatML's or Llama 3's markers, or `plain`."""
    config_path = os.path.join(source.path, "tokenizer_config.json")
    if source.kind == "hugging-face" and os.path.isfile(config_path):
        jinja = _read_json(config_path).get("chat_template")
        if isinstance(jinja, list):  # [{"name": "default", "template": ...}, ...]
            jinja = next((t.get("template") for t in jinja if t.get("name") == "default"), None)
        if jinja:
            return template_from_jinja(jinja)
    for template in TEMPLATES.values():
        if template.markers and all(
                len(ids) == 1 for ids in tokenizer.tokenize(tf.constant(template.markers)).to_list()):
            return template.name, ""
    return "plain", ""


def _chat_settings(source, tokenizer, chat_template, system_prompt):
    found, default_system = checkpoint_chat_template(source, tokenizer)
    name = found if chat_template == "auto" else chat_template
    return name, default_system if system_prompt is None else system_prompt


def run_config(name, runs_dir, gpt_args, vocabulary_size, context, dtype, chat=("plain", ""),
               family="none"):
    """The config of a converted run: a model of the checkpoint's shape with
    its own tokenizer and chat template; a `chat` run when the checkpoint
    has a chat format (so chat, evaluate and export treat it as one), else
    `causal`."""
    model_fields = {f.name for f in dataclasses.fields(config_lib.ModelConfig)}
    model = config_lib.ModelConfig(
        **{k: v for k, v in gpt_args.items() if k in model_fields},
        dropout=0.0,
        max_positions=context,
        family=family,
    )
    return config_lib.Config(
        name=name,
        runs_dir=runs_dir,
        objective="causal" if chat[0] == "plain" else "chat",
        tokenizer=config_lib.TokenizerConfig(
            kind="pretrained", vocab_size=vocabulary_size, chat_template=chat[0],
            system_prompt=chat[1],
        ),
        model=model,
        train=config_lib.TrainConfig(precision="float32" if dtype == "float32" else "bfloat16"),
    )


def convert(source, run_path, block_size=0, dtype="float32", overwrite=False, verbose=True,
            chat_template="auto", system_prompt=None):
    """Writes the run folder `run_path` of the pretrained model `source`
    (see module docs). `block_size` 0 takes the checkpoint's own context
    (GPT-2's position table; for rope models the recorded maximum, else
    DEFAULT_ROPE_CONTEXT). `chat_template` auto takes the checkpoint's own
    (`checkpoint_chat_template`), and `system_prompt` None its default
    system message. Returns the `Family`."""
    if dtype not in DTYPES:
        raise TfchatError(f"--dtype must be one of {', '.join(DTYPES)}. Received: {dtype!r}")
    described = describe_source(source)
    if os.path.exists(run_path) and not overwrite:
        raise TfchatError(f"{run_path} already exists; pass --overwrite to replace it.")
    backbone, hub_tokenizer, family = _load_keras_hub(described, dtype)

    from tfchat.data.tokenizer import PretrainedTokenizer  # pylint: disable=import-outside-toplevel
    from tfchat.objectives.base import build_causal_lm  # pylint: disable=import-outside-toplevel

    context = described.context or getattr(backbone, "max_sequence_length", 0) or 0
    if block_size and context and block_size > context:
        raise TfchatError(
            f"--block_size {block_size} exceeds the checkpoint's context of {context} tokens."
        )
    block = block_size or context or DEFAULT_ROPE_CONTEXT
    try:
        if backbone is None:
            hf_config = _read_json(os.path.join(described.path, "config.json"))
            gpt_args = family.hugging_face.gpt_args(hf_config, block)
        else:
            gpt_args = family.gpt_args(backbone, block)
    except (ValueError, KeyError) as e:
        raise TfchatError(f"{source}: {e}") from None
    vocabulary_size = gpt_args["vocabulary_size"]
    tokenizer = PretrainedTokenizer(hub_tokenizer)
    if tokenizer.vocabulary_size > vocabulary_size:
        raise TfchatError(
            f"{source}: the tokenizer has {tokenizer.vocabulary_size} tokens but the model's "
            f"embedding only {vocabulary_size}."
        )
    parent = os.path.dirname(os.path.abspath(run_path))
    name = os.path.basename(os.path.normpath(run_path))
    config = run_config(name, os.path.dirname(os.path.normpath(run_path)), gpt_args,
                        vocabulary_size, context, dtype,
                        chat=_chat_settings(described, tokenizer, chat_template, system_prompt),
                        family=family.name)
    config_lib.validate(config)
    model = build_causal_lm(config, vocabulary_size, forward_pass=False)
    try:
        if backbone is None:
            load_hugging_face_tensors(read_safetensors(described.path), model.backbone)
        else:
            family.copy_weights(backbone, model.backbone)
    except ValueError as e:
        raise TfchatError(f"{source}: {e}") from None
    del backbone  # one copy of the weights fewer before the checkpoint is written
    gc.collect()

    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.converting-", dir=parent)
    try:
        folder = RunFolder(staging)
        tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model), folder.checkpoints, max_to_keep=1
        ).save(checkpoint_number=0)
        folder.create(config, tokenizer)
        if os.path.exists(run_path):
            shutil.rmtree(run_path)
        os.replace(staging, run_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verbose:
        print(f"{source}: a {family.name} model, {model.backbone.num_params():,} parameters, "
              f"context {block}, chat template {config.tokenizer.chat_template}, written to "
              f"{run_path} (step 0).")
        own = [t.name for t in family.chat_templates]
        if config.tokenizer.chat_template == "plain" and chat_template == "auto" and own:
            # A keras-hub preset keeps no template, and a family's markers
            # may not be single tokens of its vocabulary (Mistral v0.1's
            # [INST] is plain text), so an instruct model can look like a
            # base one.
            print(f"note: no chat format was found in {source}, so it is a causal run; if it "
                  f"is an instruct model, convert it with --chat_template {' or '.join(own)} "
                  "(or fine-tune with --tokenizer.chat_template).")
    return family


def init_from_run(source, runs_dir, verbose=True):
    """The run folder for `init_from` `source`: the source itself when it is
    a tfchat run, else its conversion into `<runs_dir>/pretrained/<name>`
    (made on first use, reused after)."""
    if is_tfchat_run(source):
        return source
    if not os.path.isdir(source) and not source.startswith(HANDLE_PREFIXES):
        raise TfchatError(
            f"No tfchat run at {source}, nor a pretrained checkpoint (a keras-hub preset or "
            "Hugging Face directory, or an hf:// / kaggle:// handle)."
        )
    described = describe_source(source)
    slug = described.path.split("://")[-1].rstrip("/").replace("/", "--") if described.kind == "handle" \
        else os.path.basename(os.path.normpath(described.path))
    run_path = os.path.join(runs_dir, "pretrained", slug)
    if not is_tfchat_run(run_path):
        convert(source, run_path, verbose=verbose)
    elif verbose:
        print(f"Starting from {run_path} (converted from {source} earlier).")
    return run_path
