import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfchat.data.corpus import Corpus
from tfchat.data.pipeline import causal_lm_dataset
from tfchat.data.tokenizer import train_tokenizer
from tfchat.errors import TfchatError
from tfchat.job import train
from tfchat.run import build_model, load_run
from tfchat.train.optim import build_optimizer, learning_rate_schedule
from tfchat.model.tasks import CausalLM, token_loss_and_accuracy
from tfchat.train.trainer import Trainer


@pytest.fixture
def captured(monkeypatch):
    """Runs `tfchat.job.train` and keeps the Trainer it built (and lets a
    test wrap the Trainer before `fit` starts)."""
    state = {"trainer": None, "before_fit": None}
    fit = Trainer.fit

    def capturing_fit(self):
        state["trainer"] = self
        if state["before_fit"]:
            state["before_fit"](self)
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", capturing_fit)
    return state


@pytest.mark.slow
def test_trainer_loss_falls(make_config, captured):
    config = make_config({
        "train.max_steps": 30, "train.log_interval": 5, "train.eval_interval": 15,
        # The default since this was written; the XLA path must work too.
        "train.jit_compile": True,
        # The sample runs through the sampler with top_k=40, above this
        # corpus's char vocabulary (37 ids).
        "train.sample_tokens": 8,
    })
    history = train(config, verbose=0)
    trainer = captured["trainer"]
    assert trainer.task.backbone.vocabulary_size < 40

    assert [h["step"] for h in history] == [5, 10, 15, 20, 25, 30]
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.75 * first
    assert history[-1]["accuracy"] > history[0]["accuracy"]
    assert history[-1]["perplexity"] == pytest.approx(np.exp(last), rel=1e-4)
    # Validation at each evaluation, improving too.
    assert "val_loss" not in history[0]
    assert history[-1]["val_loss"] < history[2]["val_loss"] < first
    # The schedule ends at its floor.
    assert history[-1]["lr"] == pytest.approx(config.train.min_learning_rate)
    assert trainer.step == 30

    checkpoints = os.path.join(config.run_dir, "checkpoints")
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-30")
    assert any(name.startswith("ckpt-15") for name in os.listdir(checkpoints))
    assert any(name.startswith("events") for name in os.listdir(os.path.join(config.run_dir, "logs")))
    sample = trainer.sample()
    assert sample.startswith(config.train.sample_prompt)


def test_trainer_saves_on_interrupt(make_config, captured):
    config = make_config({"train.max_steps": 20, "train.eval_interval": 20})

    def interrupt_at_step_10(trainer):
        run_steps = trainer._train_steps

        def interrupted(iterator, steps):
            run_steps(iterator, steps)
            if trainer.step >= 10:
                raise KeyboardInterrupt

        trainer._train_steps = interrupted

    captured["before_fit"] = interrupt_at_step_10
    with pytest.raises(TfchatError, match="Interrupted at step 10") as info:
        train(config, verbose=0)
    assert "--resume" in str(info.value)
    assert load_run(config.run_dir).step == 10


def test_resuming_a_run_without_dropout_gives_no_random_state_note(make_config, capsys):
    # Dropout 0 has no random streams to save, so its checkpoint lacking
    # them is no sign of an older format.
    settings = {"model.dropout": 0.0, "train.max_steps": 4, "train.eval_interval": 4,
                "train.warmup_steps": 0, "name": "no_dropout"}
    train(make_config(settings), verbose=0)
    train(make_config({**settings, "train.max_steps": 6}), resume=True, verbose=1)
    out = capsys.readouterr().out
    assert "Resum" in out or "step 6" in out
    assert "predates saved random state" not in out


# Keras' notes on a tf.data input (already shuffled; a finite eval split).
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed")
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_model_fit_lowers_loss(make_config):
    config = make_config({"train.max_steps": 30})
    corpus = Corpus(config.data)
    tokenizer = train_tokenizer(config.tokenizer, corpus.iter_texts("train"))
    keras.utils.set_random_seed(config.train.seed)
    m, t = config.model, config.train
    ds = causal_lm_dataset(corpus.texts("train"), tokenizer, m.block_size,
                           t.batch_size, shuffle_buffer=256, seed=1, repeat=True)
    model = build_model(config, tokenizer.vocabulary_size)
    model.compile(optimizer=build_optimizer(t, model))
    history = model.fit(ds, steps_per_epoch=10, epochs=3, verbose=0).history
    assert set(history) >= {"loss", "accuracy", "perplexity"}
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert int(model.optimizer.iterations.numpy()) == 30

    val = causal_lm_dataset(corpus.texts("val"), tokenizer, m.block_size,
                            t.batch_size, drop_remainder=False)
    results = model.evaluate(val, verbose=0, return_dict=True)
    assert results["loss"] < history["loss"][0]


def test_learning_rate_schedule(make_config):
    t = make_config({"train.max_steps": 100, "train.warmup_steps": 10,
                     "train.learning_rate": 1e-3, "train.min_learning_rate": 1e-4}).train
    schedule = learning_rate_schedule(t)
    lr = np.array([float(schedule(step)) for step in range(0, 121)])
    # Linear warmup from 0 to the peak.
    np.testing.assert_allclose(lr[:11], np.linspace(0, t.learning_rate, 11), rtol=1e-5, atol=1e-10)
    # Then a monotone decay to the floor at max_steps, and the floor after.
    assert np.all(np.diff(lr[10:101]) < 0)
    assert lr[55] == pytest.approx((t.learning_rate + t.min_learning_rate) / 2, rel=1e-4)
    np.testing.assert_allclose(lr[100:], t.min_learning_rate, rtol=1e-5)


@pytest.mark.slow
def test_weight_decay_only_on_kernels(make_config):
    config = make_config({"train.warmup_steps": 0, "train.weight_decay": 0.5})
    model = build_model(config, vocabulary_size=40)
    optimizer = build_optimizer(config.train, model)
    optimizer.build(model.trainable_variables)

    def decayed(v):
        return v.path.endswith("/kernel")

    assert sum(map(decayed, model.trainable_variables)) == 4 * config.model.num_layers
    for v in model.trainable_variables:
        assert optimizer._use_weight_decay(v) == decayed(v), v.path

    # What it does: with zero gradients Adam moves nothing, so only decay acts.
    before = [v.numpy() for v in model.trainable_variables]
    optimizer.apply([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    for v, old in zip(model.trainable_variables, before):
        if decayed(v):
            shrink = 1 - config.train.learning_rate * config.train.weight_decay
            np.testing.assert_allclose(v.numpy(), old * shrink, rtol=1e-5)
        else:
            np.testing.assert_array_equal(v.numpy(), old)


def test_token_loss_and_accuracy_weights():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype("float32")
    targets = rng.integers(0, 7, size=(2, 5)).astype("int32")
    weights = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], "float32")
    loss, accuracy, count = token_loss_and_accuracy(targets, logits, weights)

    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == targets
    assert float(count) == weights.sum()
    assert float(loss) == pytest.approx((nll * weights).sum() / weights.sum(), rel=1e-5)
    assert float(accuracy) == pytest.approx((correct * weights).sum() / weights.sum())
    unweighted, _, _ = token_loss_and_accuracy(targets, logits)
    assert float(unweighted) == pytest.approx(nll.mean(), rel=1e-5)


def test_causal_lm_config_round_trip(make_config):
    model = build_model(make_config(), vocabulary_size=40)
    ids = np.random.default_rng(0).integers(0, 40, size=(2, 16)).astype("int32")
    clone = CausalLM.from_config(model.get_config())
    clone(ids)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(ids).numpy(), model(ids).numpy(), atol=1e-6)


@pytest.mark.slow
def test_resume_continues_exactly(make_config):
    # A constant learning rate, so extending max_steps changes no step's rate;
    # dropout on, as by default.
    constant = {"train.warmup_steps": 0, "train.learning_rate": 3e-3,
                "train.min_learning_rate": 3e-3, "model.dropout": 0.1,
                "train.log_interval": 5, "train.eval_interval": 10}
    n = 20
    first = train(make_config({**constant, "name": "resumed", "train.max_steps": n}), verbose=0)
    assert first[-1]["step"] == n
    resumed = train(make_config({**constant, "name": "resumed", "train.max_steps": 2 * n}),
                    resume=True, verbose=0)
    full = train(make_config({**constant, "name": "full", "train.max_steps": 2 * n}), verbose=0)

    # It picks up at step n (the optimizer's iterations came back)...
    assert [h["step"] for h in resumed] == [25, 30, 35, 40]
    assert load_run(make_config({"name": "resumed"}).run_dir).step == 2 * n
    # ...and, with the data position restored too, matches the unbroken run.
    np.testing.assert_allclose([h["loss"] for h in first], [h["loss"] for h in full[:4]], atol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in resumed], [h["loss"] for h in full[4:]], atol=1e-4)
    assert resumed[-1]["val_loss"] == pytest.approx(full[-1]["val_loss"], abs=1e-4)
    # And it learned something in the second half.
    assert resumed[-1]["loss"] < first[-1]["loss"]


@pytest.mark.slow
def test_bpe_run_tokenizer_works_after_another_training(make_config):
    """A BPE run loaded before a second training in the same process (here,
    fine-tuning from it with init_from) keeps a working tokenizer."""
    settings = {"tokenizer.kind": "bpe", "tokenizer.vocab_size": 300,
                "train.max_steps": 3, "train.warmup_steps": 1, "train.eval_interval": 3,
                "train.log_interval": 3}
    first = make_config({**settings, "name": "first"})
    train(first, verbose=0)
    run = load_run(first.run_dir)
    text = tf.constant(["the quick brown fox"])
    ids = run.tokenizer.tokenize(text).to_list()
    train(make_config({**settings, "name": "second", "init_from": first.run_dir}), verbose=0)
    assert run.tokenizer.tokenize(text).to_list() == ids
    assert run.tokenizer.detokenize(run.tokenizer.tokenize(text)).numpy().tolist() == [b"the quick brown fox"]


@pytest.mark.slow
def test_train_refuses_to_clobber_or_resume_nothing(make_config):
    config = make_config({"train.max_steps": 5, "train.eval_interval": 5})
    with pytest.raises(TfchatError, match="Nothing to resume"):
        train(config, resume=True, verbose=0)
    train(config, verbose=0)
    with pytest.raises(TfchatError, match="already exists"):
        train(config, verbose=0)
