"""Knowledge distillation (`objective: distill`): the loss is the formula,
the teacher stays frozen and out of the student's checkpoints, a distilled
run trains (on text and on chats), resumes exactly (dropout on) and then is
an ordinary GPT run."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPETITIVE_TEXT, TINY, as_cli_args, nest, write_chat_jsonl, write_text
from tfchat import config as config_lib
from tfchat import fit
from tfchat.inference.generator import Generator
from tfchat.job import train
from tfchat.model.distill import DistillLM
from tfchat.model.gpt import GPT
from tfchat.run import load_run


def _gpt(layers, width, seed):
    keras.utils.set_random_seed(seed)
    model = GPT(vocabulary_size=11, num_layers=layers, num_heads=2, hidden_dim=width,
                intermediate_dim=0, block_size=6, dropout=0.0)
    model(tf.zeros((1, 6), tf.int32))
    return model


def _direct_loss(teacher_logits, student_logits, targets, weight, alpha, temperature):
    """The formula, in NumPy: alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE,
    each a weighted mean over target tokens."""
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    t = log_softmax(teacher_logits / temperature)
    s = log_softmax(student_logits / temperature)
    kl = (np.exp(t) * (t - s)).sum(-1)
    ce = -np.take_along_axis(log_softmax(student_logits), targets[..., None], -1)[..., 0]

    def mean(v):
        return (v * weight).sum() / weight.sum()

    return alpha * temperature ** 2 * mean(kl) + (1 - alpha) * mean(ce), mean(ce), mean(kl)


@pytest.mark.parametrize("alpha, temperature", [(0.5, 2.0), (0.9, 1.0), (0.0, 3.0)])
def test_loss_is_the_formula_and_the_teacher_stays_frozen(alpha, temperature):
    teacher, student = _gpt(2, 16, seed=1), _gpt(1, 8, seed=2)
    model = DistillLM(student, alpha=alpha, temperature=temperature)
    model.attach_teacher(teacher)
    model(tf.zeros((1, 6), tf.int32))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, (3, 6)).astype(np.int32)
    y = rng.integers(0, 11, (3, 6)).astype(np.int32)
    # Chat-like weights: some targets are not the assistant's.
    w = (rng.random((3, 6)) > 0.4).astype(np.float32)
    expected, ce, kl = _direct_loss(teacher(x).numpy(), student(x).numpy(), y, w, alpha,
                                    temperature)
    logs = model.test_step((x, y, w))
    np.testing.assert_allclose(float(logs["distill_loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(logs["loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(logs["kl"]), kl, rtol=1e-4, atol=1e-7)

    # The teacher is neither trained nor tracked: a step moves the student only.
    before = [v.numpy().copy() for v in teacher.weights]
    assert not {id(v) for v in teacher.weights} & {id(v) for v in model.variables}
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    # The gradient is the formula's: SGD at rate 1 moves each weight by it.
    student_before = [v.numpy().copy() for v in student.trainable_weights]
    with tf.GradientTape() as tape:
        logits = student(x)
        t = tf.nn.log_softmax(teacher(x) / temperature)
        s = tf.nn.log_softmax(logits / temperature)
        kl_t = tf.reduce_sum(tf.exp(t) * (t - s), -1)
        ce_t = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        direct = (alpha * temperature ** 2 * tf.reduce_sum(kl_t * w)
                  + (1 - alpha) * tf.reduce_sum(ce_t * w)) / w.sum()
    gradients = tape.gradient(direct, student.trainable_weights)
    model.train_step((x, y, w))
    for b, a, g in zip(student_before, student.trainable_weights, gradients):
        g = tf.convert_to_tensor(g).numpy()
        np.testing.assert_allclose(b - a.numpy(), g, rtol=1e-3, atol=1e-6)
    for b, v in zip(before, teacher.weights):
        np.testing.assert_array_equal(b, v.numpy())


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("distill")
    flat = {**TINY, "name": "teacher", "runs_dir": str(base / "runs"),
            "data.path": write_text(base / "corpus.txt", REPETITIVE_TEXT),
            "train.max_steps": 60, "train.eval_interval": 60}
    train(config_lib.build_config(overrides=nest(flat)), verbose=0)
    return flat


def _student(teacher_run, name, **overrides):
    return {**teacher_run, "name": name, "objective": "distill",
            "distill.teacher": os.path.join(teacher_run["runs_dir"], "teacher"),
            "model.num_layers": 1, "model.hidden_dim": 16, "model.dropout": 0.1,
            "train.max_steps": 20, "train.eval_interval": 10, **overrides}


@pytest.mark.slow
def test_distilled_run_learns_and_is_a_gpt_run(teacher_run):
    settings = _student(teacher_run, "student")
    history = train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    losses = [h["loss"] for h in history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.95 * losses[0]
    assert history[-1]["kl"] < history[0]["kl"]

    # The checkpoint holds the student alone: it loads as a GPT run.
    run = load_run(os.path.join(settings["runs_dir"], "student"))
    shapes = [tuple(shape) for _, shape in tf.train.list_variables(
        os.path.join(settings["runs_dir"], "student", "checkpoints", "ckpt-20"))]
    teacher = load_run(settings["distill.teacher"])
    assert run.backbone.num_layers == 1 and teacher.backbone.num_layers == 2
    # Nothing of the teacher's width (32; the student's is 16).
    assert not [s for s in shapes if 32 in s] and [s for s in shapes if 16 in s]
    assert Generator(run.backbone, run.tokenizer).generate(["the "], 5, temperature=0)[0]


@pytest.mark.slow
def test_resume_continues_the_uninterrupted_curve(teacher_run):
    # A constant learning rate, so the first half can stop at step 10 with
    # max_steps 10 and the schedule still be the whole run's.
    constant = {"train.warmup_steps": 0, "train.min_learning_rate": TINY["train.learning_rate"]}
    whole = _student(teacher_run, "whole", **constant)
    expected = [h["loss"] for h in train(config_lib.build_config(overrides=nest(whole)),
                                         verbose=0)]
    cut = _student(teacher_run, "cut", **constant)
    config = config_lib.build_config(overrides=nest(cut))
    train(dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=10)),
          verbose=0)
    resumed = train(config, resume=True, verbose=0)
    np.testing.assert_allclose([h["loss"] for h in resumed], expected[2:], rtol=1e-5)


def test_chat_student_and_bad_settings(teacher_run, tmp_path, capsys):
    """On dialogue data the student trains on chat's pipeline; a missing
    teacher, a bad alpha or a context past the teacher's is one clear line,
    exit 1."""
    chats = write_chat_jsonl(tmp_path / "chats.jsonl")
    settings = _student(teacher_run, "chat_student", **{"data.path": chats,
                                                        "train.max_steps": 10})
    history = train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    assert history[-1]["loss"] < history[0]["loss"]
    for bad, message in (({"distill.teacher": ""}, "needs distill.teacher"),
                         ({"distill.alpha": 1.5}, "distill.alpha must be in [0, 1]"),
                         ({"model.block_size": 32}, "longer than distill.teacher"),
                         ({"distill.teacher": str(tmp_path / "none")}, "No tfchat run")):
        capsys.readouterr()
        assert fit.main(as_cli_args({**settings, "name": "bad", **bad})) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not os.path.exists(os.path.join(settings["runs_dir"], "bad"))


def _config_only_run(path, **sections):
    """A folder that reads as a tfchat run (config.json, tokenizer/), enough
    for `fit.make_config` to take its settings."""
    os.makedirs(os.path.join(path, "tokenizer"))
    config = config_lib.build_config(overrides=sections)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f)
    return str(path)


def test_the_student_takes_its_teachers_tokenizer_and_a_fine_tuned_run_its_init(tmp_path):
    """`fit.make_config` asks the objective which runs' settings it takes
    (`Objective.settings_from`): distill its teacher's tokenizer (not its
    model), the others init_from's model and tokenizer; the command line
    still wins."""
    teacher = _config_only_run(tmp_path / "teacher", tokenizer={"kind": "char", "lowercase": False},
                               model={"num_layers": 3, "hidden_dim": 64})
    args = ["--objective", "distill", "--distill.teacher", teacher, "--data.path", "x.txt"]
    config = fit.make_config(fit.build_parser().parse_args(args))
    assert config.distill.teacher == teacher
    assert (config.tokenizer.kind, config.tokenizer.lowercase) == ("char", False)
    assert config.model == config_lib.ModelConfig()  # the student keeps its own shape
    config = fit.make_config(fit.build_parser().parse_args(args + ["--tokenizer.kind", "bpe"]))
    assert config.tokenizer.kind == "bpe"
    # Another objective ignores distill.teacher, and takes init_from's settings.
    for objective in ("causal", "auto"):
        config = fit.make_config(fit.build_parser().parse_args(
            ["--objective", objective, "--distill.teacher", teacher, "--init_from", teacher,
             "--data.path", "x.txt"]))
        assert config.tokenizer.kind == "char" and config.model.num_layers == 3
        config = fit.make_config(fit.build_parser().parse_args(
            ["--objective", objective, "--distill.teacher", teacher, "--data.path", "x.txt"]))
        assert config.tokenizer.kind == "bpe" and config.model.num_layers == 4
