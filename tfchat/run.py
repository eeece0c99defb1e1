"""A run folder, `runs/<name>/`, and how to rebuild a model from one.

    runs/<name>/config.json     the full config the run was started with
    runs/<name>/tokenizer/      the tokenizer trained for it
    runs/<name>/checkpoints/    tf.train checkpoints: model, optimizer, data position
    runs/<name>/logs/           TensorBoard event files
    runs/<name>/labels.json     classify runs: the class names, in id order
"""

import dataclasses
import json
import os

import tfchat  # noqa: F401  (sets the Keras backend)
import tensorflow as tf

from tfchat import config as config_lib
from tfchat.data.tokenizer import load_tokenizer
from tfchat.errors import TfchatError
from tfchat.model.gpt import GPT
from tfchat.train.distribute import dtype_policy
from tfchat.train.tasks import CausalLM

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
LABELS_FILE = "labels.json"
# The model fields an `init_from` run must share with the run it starts.
_ARCHITECTURE = ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "block_size")
# Which runs each encoder objective may start from.
_INIT_FROM = {"mlm": ("mlm",), "classify": ("mlm", "classify")}


def build_model(config, vocabulary_size, num_classes=None, forward_pass=True):
    """The task model (backbone inside) for `config`, built with weights.
    `num_classes` is the label count of a classify run.

    The model is built by running it once on zeros, as training and export
    expect. `forward_pass=False` (a GPT only) creates the same weights with
    `GPT.build` instead, without running the model (half a second less before
    a one-shot reply): enough to restore a checkpoint and generate."""
    if config.objective in config_lib.ENCODER_OBJECTIVES:
        return build_encoder_model(config, vocabulary_size, num_classes)
    dtype = dtype_policy(config.train.precision)
    backbone = GPT(**_backbone_args(config, vocabulary_size), name="gpt")
    model = CausalLM(
        backbone,
        gradient_accumulation_steps=config.train.grad_accumulation_steps,
        dtype=dtype,
        name="causal_lm",
    )
    if forward_pass:
        model(tf.zeros((1, config.model.block_size), tf.int32))
    else:
        backbone.build((None, config.model.block_size))
        model.built = True  # CausalLM has no weights of its own
    return model


def _backbone_args(config, vocabulary_size):
    """What GPT and BertEncoder both take from `config.model`."""
    m = config.model
    return dict(
        vocabulary_size=vocabulary_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        hidden_dim=m.hidden_dim,
        intermediate_dim=m.intermediate_dim,
        max_sequence_length=m.block_size,
        dropout=m.dropout,
        dtype=dtype_policy(config.train.precision),
    )


def build_encoder_model(config, vocabulary_size, num_classes=None):
    """A `MaskedLM` or `TextClassifier` over a `BertEncoder`, built."""
    from tfchat.data.pipeline import default_max_predictions
    from tfchat.model.bert import BertEncoder
    from tfchat.train.encoder_tasks import MaskedLM, TextClassifier

    m = config.model
    dtype = dtype_policy(config.train.precision)
    backbone = BertEncoder(**_backbone_args(config, vocabulary_size), name="bert")
    steps = config.train.grad_accumulation_steps
    inputs = {
        "token_ids": tf.zeros((1, m.block_size), tf.int32),
        "padding_mask": tf.ones((1, m.block_size), tf.bool),
    }
    if config.objective == "mlm":
        model = MaskedLM(backbone, gradient_accumulation_steps=steps, dtype=dtype, name="masked_lm")
        slots = config.mlm.max_predictions or default_max_predictions(
            config.mlm.mask_rate, m.block_size
        )
        inputs["mask_positions"] = tf.zeros((1, slots), tf.int32)
    else:
        if not num_classes:
            raise ValueError(f"A classify model needs num_classes. Received: {num_classes!r}")
        model = TextClassifier(
            backbone, num_classes, gradient_accumulation_steps=steps, dtype=dtype,
            name="text_classifier",
        )
    model(inputs)
    return model


def apply_lora(model, config):
    """Adds the LoRA adapters `config.model` asks for (none when lora_rank is
    0), freezing every base weight. Returns the adapter variables."""
    from tfchat.model.lora import enable_lora

    m = config.model
    if not m.lora_rank:
        return []
    return enable_lora(
        model.backbone, m.lora_rank, m.lora_alpha, config_lib.lora_targets(m)
    )


def latest_checkpoint(path):
    """The newest checkpoint of the run at `path`, and its step."""
    latest = tf.train.latest_checkpoint(os.path.join(path, CHECKPOINT_DIR))
    if latest is None:
        raise TfchatError(f"The run at {path} has no checkpoint yet.")
    # Checkpoints are numbered by the optimizer step they were saved at.
    return latest, int(latest.rsplit("-", 1)[1])


def restore_weights(model, checkpoint):
    """Loads every backbone weight of `model` from a run checkpoint.

    Only the backbone is named, so nothing else in the checkpoint waits for
    a matching object: restoring `model` itself would also queue the old
    run's optimizer slots for whatever optimizer `model.compile` attaches
    later (TensorFlow restores such deferred values on creation)."""
    root = tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=model.backbone))
    status = root.restore(checkpoint)
    status.assert_existing_objects_matched().expect_partial()


def check_init_from(config):
    """Checks that `config.init_from` is a run this config can start from:
    an allowed objective, the same tokenizer settings and the same model
    shape. Returns that run's config."""
    source = load_config(config.init_from)
    allowed = _INIT_FROM.get(config.objective, ())
    if source.objective not in allowed:
        raise TfchatError(
            f"init_from {config.init_from} is a {source.objective} run; objective "
            f"{config.objective} starts from a {' or '.join(allowed) or 'no'} run."
        )
    different = [
        f"{section}.{name} {getattr(getattr(source, section), name)!r} there, "
        f"{getattr(getattr(config, section), name)!r} here"
        for section, names in (
            ("tokenizer", [f.name for f in dataclasses.fields(source.tokenizer)]),
            ("model", _ARCHITECTURE),
        )
        for name in names
        if getattr(getattr(source, section), name) != getattr(getattr(config, section), name)
    ]
    if different:
        raise TfchatError(
            f"init_from {config.init_from} has a different tokenizer or model: "
            + "; ".join(different) + ". Use the same settings."
        )
    return source


def load_backbone_weights(model, run_path):
    """Copies the backbone (encoder) weights of the run at `run_path`'s
    latest checkpoint into `model.backbone`; every backbone weight must be
    found there."""
    latest = tf.train.latest_checkpoint(os.path.join(run_path, CHECKPOINT_DIR))
    if latest is None:
        raise TfchatError(f"init_from {run_path} has no checkpoint yet.")
    # The backbone branch only (not its head, optimizer or data position).
    restore_weights(model, latest)
    return latest


def save_labels(run_dir, labels):
    write_json_atomic(os.path.join(run_dir, LABELS_FILE), list(labels))


def load_labels(run_dir):
    path = os.path.join(run_dir, LABELS_FILE)
    if not os.path.isfile(path):
        raise TfchatError(f"The classify run at {run_dir} has no {LABELS_FILE}.")
    with open(path, encoding="utf-8") as f:
        return tuple(json.load(f))


def write_json_atomic(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


class Run:
    """A trained run loaded back: config, tokenizer, model and its step."""

    def __init__(self, path, config, tokenizer, model, step, labels=None):
        self.path = path
        self.config = config
        self.tokenizer = tokenizer
        self.model = model
        self.backbone = model.backbone
        self.step = step
        self.labels = labels


def load_config(path):
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise TfchatError(f"No tfchat run at {path} (no {CONFIG_FILE}).")
    return config_lib.load(config_path)


def check_generates(run):
    """Raises `TfchatError` unless `run` is a GPT run (causal or chat): the
    encoder objectives' models do not generate text."""
    if run.config.objective in config_lib.ENCODER_OBJECTIVES:
        hint = "python -m tfchat.fill_mask" if run.config.objective == "mlm" else "python -m tfchat.evaluate"
        raise TfchatError(
            f"{run.path} is a {run.config.objective} run (a BERT encoder), which does "
            f"not generate text; try {hint} --run {run.path}."
        )
    return run


def load_run(path, checkpoint="latest", forward_pass=True):
    """Loads a run's config, tokenizer and checkpointed weights: the
    `latest` checkpoint, or the `best` (lowest validation loss).
    `forward_pass=False`: see `build_model` (for commands that only generate)."""
    config = load_config(path)
    tokenizer = load_tokenizer(os.path.join(path, TOKENIZER_DIR))
    folder = os.path.join(path, CHECKPOINT_DIR)
    if checkpoint == "best":
        folder = os.path.join(folder, "best")
    latest = tf.train.latest_checkpoint(folder)
    if latest is None:
        which = "best " if checkpoint == "best" else ""
        raise TfchatError(f"The run at {path} has no {which}checkpoint yet.")
    labels = load_labels(path) if config.objective == "classify" else None
    model = build_model(config, tokenizer.vocabulary_size, len(labels) if labels else None,
                        forward_pass=forward_pass)
    # A LoRA run's checkpoints hold the adapters beside the frozen weights.
    apply_lora(model, config)
    status = tf.train.Checkpoint(model=model).restore(latest)
    # Every weight of the model must come from the checkpoint; the optimizer
    # and data position it also holds are not needed here.
    status.assert_existing_objects_matched().expect_partial()
    # Checkpoints are numbered by the optimizer step they were saved at.
    step = int(latest.rsplit("-", 1)[1])
    return Run(path, config, tokenizer, model, step, labels=labels)
