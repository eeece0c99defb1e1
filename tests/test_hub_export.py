"""Export out (issue 16): `python -m tfchat.export --format hf|keras-hub`.

A tiny Llama made by keras-hub (tests/pretrained_checkpoints.py) is
converted and LoRA-fine-tuned with tfchat, then exported in both forms;
keras-hub's own `CausalLM.from_preset` reads each back and must compute
tfchat's logits and write tfchat's greedy continuation. GPT-2, Qwen2 and a
tied Llama go round the loop convert -> export -> convert. Then the one-line
errors. Nothing is downloaded."""

import dataclasses
import json
import os

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPETITIVE_TEXT, write_text
from pretrained_checkpoints import (
    SENTENCEPIECE_LLAMA, keras_hub_greedy, keras_hub_logits, make_causal_lm,
)
from tfchat import config as config_lib
from tfchat import convert as convert_command
from tfchat import export as export_command
from tfchat import fit as fit_command
from tfchat.inference.generator import Generator
from tfchat.run import load_run

# Every test here exports or converts whole runs (module fixtures).
pytestmark = pytest.mark.slow

PROMPT = "the cat sat"
NEW_TOKENS = 12
TEXTS = ["Hello world", "the quick brown fox", "unicode: héllo wörld — 中文 🙂", "a\n\nb\tc",
         "<|endoftext|> x"]


def _convert(source, runs_dir, name, *extra):
    assert convert_command.main([source, "--name", name, "--runs_dir", runs_dir, *extra]) == 0
    return os.path.join(runs_dir, name)


def _export(run_path, fmt, out, *extra):
    assert export_command.main(["--run", run_path, "--format", fmt, "--out", out, *extra]) == 0
    return out


def _logits(run, ids):
    return run.backbone(tf.constant(ids)).numpy()


def _ids(rows=2, length=24, vocabulary=270, seed=0):
    return np.random.default_rng(seed).integers(0, vocabulary, (rows, length)).astype("int32")


def _read_config(path):
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def lora_llama(tmp_path_factory):
    """(the converted base run, the LoRA run fine-tuned from it)."""
    root = str(tmp_path_factory.mktemp("lora_llama"))
    preset = os.path.join(root, "preset")
    make_causal_lm("llama").save_to_preset(preset)
    runs = os.path.join(root, "runs")
    base = _convert(preset, runs, "base", "--block_size", "48")
    code = fit_command.main([
        "--init_from", base, "--data.path", write_text(os.path.join(root, "text.txt"), REPETITIVE_TEXT),
        "--name", "tuned", "--runs_dir", runs, "--model.lora_rank", "4",
        "--model.block_size", "32", "--train.batch_size", "8", "--train.max_steps", "6",
        "--train.learning_rate", "1e-2", "--train.warmup_steps", "1",
        "--train.eval_interval", "6", "--train.log_interval", "6", "--train.eval_batches", "1",
        "--train.sample_tokens", "0", "--train.jit_compile", "false",
    ])
    assert code == 0
    return base, os.path.join(runs, "tuned")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hf", "keras-hub"])
def test_lora_llama_run_exports_what_keras_hub_reads_back(lora_llama, tmp_path, fmt, capsys):
    """keras-hub's own loader reads the export of a LoRA run: tfchat's
    logits within 1e-4, tfchat's greedy continuation token for token, and
    the run's tokenizer (its prompt ids)."""
    base_path, tuned_path = lora_llama
    out = _export(tuned_path, fmt, str(tmp_path / "out"))
    assert "LoRA adapters merged" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging folder left behind
    tuned, base = load_run(tuned_path), load_run(base_path)
    assert tuned.config.model.lora_rank == 4
    if fmt == "hf":
        names = set(os.listdir(out))
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
        config = _read_config(out)
        assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
        # A keras-hub Llama preset records no context: the run's block size.
        assert config["max_position_embeddings"] == tuned.config.model.block_size == 32
    else:
        assert {"metadata.json", "config.json", "model.weights.h5", "tokenizer.json"} <= set(os.listdir(out))

    model = keras_hub.models.CausalLM.from_preset(out)
    assert type(model).__name__ == "Llama3CausalLM"
    ids = _ids()
    ours = _logits(tuned, ids)
    np.testing.assert_allclose(keras_hub_logits(model, ids), ours, atol=1e-4, rtol=0)
    assert np.abs(_logits(base, ids) - ours).max() > 1e-2  # the adapters changed the model

    prompt_ids = tuned.tokenizer.tokenize_prompts(tf.constant([PROMPT]))[0].numpy().tolist()
    reference = model.preprocessor.generate_preprocess([PROMPT])
    mask = np.asarray(reference["padding_mask"])[0]
    assert np.asarray(reference["token_ids"])[0][mask].tolist() == prompt_ids
    generator = Generator(tuned.backbone, tuned.tokenizer)
    greedy = generator.generate_ids([prompt_ids], NEW_TOKENS, generator.sampler(temperature=0),
                                    stop_at_eos=False)[0]
    assert keras_hub_greedy(model, prompt_ids, NEW_TOKENS) == greedy
    assert len(set(greedy)) > 1


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_round_trip_through_hugging_face_form(tmp_path, family):
    """convert -> export hf -> convert: the same logits and token ids, and
    the config.json fields real checkpoints have."""
    preset = str(tmp_path / "preset")
    make_causal_lm(family).save_to_preset(preset)
    runs = str(tmp_path / "runs")
    run = load_run(_convert(preset, runs, "first"))
    out = _export(os.path.join(runs, "first"), "hf", str(tmp_path / "hf"))
    config = _read_config(out)
    if family == "gpt2":
        assert config["architectures"] == ["GPT2LMHeadModel"] and config["n_positions"] == 64
    else:
        assert config["architectures"] == ["Qwen2ForCausalLM"]
        assert config["use_sliding_window"] is False and config["max_window_layers"] == 2
        assert config["sliding_window"] == config["max_position_embeddings"] == 2048
        # tokenizer.json in the Hugging Face tokenizers layout, read by the
        # tokenizers library itself: the same ids as the run's tokenizer.
        from tokenizers import Tokenizer as HuggingFaceTokenizer

        reference = HuggingFaceTokenizer.from_file(os.path.join(out, "tokenizer.json"))
        theirs = [e.ids for e in reference.encode_batch(TEXTS, add_special_tokens=False)]
        assert run.tokenizer.tokenize(tf.constant(TEXTS)).to_list() == theirs
    again = load_run(_convert(out, runs, "again"))
    ids = _ids(vocabulary=run.backbone.vocabulary_size)
    np.testing.assert_allclose(_logits(again, ids), _logits(run, ids), atol=1e-5, rtol=0)
    assert again.tokenizer.tokenize(tf.constant(TEXTS)).to_list() == \
        run.tokenizer.tokenize(tf.constant(TEXTS)).to_list()
    assert again.tokenizer.stop_ids == run.tokenizer.stop_ids
    assert again.tokenizer.start_ids == run.tokenizer.start_ids


def test_tied_llama_round_trips_both_forms(tmp_path):
    """A tied Llama with SmolLM2's rms_norm_eps 1e-5: keras-hub 0.32 leaves
    tie_word_embeddings out of its preset config (the export writes it, so
    keras-hub itself reloads the preset) and its Hugging Face reader drops
    rms_norm_eps (tfchat.convert passes it)."""
    preset = str(tmp_path / "preset")
    make_causal_lm("llama", tie_word_embeddings=True, layer_norm_epsilon=1e-5).save_to_preset(preset)
    runs = str(tmp_path / "runs")
    run = load_run(_convert(preset, runs, "tied"))
    assert run.config.model.tie_embeddings and run.config.model.norm_epsilon == 1e-5
    ids = _ids()
    for fmt in ("keras-hub", "hf"):
        out = _export(os.path.join(runs, "tied"), fmt, str(tmp_path / fmt))
        again = load_run(_convert(out, runs, f"again_{fmt}"))
        assert again.config.model.tie_embeddings and again.config.model.norm_epsilon == 1e-5
        np.testing.assert_allclose(_logits(again, ids), _logits(run, ids), atol=1e-5, rtol=0)
    model = keras_hub.models.CausalLM.from_preset(str(tmp_path / "keras-hub"))
    assert model.backbone.tie_word_embeddings
    np.testing.assert_allclose(keras_hub_logits(model, ids), _logits(run, ids), atol=1e-4, rtol=0)


def test_sentencepiece_llama_exports_as_keras_hub_preset_only(tmp_path, capsys):
    preset = str(tmp_path / "preset")
    make_causal_lm(SENTENCEPIECE_LLAMA).save_to_preset(preset)
    run_path = _convert(preset, str(tmp_path / "runs"), "llama2")
    _fails(capsys, ["--run", run_path, "--format", "hf", "--out", str(tmp_path / "hf")],
           "--format keras-hub", tmp_path / "hf")
    out = _export(run_path, "keras-hub", str(tmp_path / "kh"))
    model = keras_hub.models.CausalLM.from_preset(out)
    assert type(model).__name__ == "LlamaCausalLM"
    ids = _ids(vocabulary=300)
    np.testing.assert_allclose(keras_hub_logits(model, ids), _logits(load_run(run_path), ids),
                               atol=1e-4, rtol=0)


def _fails(capsys, args, match, out=None):
    """`python -m tfchat.export ARGS` fails: exit 1, one line, nothing written."""
    capsys.readouterr()
    assert export_command.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    if out is not None:
        assert not os.path.exists(out)
        parent = os.path.dirname(str(out))
        assert not [n for n in os.listdir(parent) if n.startswith(".")]  # no staging folder
    return lines[0]


def _fake_run(path, tokenizer="char", **model):
    """A run folder's config alone: what the export checks before loading."""
    config = config_lib.Config(name=os.path.basename(path), runs_dir=os.path.dirname(path))
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, **model),
        tokenizer=dataclasses.replace(config.tokenizer, kind=tokenizer))
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f)


def test_runs_keras_hub_cannot_write_fail_in_one_line(tmp_path, capsys):
    own = str(tmp_path / "own")
    _fake_run(own)  # tfchat's char tokenizer
    line = _fails(capsys, ["--run", own, "--format", "hf", "--out", str(tmp_path / "a")],
                  "tfchat's own char tokenizer", tmp_path / "a")
    assert "python -m tfchat.convert" in line and "--format saved_model" in line

    odd = str(tmp_path / "odd")
    _fake_run(odd, tokenizer="pretrained", norm="rmsnorm", position="learned")
    line = _fails(capsys, ["--run", odd, "--format", "keras-hub", "--out", str(tmp_path / "b")],
                  "of no pretrained family", tmp_path / "b")
    assert "gpt2, llama, qwen2, mistral" in line
    edited = str(tmp_path / "edited")
    _fake_run(edited, tokenizer="pretrained", family="llama", norm="rmsnorm", position="learned")
    line = _fails(capsys, ["--run", edited, "--format", "hf", "--out", str(tmp_path / "d")],
                  "records model.family llama but its decoder is not one", tmp_path / "d")
    assert "position learned (not rope)" in line and "mlp gelu (not swiglu)" in line

    _fails(capsys, ["--run", str(tmp_path / "nowhere"), "--format", "hf", "--out",
                    str(tmp_path / "c")], "No tfchat run", tmp_path / "c")


def test_bad_arguments_fail_in_one_line(lora_llama, tmp_path, capsys):
    _, tuned = lora_llama
    _fails(capsys, ["--run", tuned, "--format", "hf"], "needs --out")
    _fails(capsys, ["--run", tuned, "--out", str(tmp_path / "x")], "--out is for --format hf",
           tmp_path / "x")
    _fails(capsys, ["--run", tuned, "--format", "hf", "--out", str(tmp_path / "y"),
                    "--version", "2"], "--name and --version", tmp_path / "y")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    _fails(capsys, ["--run", tuned, "--format", "keras-hub", "--out", str(taken)], "--force")
    assert os.listdir(taken) == ["keep.txt"]
    _export(tuned, "keras-hub", str(taken), "--force")  # replaced whole
    assert "keep.txt" not in os.listdir(taken) and "metadata.json" in os.listdir(taken)
