"""The run folder, `runs/<name>/`: its layout, and a trained run loaded back.

    runs/<name>/config.json        the full config the run was started with
    runs/<name>/tokenizer/         its tokenizer
    runs/<name>/checkpoints/       tf.train checkpoints (model, optimizer, data
                                   position, random state), numbered by step
    runs/<name>/checkpoints/best/  the lowest validation loss so far (or
                                   the objective's selection_loss), and
                                   best.json (its step and loss)
    runs/<name>/logs/              TensorBoard event files
    runs/<name>/metrics.jsonl      the logged metrics, a JSON line per log
    runs/<name>/labels.json        classify runs: the class names, in id order
    runs/<name>/evaluation.json    the last `python -m tfchat.evaluate`
    runs/<name>/workers/worker_<i>/  non-chief workers' checkpoints: their
                                   share of the input's position (keep them)

This module is the one place these names are written down. `RunFolder`
knows the paths; `load_run` rebuilds a trained model from them;
`merged_run` folds a LoRA run's adapters into its weights in memory
(`merge_lora_run` writes that as a run); `check_init_from` says whether
a config may start from a run.
"""

import dataclasses
import json
import os
import shutil

import tensorflow as tf

from tfchat import config as config_lib
from tfchat import objectives
from tfchat.data.chat_template import use_chat_template
from tfchat.data.files import write_json_atomic
from tfchat.data.tokenizer import load_tokenizer
from tfchat.errors import TfchatError
from tfchat.families import family_of_old_run
from tfchat.model.lora import enable_lora, merge_lora
from tfchat.model.quantize import METHOD as QUANTIZATION_METHOD, quantize_int8
from tfchat.objectives.base import DECODER_OPTIONS

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
BEST_FILE = "best.json"
LOG_DIR = "logs"
METRICS_FILE = "metrics.jsonl"
LABELS_FILE = "labels.json"
EVALUATION_FILE = "evaluation.json"
WORKERS_DIR = "workers"
# The model fields an `init_from` run must share with the run it starts.
_ARCHITECTURE = (
    "num_layers", "num_heads", "hidden_dim", "intermediate_dim", "block_size", *DECODER_OPTIONS,
)


def checkpoint_step(checkpoint_path):
    """The step a checkpoint was saved at: `.../ckpt-120` -> 120."""
    return int(checkpoint_path.rsplit("-", 1)[1])


class RunFolder:
    """The paths of the run folder at `path`, and its small files."""

    def __init__(self, path):
        self.path = path
        self.config = os.path.join(path, CONFIG_FILE)
        self.tokenizer = os.path.join(path, TOKENIZER_DIR)
        self.checkpoints = os.path.join(path, CHECKPOINT_DIR)
        self.best = os.path.join(self.checkpoints, BEST_DIR)
        self.logs = os.path.join(path, LOG_DIR)
        self.metrics = os.path.join(path, METRICS_FILE)
        self.labels = os.path.join(path, LABELS_FILE)
        self.evaluation = os.path.join(path, EVALUATION_FILE)

    def exists(self):
        return os.path.isfile(self.config)

    def worker_checkpoints(self, task_id):
        """Where a non-chief worker writes its copy of every checkpoint
        (every worker must take part in saving under MultiWorkerMirrored)."""
        return os.path.join(self.path, WORKERS_DIR, f"worker_{task_id}")

    def read_config(self):
        """The run's config. A run written before `model.family` existed
        gets its family from its decoder options, recorded in its config.json
        once (where the folder can be written)."""
        if not self.exists():
            raise TfchatError(f"No tfchat run at {self.path} (no {CONFIG_FILE}).")
        config = config_lib.load(self.config)
        with open(self.config, encoding="utf-8") as f:
            recorded = "family" in (json.load(f).get("model") or {})
        if not recorded:
            family = family_of_old_run(config.model, config.tokenizer.kind)
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, family=family))
            try:
                write_json_atomic(self.config, config.to_dict())
            except OSError:
                pass  # a read-only run still loads; it is inferred again next time
        return config

    def create(self, config, tokenizer, labels=None):
        """Writes the files a new run starts with; the config last, as it is
        what marks the folder as a run."""
        os.makedirs(self.path, exist_ok=True)
        tokenizer.save(self.tokenizer)
        if labels is not None:
            write_json_atomic(self.labels, list(labels))
        write_json_atomic(self.config, config.to_dict())

    def read_labels(self):
        if not os.path.isfile(self.labels):
            raise TfchatError(f"The classify run at {self.path} has no {LABELS_FILE}.")
        with open(self.labels, encoding="utf-8") as f:
            return tuple(json.load(f))

    def write_best(self, best_dir, step, val_loss, checkpoint, selection_loss=None):
        write_json_atomic(os.path.join(best_dir, BEST_FILE),
                          {"step": step, "val_loss": val_loss, "checkpoint": checkpoint,
                           "selection_loss": val_loss if selection_loss is None else selection_loss})

    def read_best(self, best_dir=None):
        """The best checkpoint's record ({"step", "val_loss", "checkpoint",
        "selection_loss"}: what ranked it, the validation loss unless its
        objective ranks by more), or None before the first evaluation."""
        path = os.path.join(best_dir or self.best, BEST_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def evaluation_at(self, step):
        """The validation results logged at `step` (metrics.jsonl), or None."""
        if not os.path.isfile(self.metrics):
            return None
        with open(self.metrics, encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                if entry["step"] == step and "val_loss" in entry:
                    return entry
        return None

    def append_metrics(self, values):
        """One JSON line per log, for scripts. A resumed run first drops the
        lines after its checkpoint's step (`Trainer.restore`), then logs
        those steps again: each step's lines appear once."""
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(values) + "\n")

    def latest_checkpoint(self, which="latest"):
        """(path, step) of the newest checkpoint, or of the `best` one."""
        latest = tf.train.latest_checkpoint(self.best if which == "best" else self.checkpoints)
        if latest is None:
            kind = "best " if which == "best" else ""
            raise TfchatError(f"The run at {self.path} has no {kind}checkpoint yet.")
        return latest, checkpoint_step(latest)


def load_config(path):
    return RunFolder(path).read_config()


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


def same_files(dir_a, dir_b):
    """Whether two folders hold the same files with the same bytes."""
    names = sorted(os.listdir(dir_a))
    if names != sorted(os.listdir(dir_b)):
        return False
    for name in names:
        with open(os.path.join(dir_a, name), "rb") as a, open(os.path.join(dir_b, name), "rb") as b:
            if a.read() != b.read():
                return False
    return True


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
        hint = "python -m tfchat.fill_mask" if run.config.objective == "mlm" else "python -m tfchat.evaluate"
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
