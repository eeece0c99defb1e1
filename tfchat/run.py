"""A trained run loaded back from its folder (`tfchat.run_folder`, whose
names this module re-exports): `load_run` rebuilds a trained model from it;
`merged_run` folds a LoRA run's adapters into its weights in memory
(`merge_lora_run` writes that as a run); `check_init_from` says whether
a config may start from a run.
"""

import dataclasses
import os
import shutil

import tensorflow as tf

from tfchat import config as config_lib
from tfchat import families, objectives
from tfchat.data.chat_template import use_chat_template
from tfchat.data.files import write_json_atomic
from tfchat.data.tokenizer import load_tokenizer
from tfchat.errors import TfchatError
from tfchat.model.lora import enable_lora, merge_lora
from tfchat.model.quantize import METHOD as QUANTIZATION_METHOD, quantize_int8
from tfchat.objectives.base import DECODER_OPTIONS
from tfchat.run_folder import (  # noqa: F401 (re-exported: the run folder's names)
    BEST_DIR, BEST_FILE, CHECKPOINT_DIR, CONFIG_FILE, EVALUATION_FILE, LABELS_FILE, LOG_DIR,
    METRICS_FILE, TOKENIZER_DIR, WORKERS_DIR, RunFolder, checkpoint_step, load_config,
    same_files,
)

# The model fields an `init_from` run must share with the run it starts.
_ARCHITECTURE = (
    "num_layers", "num_heads", "hidden_dim", "intermediate_dim", "block_size", *DECODER_OPTIONS,
)


def apply_lora(model, config):
    """Adds the LoRA adapters `config.model` asks for (none when lora_rank is
    0), freezing every base weight. Returns the adapter variables."""
    m = config.model
    if not m.lora_rank:
        return []
    return enable_lora(model.backbone, m.lora_rank, m.lora_alpha, config_lib.lora_targets(m))


def build_model(config, vocabulary_size, labels=None, forward_pass=True):
    """The task model of `config`'s objective (`auto` resolved from its
    data), built, with the LoRA adapters its config asks for.

    The model is built by running it once on zeros, as training and export
    expect. `forward_pass=False` (a GPT only) creates the same weights with
    `GPT.build` instead, without running the model (half a second less before
    a one-shot reply): enough to restore a checkpoint and generate."""
    config = objectives.resolve(config)
    model = objectives.get(config.objective).build_model(
        config, vocabulary_size, labels, forward_pass=forward_pass
    )
    apply_lora(model, config)
    return model


def check_family(config):
    """`model.family` names a registered family or `none` (`tfchat.convert`
    records it; a run started from another inherits it)."""
    if config.model.family != families.NONE:
        families.get(config.model.family)


def check_init_from(config):
    """Checks that `config.init_from` is a run this config can start from:
    an objective its objective starts from, no LoRA adapters left unmerged,
    the same model shape and the same tokenizer settings. Returns that run's
    config."""
    source_path = config.init_from
    source = load_config(source_path)
    allowed = objectives.get(config.objective).init_from
    if source.objective not in allowed:
        raise TfchatError(
            f"init_from {source_path} is a {source.objective} run; objective "
            f"{config.objective} starts from a {' or '.join(allowed) or 'no'} run."
        )
    if source.model.lora_rank:
        raise TfchatError(
            f"init_from {source_path} has LoRA adapters; merge them into its weights "
            f"first: python -m tfchat.lora merge --run {source_path}"
        )
    if config.model.family != source.model.family:
        raise TfchatError(
            f"model.family is {config.model.family} but init_from {source_path} is "
            f"{source.model.family}; a fine-tuned model stays of its family (leave "
            "model.family unset: it is taken from init_from)."
        )
    for key in _ARCHITECTURE:
        mine, theirs = getattr(config.model, key), getattr(source.model, key)
        if key == "intermediate_dim":  # 0 means 4 x hidden_dim
            mine = mine or 4 * config.model.hidden_dim
            theirs = theirs or 4 * source.model.hidden_dim
        if key == "num_kv_heads":  # 0 means num_heads
            mine = mine or config.model.num_heads
            theirs = theirs or source.model.num_heads
        if key == "block_size" and source.model.position == "rope":
            continue  # no weight depends on it (config.validate checks max_positions)
        if mine != theirs:
            raise TfchatError(
                f"model.{key} is {mine} but init_from {source_path} has {theirs}; "
                "a fine-tuned model keeps its pretrained shape."
            )
    # The chat markers are reserved ids of every tfchat tokenizer, so a
    # pretrained vocabulary needs no new embedding rows for chat; it must
    # only be the very same vocabulary.
    for field in dataclasses.fields(source.tokenizer):
        if field.name in ("chat_template", "system_prompt"):
            continue  # how conversations are rendered, not the vocabulary
        mine, theirs = getattr(config.tokenizer, field.name), getattr(source.tokenizer, field.name)
        if mine != theirs:
            raise TfchatError(
                f"tokenizer.{field.name} is {mine} but init_from {source_path} uses "
                f"{theirs}; a fine-tuned model keeps its pretrained vocabulary."
            )
    return source


class Run:
    """A trained run loaded back: config, objective, tokenizer, model, step."""

    def __init__(self, path, config, tokenizer, model, step, labels=None, checkpoint="latest"):
        self.path = path
        self.folder = RunFolder(path)
        self.config = config
        self.objective = objectives.get(config.objective)
        self.tokenizer = tokenizer
        self.model = model
        self.backbone = model.backbone
        self.step = step
        self.labels = labels
        # Which of the run's checkpoints it holds: "latest" or "best".
        self.checkpoint = checkpoint
        # {"method", "scales"} once `quantized_run` made the weights int8.
        self.quantization = None

    def init_checkpoint(self):
        """The checkpoint of the run this one started from (`init_from`;
        a DPO run's reference weights): `start_checkpoint`."""
        if not self.config.init_from:
            raise TfchatError(f"The run at {self.path} has no init_from.")
        return start_checkpoint(self.config.init_from)


def check_generates(run):
    """Raises `TfchatError` unless `run` is a GPT run (causal or chat): the
    encoder objectives' models do not generate text."""
    if not run.objective.generates:
        hint = "python -m tfchat.fill_mask" if run.objective.fills_masks else "python -m tfchat.evaluate"
        raise TfchatError(
            f"{run.path} is a {run.config.objective} run (a BERT encoder), which does "
            f"not generate text; try {hint} --run {run.path}."
        )
    return run


def default_checkpoint(folder, config):
    """The checkpoint a command loads unless told: its objective's
    `default_checkpoint` ("latest" for most; "best" for dpo, whose latest
    may have given up the chosen replies), or "latest" while there is no
    best yet."""
    which = objectives.get(config.objective).default_checkpoint
    if which == "best" and folder.read_best() is None:
        return "latest"
    return which


def start_checkpoint(path):
    """The checkpoint a run started from the run at `path` (`init_from`)
    takes: the one commands load from it (`default_checkpoint`), so that a
    second round of tuning starts from what chat and export showed."""
    folder = RunFolder(path)
    return folder.latest_checkpoint(default_checkpoint(folder, folder.read_config()))[0]


def load_run(path, checkpoint=None, forward_pass=True):
    """Loads a run's config, tokenizer and checkpointed weights: the
    `latest` checkpoint, the `best` (lowest validation loss, or the
    objective's own `selection_loss`), or by default the objective's
    choice (`default_checkpoint`); `Run.checkpoint` says which.
    `forward_pass=False`: see `build_model` (for commands that only generate)."""
    folder = RunFolder(path)
    config = folder.read_config()
    tokenizer = use_chat_template(load_tokenizer(folder.tokenizer), config.tokenizer)
    checkpoint = checkpoint or default_checkpoint(folder, config)
    latest, step = folder.latest_checkpoint(checkpoint)
    labels = folder.read_labels() if objectives.get(config.objective).labelled else None
    # A LoRA run's checkpoints hold the adapters beside the frozen weights.
    model = build_model(config, tokenizer.vocabulary_size, labels, forward_pass=forward_pass)
    status = tf.train.Checkpoint(model=model).restore(latest)
    # Every weight of the model must come from the checkpoint; the optimizer,
    # data position and random state it also holds are not needed here.
    status.assert_existing_objects_matched().expect_partial()
    return Run(path, config, tokenizer, model, step, labels=labels, checkpoint=checkpoint)


def merged_run(run, out_path=None):
    """The LoRA run `run` with its adapters folded into the weights, in
    memory: a `Run` of an ordinary model (model.lora_rank 0, the same
    tokenizer and step) that computes what `run` does. Its config names
    `out_path` when given (where `merge_lora_run` writes it), else the run
    itself; nothing is written."""
    if not run.config.model.lora_rank:
        raise TfchatError(f"The run at {run.path} has no LoRA adapters (model.lora_rank is 0).")
    path = out_path or run.path
    config = dataclasses.replace(
        run.config,
        name=os.path.basename(os.path.normpath(path)),
        runs_dir=os.path.dirname(os.path.normpath(path)),
        model=dataclasses.replace(run.config.model, lora_rank=0),
    )
    merged = build_model(config, run.tokenizer.vocabulary_size, run.labels)
    merge_lora(run.backbone, merged.backbone)
    return Run(path, config, run.tokenizer, merged, run.step, labels=run.labels,
               checkpoint=run.checkpoint)


QUANTIZE_MODES = ("int8",)


def quantized_run(run, mode="int8"):
    """`run` with its GPT's Dense and Embedding weights int8, in memory
    (`tfchat.model.quantize`; LoRA adapters merged first), for export,
    evaluation and chat. Its `quantization` records the method and a
    summary of every weight's scales."""
    if mode not in QUANTIZE_MODES:
        raise TfchatError(f"Unknown quantization {mode!r}; use one of {', '.join(QUANTIZE_MODES)}.")
    check_generates(run)
    if run.config.model.lora_rank:
        run = merged_run(run)
    scales = quantize_int8(run.backbone)
    run.quantization = {"mode": mode, "method": QUANTIZATION_METHOD, "scales": scales}
    return run


def merge_lora_run(run_path, out_path, overwrite=False):
    """Writes to `out_path` a copy of the LoRA run at `run_path` with its
    adapters folded into the weights (`merged_run`): an ordinary run
    (model.lora_rank 0, the same tokenizer, one checkpoint at the same step)."""
    run = load_run(run_path)
    if not run.config.model.lora_rank:
        raise TfchatError(f"The run at {run_path} has no LoRA adapters (model.lora_rank is 0).")
    if os.path.exists(out_path):
        if not overwrite:
            raise TfchatError(f"{out_path} already exists; pass --overwrite to replace it.")
        shutil.rmtree(out_path)
    merged = merged_run(run, out_path)
    out = RunFolder(out_path)
    os.makedirs(out.path)
    shutil.copytree(run.folder.tokenizer, out.tokenizer)
    write_json_atomic(out.config, merged.config.to_dict())
    tf.train.CheckpointManager(
        tf.train.Checkpoint(model=merged.model), out.checkpoints, max_to_keep=1
    ).save(checkpoint_number=run.step)
    return out_path
