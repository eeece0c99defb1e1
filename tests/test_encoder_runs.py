"""End to end: masked-LM pretraining, fill-mask, classification fine-tuning
from the MLM checkpoint, evaluation, and their command lines."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import TINY, as_cli_args, classify_config, encoder_settings, nest
from tfchat import config as config_lib
from tfchat import evaluate as evaluate_cli
from tfchat import fill_mask as fill_mask_cli
from tfchat import fit, job, objectives
from tfchat.data.files import write_json_atomic
from tfchat.errors import TfchatError
from tfchat.inference.fill_mask import FillMask
from tfchat.objectives.base import restore_backbone
from tfchat.run import RunFolder, build_model, load_run
from tfchat.train.trainer import Trainer

def test_fill_mask_recovers_the_masked_word(mlm_run, capsys):
    run = load_run(mlm_run)
    fill = FillMask(run.model, run.tokenizer)
    texts = ["the cat sat on the [MASK] .", "a bird flew over the [MASK] .",
             "her [MASK] plays the old piano ."]
    predictions = fill.predict(texts, top_k=3)
    assert [masks[0][0][0] for masks in predictions] == ["mat", "sea", "brother"]
    for masks in predictions:
        probabilities = [p for _, p in masks[0]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    # Two masks in one text, through the command line.
    capsys.readouterr()
    assert fill_mask_cli.main(["--run", mlm_run, "--top-k", "2", "the [MASK] sat on the [MASK] ."]) == 0
    out = capsys.readouterr().out
    assert "[MASK] 1: cat" in out and "[MASK] 2: mat" in out
    assert "-> the cat sat on the mat ." in out


def test_fill_mask_errors(mlm_run, clf_run, capsys):
    assert fill_mask_cli.main(["--run", mlm_run, "no mask here"]) == 1
    assert "No [MASK]" in capsys.readouterr().err
    assert fill_mask_cli.main(["--run", mlm_run, "the cat " * 20 + "[MASK]"]) == 1
    assert "reads at most 16" in capsys.readouterr().err
    config, _, _ = clf_run
    assert fill_mask_cli.main(["--run", config.run_dir, "a [MASK]"]) == 1
    assert "needs an mlm run" in capsys.readouterr().err


def test_init_from_copies_every_encoder_weight(encoder_root, mlm_run, labelled):
    config = classify_config(encoder_root, mlm_run, labelled)
    model = build_model(config, load_run(mlm_run).tokenizer.vocabulary_size,
                        labels=("animal", "person"))
    before = [w.numpy() for w in model.backbone.weights]
    restore_backbone(model, RunFolder(mlm_run).latest_checkpoint()[0], mlm_run)
    source = load_run(mlm_run).backbone
    assert len(model.backbone.weights) == len(source.weights)
    for mine, theirs, old in zip(model.backbone.weights, source.weights, before):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
        if "gamma" not in mine.path and "beta" not in mine.path and "bias" not in mine.path:
            assert not np.array_equal(mine.numpy(), old), mine.path


def test_classifier_fine_tuned_from_mlm_loads_and_predicts(clf_run, mlm_run, capsys):
    config, history, _ = clf_run
    assert history[-1]["step"] == 60
    run = load_run(config.run_dir, checkpoint="best")
    assert run.labels == ("animal", "person")
    # The run uses the MLM run's tokenizer.
    assert run.tokenizer.vocabulary == load_run(mlm_run).tokenizer.vocabulary
    report = run.objective.evaluate(run)
    assert report["examples"] == 3 and report["accuracy"] == 1.0 and report["macro_f1"] == 1.0
    assert np.trace(report["confusion_matrix"]) == 3

    capsys.readouterr()
    json_path = os.path.join(config.runs_dir, "report.json")
    assert evaluate_cli.main(["--run", config.run_dir, "--json", json_path]) == 0
    out = capsys.readouterr().out
    assert "accuracy 1.0000" in out and "macro-F1 1.0000" in out and "confusion matrix" in out
    with open(json_path, encoding="utf-8") as f:
        written = json.load(f)
    assert written["confusion_matrix"] == report["confusion_matrix"]
    # Accuracy and macro-F1 come with their bootstrap intervals (all 3 right: [1, 1]).
    rows = {row["name"]: row for row in written["metrics"]}
    assert rows["accuracy"]["ci"] == rows["macro_f1"]["ci"] == [1.0, 1.0]
    assert rows["accuracy"]["count"] == 3


def test_classify_log_reports_weights_truncation_and_metrics(clf_run, mlm_run, labelled):
    _, _, log = clf_run
    assert f"Backbone weights from {mlm_run}" in log
    assert len(open(labelled, encoding="utf-8").readlines()) == 31  # 28 train, 3 validation
    assert "Truncated 1 of 28 train texts longer than model.block_size - 2 = 14 tokens." in log
    assert "val texts" not in log  # none of those was cut
    assert "best checkpoint" in log and "macro-F1 1.0000" in log and "confusion matrix" in log


def test_resume_a_classify_run(encoder_root, mlm_run, labelled, clf_run):
    # A copy: the session's classify run must stay at its step for other tests.
    shutil.copytree(clf_run[0].run_dir, os.path.join(clf_run[0].runs_dir, "clf_resumed"))
    config = classify_config(encoder_root, mlm_run, labelled, name="clf_resumed",
                             **{"train.max_steps": 70})
    history = job.train(config, resume=True, verbose=0)
    assert [h["step"] for h in history] == [70]
    assert load_run(config.run_dir).step == 70


def test_init_from_must_match(encoder_root, mlm_run, labelled, tmp_path):
    config = classify_config(encoder_root, mlm_run, labelled, name="bad", **{"tokenizer.vocab_size": 500})
    with pytest.raises(TfchatError, match=r"tokenizer.vocab_size is 500 but init_from .* uses 120"):
        job.train(config, verbose=0)
    config = classify_config(encoder_root, mlm_run, labelled, name="bad", **{"model.hidden_dim": 64})
    with pytest.raises(TfchatError, match="model.hidden_dim is 64 but init_from .* has 32"):
        job.train(config, verbose=0)
    # A causal run is not an encoder.
    causal = tmp_path / "causal"
    causal.mkdir()
    # (objective causal explicitly: the default, auto, is resolved only by fit.)
    causal_config = config_lib.build_config(overrides=nest({**TINY, "objective": "causal"}))
    write_json_atomic(str(causal / "config.json"), causal_config.to_dict())
    config = classify_config(encoder_root, str(causal), labelled, name="bad")
    with pytest.raises(TfchatError, match="is a causal run; objective classify starts from a mlm or classify run"):
        job.train(config, verbose=0)
    assert fit.main(as_cli_args(encoder_settings(
        encoder_root, name="bad", objective="classify", init_from=str(causal),
        **{"data.path": labelled}))) == 1
    assert evaluate_cli.main(["--run", str(causal)]) == 1


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"objective": "mlm", "tokenizer": {"kind": "char"}}, "needs tokenizer.kind wordpiece"),
        ({"objective": "classify", "tokenizer": {"kind": "bpe"}}, "needs tokenizer.kind wordpiece"),
        ({"objective": "mlm", "model": {"block_size": 2}}, "at least 3"),
        ({"mlm": {"mask_rate": 0.0}}, "mlm.mask_rate"),
        ({"mlm": {"mask_token_rate": 0.95, "random_token_rate": 0.1}}, "sum to at most 1"),
        ({"mlm": {"max_predictions": -1}}, "mlm.max_predictions"),
        ({"train": {"early_stopping_patience": -2}}, "early_stopping_patience"),
        ({"data": {"format": "csv"}}, "csv is for labelled data"),
        ({"objective": "bert"}, "Unknown objective 'bert'; use one of causal, chat, mlm, classify, dpo, distill, auto"),
    ],
)
def test_encoder_config_validation(overrides, message):
    base = {"tokenizer": {"kind": "wordpiece"}, "objective": "mlm"}
    with pytest.raises(TfchatError, match=message):
        objectives.check(config_lib.build_config(overrides={**base, **overrides}))


@pytest.mark.parametrize("patience,evaluated", [(2, [5, 10, 15, 20]), (0, [5, 10, 15, 20, 25, 30])])
def test_early_stopping_on_validation_loss(make_config, monkeypatch, patience, evaluated):
    # Validation losses scripted per evaluation: the best so far at the
    # second, then two worse ones.
    scripted = iter([1.0, 0.8, 0.9, 0.85, 0.7, 0.6])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"val_loss": next(scripted)})
    config = make_config({"train.max_steps": 30, "train.eval_interval": 5, "train.log_interval": 5,
                          "train.early_stopping_patience": patience})
    history = job.train(config, verbose=0)
    assert [h["step"] for h in history if "val_loss" in h] == evaluated
    with open(os.path.join(config.run_dir, "checkpoints", "best", "best.json")) as f:
        assert json.load(f)["step"] == (10 if patience else 30)
