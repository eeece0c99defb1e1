"""One training loop under every strategy: MirroredStrategy over two logical
CPUs, gradient accumulation and mixed precision (MultiWorkerMirroredStrategy
over real worker processes: test_sharded_input.py)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import CHAT_PAIRS, CHAT_TINY, nest, write_chat_jsonl, write_jsonl
from tfchat import config as config_lib
from tfchat.job import train
from tfchat.run import build_model
from tfchat.train.optim import build_optimizer

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}

# Logical devices must be set before TensorFlow starts, so this runs in its
# own process.
MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tfchat
    from tfchat import config as config_lib
    from tfchat.job import train
    settings = json.loads(sys.argv[1])
    strategies = {
        "single": tf.distribute.get_strategy(),
        "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    }
    out = {}
    for name, strategy in strategies.items():
        config = config_lib.build_config(overrides={**settings, "name": name})
        history = train(config, verbose=0, strategy=strategy)
        out[name] = {
            "replicas": strategy.num_replicas_in_sync,
            "loss": [h["loss"] for h in history],
            "val_loss": [h["val_loss"] for h in history if "val_loss" in h],
        }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["text", "packed chat", "preference pairs"])
def test_mirrored_matches_single_device(tiny_settings, tmp_path, data):
    settings = {**tiny_settings, "train.max_steps": 20}
    if data != "text":
        # Replicas get blocks holding different numbers of assistant
        # tokens; the loss must still be the global token-weighted mean.
        settings.update({**CHAT_TINY, "train.max_steps": 20, "train.eval_interval": 10,
                         "train.log_interval": 5, "model.block_size": 32,
                         "data.path": write_chat_jsonl(tmp_path / "chats.jsonl")})
    if data == "preference pairs":
        # DPO from a chat run: the loss is the mean over the global batch's
        # pairs, each replica holding half of them.
        train(config_lib.build_config(overrides=nest({**settings, "name": "sft"})), verbose=0)
        pairs = [{"prompt": q, "chosen": a, "rejected": a[::-1]} for q, a in CHAT_PAIRS] * 8
        # Ten steps: the margins grow fast, and with them the float32
        # round-off between the two (3e-3 apart in val loss by step 20).
        settings.update({"objective": "dpo", "init_from": os.path.join(settings["runs_dir"], "sft"),
                         "train.learning_rate": 3e-4, "data.val_fraction": 0.25,
                         "train.max_steps": 10, "train.eval_interval": 5,
                         "data.path": write_jsonl(tmp_path / "prefs.jsonl", pairs)})
    settings = nest(settings)
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, json.dumps(settings)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(row for row in proc.stdout.splitlines() if row.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["mirrored"]["replicas"] == 2
    single, mirrored = out["single"], out["mirrored"]
    # Same global batch, same trajectory; the reported loss is the true mean
    # (not divided by the number of replicas).
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=2e-3)
    np.testing.assert_allclose(mirrored["val_loss"], single["val_loss"], rtol=2e-3)
    assert single["loss"][-1] < single["loss"][0]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _checkpoint_values(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if "ITERATOR" not in name and "OBJECT_GRAPH" not in name
    }


def _train_one_batch(config, batch, steps=3):
    keras.utils.set_random_seed(0)
    model = build_model(config, vocabulary_size=40)
    model.compile(optimizer=build_optimizer(config.train, model))
    step = tf.function(model.train_step)
    for _ in range(steps):
        logs = step(batch)
    return [w.numpy() for w in model.weights], float(logs["loss"])


@pytest.mark.slow
def test_grad_accumulation_matches_one_big_batch(make_config):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 40, size=(8, 17)).astype("int32")
    batch = (tf.constant(tokens[:, :-1]), tf.constant(tokens[:, 1:]))
    big, big_loss = _train_one_batch(make_config({"train.grad_accumulation_steps": 1}), batch)
    acc, acc_loss = _train_one_batch(make_config({"train.grad_accumulation_steps": 4}), batch)
    assert big_loss == pytest.approx(acc_loss, rel=1e-5)
    for a, b in zip(big, acc):
        np.testing.assert_allclose(a, b, atol=2e-6)
    # And it is not trivially equal: a different batch split changes nothing
    # only because the math is the same, while a different batch does.
    other = (batch[0][::-1], batch[1])
    moved, _ = _train_one_batch(make_config({"train.grad_accumulation_steps": 4}), other)
    assert any(not np.allclose(a, b) for a, b in zip(big, moved))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_without_nans(make_config, precision):
    config = make_config({"train.precision": precision, "train.max_steps": 30,
                          "name": precision})
    history = train(config, verbose=0)
    losses = [h["loss"] for h in history]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0]
    assert np.isfinite(history[-1]["val_loss"])
