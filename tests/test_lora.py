"""LoRA: only the adapters train, the base weights stay put, the run
checkpoint keeps the adapters, and merging reproduces the adapted model;
fine-tuning with init_from checks what it starts from."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import CHAT_TINY, nest, write_chat_jsonl
from tfchat import config as config_lib
from tfchat import lora as lora_cli
from tfchat.errors import TfchatError
from tfchat.job import train
from tfchat.model.lora import enable_lora, lora_layers, merge_lora
from tfchat.run import build_model, load_run
from tfchat.train.optim import build_optimizer


def tiny_config(**model):
    return config_lib.build_config(overrides=nest({
        **CHAT_TINY, "train.learning_rate": 1e-2, "train.warmup_steps": 1,
        **{f"model.{k}": v for k, v in model.items()},
    }))


def batch(seed=0, vocabulary=40, length=48):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocabulary, size=(4, length + 1)).astype("int32")
    weights = (rng.random((4, length)) > 0.5).astype("float32")
    return tf.constant(tokens[:, :-1]), tf.constant(tokens[:, 1:]), tf.constant(weights)


def test_only_adapters_train_and_merging_reproduces_them():
    config = tiny_config(lora_rank=4, lora_alpha=8)
    model = build_model(tiny_config(), vocabulary_size=40)
    base = {v.path: v.numpy() for v in model.weights}
    adapters = enable_lora(model.backbone, 4, 8)
    assert len(adapters) == 2 * 4 * 2  # A and B of 4 layers in 2 blocks
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in adapters}
    model.compile(optimizer=build_optimizer(config.train, model))
    step = tf.function(model.train_step)
    data = batch()
    losses = [float(step(data)["loss"]) for _ in range(15)]
    assert losses[-1] < losses[0]
    for v in model.weights:
        if v.path in base:  # every base weight, bit for bit
            np.testing.assert_array_equal(v.numpy(), base[v.path], err_msg=v.path)
    assert all(np.any(v.numpy() != 0) for v in adapters if v.path.endswith("lora_kernel_b"))

    plain = build_model(tiny_config(), vocabulary_size=40)
    merge_lora(model.backbone, plain.backbone)
    x = data[0]
    adapted = model(x).numpy()
    np.testing.assert_allclose(plain(x).numpy(), adapted, atol=1e-5)
    # The adapters changed what the model computes, so the check above
    # could fail: the base weights alone give other outputs.
    original = build_model(tiny_config(), vocabulary_size=40)
    for v in original.weights:
        v.assign(base[v.path])
    assert np.abs(original(x).numpy() - adapted).max() > 1e-3


def test_lora_fine_tuning_run_saves_adapters_and_merges(chat_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    settings = {
        **CHAT_TINY, "name": "lora", "runs_dir": str(runs), "init_from": chat_run,
        "data.path": write_chat_jsonl(tmp_path / "chats.jsonl", system="be brief"),
        "model.lora_rank": 2, "train.max_steps": 20, "train.eval_interval": 10,
    }
    train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    base = load_run(chat_run)
    tuned = load_run(str(runs / "lora"))
    assert tuned.step == 20
    # Restored from the checkpoint: the adapters moved from their zero
    # start, and the frozen weights are still the pretrained ones.
    layers = lora_layers(tuned.backbone)
    assert len(layers) == 8
    assert all(np.any(layer.lora_kernel_b.numpy() != 0) for layer in layers)
    for mine, theirs in zip(tuned.backbone.blocks, base.backbone.blocks):
        np.testing.assert_array_equal(mine.attention.qkv._kernel.numpy(),
                                      theirs.attention.qkv.kernel.numpy())
        np.testing.assert_array_equal(mine.mlp_out.bias.numpy(), theirs.mlp_out.bias.numpy())
    np.testing.assert_array_equal(tuned.backbone.token_embedding.embeddings.numpy(),
                                  base.backbone.token_embedding.embeddings.numpy())

    assert lora_cli.main(["merge", "--run", str(runs / "lora")]) == 0
    merged = load_run(str(runs / "lora_merged"))
    assert merged.config.model.lora_rank == 0 and merged.step == 20
    assert not lora_layers(merged.backbone)
    x = tf.constant([[5, 9, 12, 7, 6] * 4], tf.int32)
    np.testing.assert_allclose(merged.model(x).numpy(), tuned.model(x).numpy(), atol=1e-5)
    assert np.abs(merged.model(x).numpy() - base.model(x).numpy()).max() > 1e-4
    assert lora_cli.main(["merge", "--run", str(runs / "lora")]) == 1
    assert "already exists" in capsys.readouterr().err
    # Fine-tuning on top of unmerged adapters would silently drop them.
    again = {**settings, "name": "again", "init_from": str(runs / "lora")}
    with pytest.raises(TfchatError, match="has LoRA adapters; merge them"):
        train(config_lib.build_config(overrides=nest(again)), verbose=0)


def test_init_from_checks_what_it_starts_from(chat_run, tmp_path):
    data = write_chat_jsonl(tmp_path / "chats.jsonl")
    settings = {**CHAT_TINY, "name": "ft", "runs_dir": str(tmp_path / "runs"),
                "init_from": chat_run, "data.path": data, "train.max_steps": 2,
                "train.warmup_steps": 1, "train.eval_interval": 2}

    def fails(match, **overrides):
        config = config_lib.build_config(overrides=nest({**settings, **overrides}))
        with pytest.raises(TfchatError, match=match):
            train(config, verbose=0)

    fails("model.num_layers is 3 but init_from .* has 2", **{"model.num_layers": 3})
    fails("tokenizer.kind is bpe but init_from .* uses char", **{"tokenizer.kind": "bpe"})
    fails("model.family is llama but init_from .* is none", **{"model.family": "llama"})
    fails(r"Unknown model.family 'mistrall'; use one of none, gpt2, llama", **{"model.family": "mistrall"})
    assert not os.path.exists(os.path.join(settings["runs_dir"], "ft"))  # checked first

    # A run whose tokenizer is not init_from's cannot resume from it.
    train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    tokenizer_file = os.path.join(settings["runs_dir"], "ft", "tokenizer", "tokenizer.json")
    with open(tokenizer_file, "r+", encoding="utf-8") as f:
        text = f.read().replace('"characters": ["', '"characters": ["~", "')
        f.seek(0)
        f.write(text)
    config = config_lib.build_config(overrides=nest({**settings, "train.max_steps": 4}))
    with pytest.raises(TfchatError, match="differs from init_from"):
        train(config, resume=True, verbose=0)
