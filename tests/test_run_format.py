"""A run folder in the format tfchat has written since checkpoints held the
input position (before they held the random state too) still loads: every
command reads it, and training resumes from it.

The folder is written here by hand, with literal file names, not through
tfchat.run_folder, so renaming a file or a checkpointed attribute in the package
breaks this test rather than silently orphaning users' runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPETITIVE_TEXT, write_text
from tfchat import chat, evaluate, export, generate
from tfchat.data.corpus import Corpus
from tfchat.data.tokenizer import train_tokenizer
from tfchat.job import compile_task, train
from tfchat.objectives import causal
from tfchat.run import build_model, load_run

STEP = 10


def _write_run_by_hand(config):
    """runs/<name>/: config.json, tokenizer/, checkpoints/ckpt-10 holding
    `model`, `optimizer` and `data` (no `random`), as tfchat 0.1.0 wrote them."""
    corpus = Corpus(config.data)
    tokenizer = train_tokenizer(config.tokenizer, corpus.iter_texts("train"))
    model = build_model(config, tokenizer.vocabulary_size)
    compile_task(model, config.train)
    model.optimizer.iterations.assign(STEP)
    iterator = iter(causal.datasets(config, corpus, tokenizer)["train"])
    next(iterator)
    run_dir = os.path.join(config.runs_dir, config.name)
    os.makedirs(run_dir)
    tokenizer.save(os.path.join(run_dir, "tokenizer"))
    with open(os.path.join(run_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, data=iterator)
    tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, "checkpoints"), max_to_keep=3) \
        .save(checkpoint_number=STEP)
    return run_dir, model


@pytest.mark.slow
def test_a_run_folder_of_the_earlier_format_loads_and_resumes(make_config, tmp_path, capsys):
    config = make_config({"name": "earlier", "objective": "causal", "model.dropout": 0.1,
                          "data.path": write_text(tmp_path / "text.txt", REPETITIVE_TEXT)})
    run_dir, model = _write_run_by_hand(config)

    run = load_run(run_dir)
    assert run.step == STEP and run.config == config
    ids = tf.constant([[5, 6, 7, 8]])
    np.testing.assert_array_equal(run.model(ids).numpy(), model(ids).numpy())

    assert generate.main(["--run", run_dir, "--prompt", "the", "--max-new-tokens", "5",
                          "--temperature", "0"]) == 0
    assert chat.main(["--run", run_dir, "--temperature", "0", "--max-new-tokens", "5", "hi"]) == 0
    assert evaluate.main(["--run", run_dir]) == 0
    assert "val_loss" in json.load(open(os.path.join(run_dir, "evaluation.json")))
    saved = str(tmp_path / "saved")
    assert export.main(["--run", run_dir, "--saved-models-dir", saved]) == 0
    assert os.path.isfile(os.path.join(saved, "earlier", "1", "saved_model.pb"))
    capsys.readouterr()

    resumed = make_config({"name": "earlier", "objective": "causal", "model.dropout": 0.1,
                           "data.path": config.data.path, "train.max_steps": STEP + 10})
    history = train(resumed, resume=True, verbose=1)
    out = capsys.readouterr().out
    assert f"Resuming {run_dir} at step {STEP}" in out
    assert "predates saved random state" in out
    assert [h["step"] for h in history] == [15, 20]
    # The resumed run writes the current format: the random state is saved.
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert any(name.startswith("random/") for name, _ in tf.train.list_variables(latest))


def test_the_run_folder_reads_a_run_without_loading_an_objective(tmp_path):
    """`tfchat.run_folder` reads a run's config.json (the objective
    sections included, as every earlier run wrote them) with no objective,
    generator, exporter or keras-hub loaded; `tfchat.run` gives the same
    names."""
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({
        "name": "old", "objective": "dpo", "init_from": "runs/sft",
        "model": {"num_layers": 2, "family": "none"},
        "mlm": {"mask_rate": 0.2}, "dpo": {"beta": 0.5}, "distill": {"teacher": "runs/t"},
    }), encoding="utf-8")
    code = (
        "import sys\n"
        "from tfchat.run_folder import RunFolder\n"
        f"config = RunFolder({str(run_dir)!r}).read_config()\n"
        "print(config.objective, config.dpo.beta, config.mlm.mask_rate, config.distill.teacher)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tfchat.objectives', "
        "'tfchat.inference', 'tfchat.serving', 'tfchat.run', 'keras_hub')) "
        "and m != 'tfchat.run_folder'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["dpo 0.5 0.2 runs/t", "[]"]

    from tfchat import run, run_folder

    assert run.RunFolder is run_folder.RunFolder
    assert run.load_config is run_folder.load_config
