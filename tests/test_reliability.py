"""Crash safety: a run killed at any moment resumes onto the same loss curve,
a checkpoint write cut short never becomes the latest checkpoint, and a
non-finite loss stops (or is skipped) at the step that produced it."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import as_cli_args
from tfchat.errors import TfchatError
from tfchat.run import RunFolder, build_model
from tfchat.train.optim import build_optimizer
from tfchat.train.trainer import Trainer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": str(REPO_ROOT)}

# Deterministic ops make the comparison bit-for-bit. Dropout is on, as in the
# default job: its random state must resume too.
STEPS = {"train.max_steps": 120, "train.eval_interval": 20, "train.log_interval": 10,
         "train.deterministic": True, "train.keep_checkpoints": 20, "model.dropout": 0.1}


def _settings(tiny_settings, name):
    return {**tiny_settings, **STEPS, "name": name}


def _fit(settings, *extra):
    return subprocess.run(
        [sys.executable, "-m", "tfchat.fit", *as_cli_args(settings), *extra],
        env=ENV, capture_output=True, text=True, timeout=300,
    )


# Timings differ from run to run; everything else a line holds must not.
TIMINGS = ("tokens/s", "useful_tokens/s")


def _logged(run_dir):
    """metrics.jsonl's lines, timings left out, in the order written: one
    per log and one per evaluation, each step once."""
    lines = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            lines.append({k: v for k, v in entry.items() if k not in TIMINGS})
    return lines


def _scalars(run_dir):
    """(tag, step) -> every value TensorBoard's event files hold for it,
    timings left out."""
    scalars = {}
    logs = os.path.join(run_dir, "logs")
    for name in sorted(os.listdir(logs)):
        if "tfevents" not in name:
            continue
        for record in tf.data.TFRecordDataset(os.path.join(logs, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag.startswith(("train/", "val/")) and "tokens_per_s" not in value.tag:
                    scalars.setdefault((value.tag, event.step), []).append(
                        float(tf.make_ndarray(value.tensor)))
    return scalars


def _latest_step(run_dir):
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.fixture
def reference_run(tiny_settings):
    """An uninterrupted run's folder."""
    settings = _settings(tiny_settings, "reference")
    proc = _fit(settings)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = os.path.join(settings["runs_dir"], "reference")
    logs, evaluations = STEPS["train.max_steps"] // STEPS["train.log_interval"], \
        STEPS["train.max_steps"] // STEPS["train.eval_interval"]
    assert len(_logged(run_dir)) == logs + evaluations
    return run_dir


# Runs tfchat.fit, but stalls at the moment STALL names ("log 10": after the
# train log of step 10; "evaluate 60": inside the evaluation at step 60,
# after the validation pass and before its checkpoint; "write 80": inside
# the write of checkpoint 80, after its files are written and before the
# checkpoint state names it; "saved 100": the moment checkpoint 100 has
# become the latest), printing STALLED, so that the test can kill the
# process at that moment.
STALLING_FIT = textwrap.dedent(
    """
    import os, sys, time
    import tensorflow as tf
    from tfchat.train import trainer as trainer_lib

    kind, at = os.environ["STALL"].split()
    at = int(at)

    def stall():
        print(f"\\nSTALLED {kind} {at}", flush=True)
        time.sleep(600)

    if kind == "log":
        original_log = trainer_lib.Trainer._append_metrics_line
        def stalling_log(self, values):
            original_log(self, values)
            if values["step"] == at and "loss" in values:
                stall()
        trainer_lib.Trainer._append_metrics_line = stalling_log
    elif kind == "evaluate":
        original_evaluate = trainer_lib.Trainer.evaluate
        def stalling_evaluate(self):
            results = original_evaluate(self)
            if self.step == at:
                stall()
            return results
        trainer_lib.Trainer.evaluate = stalling_evaluate
    elif kind in ("write", "saved"):
        original_record = tf.train.CheckpointManager._record_state
        def stalling_record_state(self):
            ours = (self._latest_checkpoint or "").endswith(f"checkpoints/ckpt-{at}")
            if ours and kind == "write":
                stall()
            original_record(self)
            if ours and kind == "saved":
                stall()
        tf.train.CheckpointManager._record_state = stalling_record_state
    from tfchat.fit import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _fit_until_killed(settings, stall, *extra):
    """Starts tfchat.fit, SIGKILLs it once it stalls at `stall`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLING_FIT, *as_cli_args(settings), *extra],
        env={**ENV, "STALL": stall}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    stalled = any(f"STALLED {stall}" in line for line in proc.stdout)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert stalled, proc.stderr.read()[-2000:]


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_matches_uninterrupted(tiny_settings, reference_run):
    """One run killed five times, each time at another kind of moment, and
    resumed after each: what it logs is the uninterrupted run's, bit for bit,
    every step once, in metrics.jsonl and in TensorBoard."""
    settings = _settings(tiny_settings, "killed")
    run_dir = os.path.join(settings["runs_dir"], "killed")
    # During the first steps, before any checkpoint.
    _fit_until_killed(settings, "log 10")
    assert _latest_step(run_dir) == 0
    # Between two checkpoints.
    _fit_until_killed(settings, "log 50", "--resume")
    assert _latest_step(run_dir) == 40
    # During an evaluation.
    _fit_until_killed(settings, "evaluate 60", "--resume")
    assert _latest_step(run_dir) == 40
    # During a checkpoint write: its files exist, but it never became the
    # latest, while its step's lines may already be logged.
    _fit_until_killed(settings, "write 80", "--resume")
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-80.index"))
    assert _latest_step(run_dir) == 60
    # As soon as a checkpoint is the latest: a resume does not evaluate its
    # step again.
    _fit_until_killed(settings, "saved 100", "--resume")
    assert _latest_step(run_dir) == 100

    resumed = _fit(settings, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming {run_dir} at step 100" in resumed.stdout
    # Bit for bit, every logged step, no line missing or repeated.
    assert _logged(run_dir) == _logged(reference_run)
    scalars = _scalars(run_dir)
    assert scalars == _scalars(reference_run)
    assert all(len(values) == 1 for values in scalars.values())


@pytest.mark.slow
def test_resume_restores_dropout_random_state(make_config, tmp_path):
    """A trainer rebuilt from the config and restored from step 10 continues
    to the weights an uninterrupted one reaches at step 20, with dropout on."""
    weights = []
    for resumed in (False, True):
        run_dir = tmp_path / f"resumed_{resumed}"
        trainer = _dropout_trainer(make_config, run_dir)
        # The learning-rate schedule is the 20-step one; stop at step 10.
        trainer.train_config.max_steps = 10
        trainer.fit()
        if resumed:  # as a new process would: everything rebuilt from the config
            trainer = _dropout_trainer(make_config, run_dir)
            assert trainer.restore() == 10
        trainer.train_config.max_steps = 20
        trainer.fit()
        weights.append(trainer.task.get_weights())
    for uninterrupted, resumed in zip(*weights):
        np.testing.assert_array_equal(uninterrupted, resumed)


def _dropout_trainer(make_config, run_dir):
    import keras

    config = make_config({"model.dropout": 0.3, "train.max_steps": 20,
                          "train.log_interval": 5, "train.eval_interval": 10,
                          "train.deterministic": True})
    keras.utils.set_random_seed(config.train.seed)
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 30, size=(400, 17)).astype("int32")
    weight = np.ones((400, 16), "float32")
    train_ds = tf.data.Dataset.from_tensor_slices(
        (tokens[:, :-1], tokens[:, 1:], weight)).batch(8)
    val_ds = train_ds.take(1)
    model = build_model(config, vocabulary_size=32)
    optimizer = build_optimizer(config.train, model)
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer)
    strategy = tf.distribute.get_strategy()
    return Trainer(config, strategy, model, train_ds=train_ds, val_ds=val_ds,
                   folder=RunFolder(str(run_dir)), verbose=0)


@pytest.mark.slow
def test_unreadable_latest_checkpoint_is_skipped(tiny_settings, capsys):
    # In-process: nothing here needs a process of its own (the kill tests do).
    from tfchat import fit

    settings = {**_settings(tiny_settings, "torn"), "train.max_steps": 40}
    run_dir = os.path.join(settings["runs_dir"], "torn")
    assert fit.main(as_cli_args(settings)) == 0
    # Tear the newest checkpoint's data, as a crash in the middle of a copy
    # or a full disk would.
    data = os.path.join(run_dir, "checkpoints", "ckpt-40.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 3)
    capsys.readouterr()
    assert fit.main(as_cli_args({**settings, "train.max_steps": 60}) + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "Skipping unreadable checkpoint" in out
    assert "ckpt-40" in out and "at step 20" in out
    assert _latest_step(run_dir) == 60


def _poisoned_trainer(make_config, tmp_path, on_nonfinite, bad_step):
    """A Trainer whose `bad_step`-th batch has NaN token weights."""
    config = make_config({"train.on_nonfinite": on_nonfinite, "train.max_steps": 12,
                          "train.log_interval": 4, "train.eval_interval": 4})
    rng = np.random.default_rng(0)
    batches = []
    for step in range(1, 200):
        tokens = rng.integers(4, 30, size=(8, 17)).astype("int32")
        weight = np.ones((8, 16), "float32")
        if step == bad_step:
            weight[0, 0] = np.nan
        batches.append((tokens[:, :-1], tokens[:, 1:], weight))
    x, y, w = (np.stack(parts) for parts in zip(*batches))
    train_ds = tf.data.Dataset.from_tensor_slices((x, y, w))
    val_ds = tf.data.Dataset.from_tensor_slices((x[:2], y[:2], np.ones_like(w[:2])))
    model = build_model(config, vocabulary_size=32)
    model.compile(optimizer=build_optimizer(config.train, model))
    strategy = tf.distribute.get_strategy()
    return Trainer(config, strategy, model, train_ds=train_ds, val_ds=val_ds,
                   folder=RunFolder(str(tmp_path / "run")), verbose=0)


def test_nonfinite_loss_stops_at_its_step(make_config, tmp_path):
    trainer = _poisoned_trainer(make_config, tmp_path, "stop", bad_step=7)
    with pytest.raises(TfchatError, match="at step 7;.*ckpt-4, is intact"):
        trainer.fit()
    # The checkpoint saved before the bad step is still the latest one.
    assert trainer.manager.latest_checkpoint.endswith("ckpt-4")


def test_nonfinite_loss_is_skipped_when_asked(make_config, tmp_path):
    trainer = _poisoned_trainer(make_config, tmp_path, "skip", bad_step=7)
    history = trainer.fit()
    # One skipped update, which does not count as a step: reaching step 12
    # takes one more batch.
    assert sum(h.get("skipped_steps", 0) for h in history) == 1
    assert history[0].get("skipped_steps", 0) == 0
    assert all(np.isfinite(h["loss"]) for h in history)
    assert trainer.step == 12
    weights = trainer.task.get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
