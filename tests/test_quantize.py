"""int8 weight quantization (`tfchat.model.quantize`, `--quantize int8`):
the scales are Keras' abs-max per channel, the quantized model stays close
to the float one, and its SavedModel gives the quantized Keras model's
greedy text through the v1 Session path and in a process without Keras."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPETITIVE_TEXT, TINY, nest, write_text
from serving_calls import serve_in_fresh_process, session_run
from tfchat import config as config_lib
from tfchat import evaluate
from tfchat.inference.generator import Generator
from tfchat.job import train
from tfchat.run import load_run, quantized_run
from tfchat.serving.export import export_run

PROMPTS = ["the quick", "dog. the", ""]
MAX_NEW = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("quantize")
    flat = {**TINY, "name": "char", "runs_dir": str(base / "runs"),
            "data.path": write_text(base / "corpus.txt", REPETITIVE_TEXT),
            # Wide enough that int8 rounding is not the whole story; dropout
            # on, as users train.
            "model.hidden_dim": 64, "model.dropout": 0.1,
            "train.max_steps": 60, "train.eval_interval": 60, "train.log_interval": 20}
    train(config_lib.build_config(overrides=nest(flat)), verbose=0)
    return str(base / "runs" / "char")


def test_scales_are_abs_max_per_channel(run_dir):
    float_run = load_run(run_dir)
    weights = {w.path: w.numpy() for w in float_run.backbone.weights}
    run = quantized_run(load_run(run_dir))
    quantized = {w.path: w.numpy() for w in run.backbone.weights}
    kernel = "causal_lm/gpt/block_0/mlp_in/kernel"
    table = "causal_lm/gpt/token_embedding/embeddings"
    assert quantized[kernel].dtype == np.int8 and quantized[table].dtype == np.int8
    # Dense: one scale per output column; Embedding: one per row.
    for path, axis in ((kernel, 0), (table, 1)):
        w = weights[path]
        scale = 127.0 / np.max(np.abs(w), axis=axis)
        q = np.clip(np.round(w * np.expand_dims(scale, axis)), -127, 127)
        np.testing.assert_allclose(quantized[path + "_scale"], scale, rtol=1e-5)
        assert np.mean(quantized[path] == q) > 0.999  # round-half ties aside
    # Norms stay float; every matmul weight is int8.
    assert quantized["causal_lm/gpt/final_norm/gamma"].dtype == np.float32
    assert set(run.quantization["scales"]) == {p for p, v in quantized.items()
                                               if v.dtype == np.int8}

    tokens = tf.constant([[5, 6, 7, 8, 9, 10, 11, 12]])
    a, b = float_run.model(tokens).numpy(), run.model(tokens).numpy()
    assert 0 < np.max(np.abs(a - b)) < 0.05 * np.max(np.abs(a))


@pytest.mark.slow
def test_int8_export_serves_the_quantized_model(run_dir, tmp_path):
    run = quantized_run(load_run(run_dir))
    greedy = Generator(run.backbone, run.tokenizer).generate(PROMPTS, MAX_NEW, temperature=0)
    assert any(greedy)
    path = export_run(run, str(tmp_path), name="int8")
    float_path = export_run(load_run(run_dir), str(tmp_path), name="float")

    feeds = {"prompt": np.array([p.encode() for p in PROMPTS]),
             "max_new_tokens": np.array([MAX_NEW], np.int32),
             "temperature": np.array([0.0], np.float32), "top_k": np.array([0], np.int32),
             "top_p": np.array([1.0], np.float32), "seed": np.array([0], np.int64)}
    out = session_run(path, "generate", feeds)
    assert [t.decode() for t in out["text"]] == greedy

    calls = [("signature", "generate", {
        "prompt": (PROMPTS, "string"), "max_new_tokens": ([MAX_NEW], "int32"),
        "temperature": ([0.0], "float32"), "top_k": ([0], "int32"), "top_p": ([1.0], "float32"),
        "seed": ([0], "int64")})]
    fresh = serve_in_fresh_process(path, calls)
    assert fresh["calls"][0]["text"] == greedy and fresh["not_core"] == []

    # The weights are stored as int8: the variables shrink to about a
    # quarter (norms, biases and scales stay float32).
    def variable_dtypes(saved):
        reader = tf.train.load_checkpoint(os.path.join(saved, "variables", "variables"))
        return reader.get_variable_to_dtype_map()

    assert tf.int8 in set(variable_dtypes(path).values())
    assert tf.int8 not in set(variable_dtypes(float_path).values())

    def size(p):
        return os.path.getsize(os.path.join(p, "variables", "variables.data-00000-of-00001"))

    assert size(path) < 0.4 * size(float_path)

    metadata = json.load(open(os.path.join(path, "assets.extra", "tfchat.json")))
    assert metadata["quantization"]["mode"] == "int8"
    assert "per output column" in metadata["quantization"]["method"]
    scales = metadata["quantization"]["scales"]["causal_lm/gpt/block_0/attention/qkv/kernel"]
    assert scales["scales"] == 3 * 64 and 0 < scales["min"] <= scales["median"] <= scales["max"]
    assert json.load(open(os.path.join(float_path, "assets.extra", "tfchat.json")))[
        "quantization"] is None


@pytest.mark.slow
def test_evaluate_quantized_perplexity_is_close(run_dir, tmp_path, capsys):
    reports = {}
    for name, extra in (("float", []), ("int8", ["--quantize", "int8"])):
        out = tmp_path / f"{name}.json"
        assert evaluate.main(["--run", run_dir, "--json", str(out), *extra]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["int8"]["quantized"] == "int8" and "quantized" not in reports["float"]
    assert reports["int8"]["val_perplexity"] == pytest.approx(reports["float"]["val_perplexity"],
                                                          rel=0.02)
    assert reports["int8"]["val_perplexity"] != reports["float"]["val_perplexity"]
