"""The run folder, `runs/<name>/`: every file name in it, its small files,
and checkpoint steps. This module is the one place these names are written
down; it imports no objective (loading a trained run back is
`tfchat.run`'s), so whatever needs only the paths stays light.

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
"""

import dataclasses
import json
import os

import tensorflow as tf

from tfchat import config as config_lib
from tfchat.data.files import write_json_atomic
from tfchat.errors import TfchatError
from tfchat.families import family_of_old_run

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
        gets its family from its decoder options, and one written before
        `data.fix_unicode` existed gets it off, each recorded in its
        config.json once (where the folder can be written)."""
        if not self.exists():
            raise TfchatError(f"No tfchat run at {self.path} (no {CONFIG_FILE}).")
        config = config_lib.load(self.config)
        with open(self.config, encoding="utf-8") as f:
            saved = json.load(f)
        older = False
        if "family" not in (saved.get("model") or {}):
            older = True
            family = family_of_old_run(config.model, config.tokenizer.kind)
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, family=family))
        if "fix_unicode" not in (saved.get("data") or {}):
            # Unicode repair became the default later; a run from before it
            # resumes, and is evaluated, on the data it trained on.
            older = True
            config = dataclasses.replace(
                config, data=dataclasses.replace(config.data, fix_unicode=False))
        if older:
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
