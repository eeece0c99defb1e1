"""Mistral, Gemma and Qwen3 (issue 29): a tiny random checkpoint of each,
made by keras-hub itself (tests/pretrained_checkpoints.py) as a keras-hub
preset and in Hugging Face form (written from keras-hub's weights and read
back by keras-hub's own reader as a check), is converted with
`tfchat.convert` and compared with keras-hub's model: logits, greedy ids,
token ids. Then export (Hugging Face form read back by keras-hub, a
SavedModel through TF Serving's v1 Session path), chat formats, LoRA
fine-tuning, and a run folder written before runs recorded their family."""

import json
import os

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from conftest import write_chat_jsonl
from pretrained_checkpoints import (
    MISTRAL_WINDOW, NEW_FAMILIES, keras_hub_greedy, keras_hub_logits, make_new_family_lm,
    write_hugging_face_checkpoint,
)
from tfchat import convert as convert_command
from tfchat import export as export_command
from tfchat import fit as fit_command
from tfchat.inference.generator import Generator
from tfchat.run import load_run

# Longer than Mistral's window of 6 once tokenized, so the band cuts keys.
PROMPT = "the cat sat on the mat"
NEW_TOKENS = 10
TEXTS = ["Hello world", "héllo wörld 中文", "the the the", "a quick brown fox", ""]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (keras-hub CausalLM, {"preset": dir, "hf": dir})."""
    root = tmp_path_factory.mktemp("new_families")
    made = {}
    for family in NEW_FAMILIES:
        model = make_new_family_lm(family)
        preset = str(root / f"{family}_preset")
        model.save_to_preset(preset)
        hf = write_hugging_face_checkpoint(model, family, str(root / f"{family}_hf"))
        made[family] = (model, {"preset": preset, "hf": hf})
    return made


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("runs"))


def _convert(source, runs_dir, name, *extra):
    path = os.path.join(runs_dir, name)
    if not os.path.isdir(path):
        assert convert_command.main([source, "--name", name, "--runs_dir", runs_dir, *extra]) == 0
    return path


def _backbone_logits(backbone, ids):
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})
    return np.asarray(backbone.token_embedding(hidden, reverse=True))


def _keras_hub_ids(source, texts, tokenizer_cls=keras_hub.tokenizers.Tokenizer):
    """keras-hub's tokenizer of `source`, run in tf.data. For a Hugging Face
    folder the class is named: keras-hub picks among a backbone's tokenizer
    classes in no fixed order (Mistral's SentencePiece or Tekken one)."""
    hub = tokenizer_cls.from_preset(source)
    return next(iter(tf.data.Dataset.from_tensor_slices(texts).batch(len(texts))
                     .map(hub.tokenize))).to_list()


def test_hugging_face_fixture_is_keras_hubs_model(checkpoints):
    """The Hugging Face form the tests write is, read by keras-hub's own
    reader, the model it was written from (so it can stand for a real one)."""
    ids = np.random.default_rng(0).integers(0, 200, (2, 20)).astype("int32")
    for family, (model, sources) in checkpoints.items():
        back = keras_hub.models.Backbone.from_preset(sources["hf"])
        np.testing.assert_allclose(_backbone_logits(back, ids), keras_hub_logits(model, ids),
                                   atol=1e-5, rtol=0, err_msg=family)


@pytest.mark.parametrize("form", ["preset", "hf"])
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_converted_model_matches_keras_hub(checkpoints, runs_dir, family, form):
    model, sources = checkpoints[family]
    run = load_run(_convert(sources[form], runs_dir, f"{family}_{form}"))
    assert run.config.model.family == family and run.step == 0
    if family == "mistral":
        assert run.config.model.sliding_window == MISTRAL_WINDOW
    # Logits over sequences longer than Mistral's window, and shorter.
    rng = np.random.default_rng(1)
    for length in (4, 24):
        ids = rng.integers(0, model.backbone.vocabulary_size, (2, length)).astype("int32")
        expected = keras_hub_logits(model, ids)
        got = run.backbone(tf.constant(ids)).numpy()
        assert expected.std() > 1.0
        assert np.abs(got - expected).max() < 1e-4, (family, form, length)
    # Prompts start as keras-hub's preprocessor starts them, then greedy
    # continuations agree (past the window).
    reference = model.preprocessor.generate_preprocess([PROMPT])
    expected_prompt = np.asarray(reference["token_ids"])[0][np.asarray(reference["padding_mask"])[0]]
    prompt_ids = run.tokenizer.tokenize_prompts(tf.constant([PROMPT]))[0].numpy().tolist()
    assert prompt_ids == expected_prompt.tolist()
    generator = Generator(run.backbone, run.tokenizer)
    ours = generator.generate_ids([prompt_ids], NEW_TOKENS, generator.sampler(temperature=0),
                                  stop_at_eos=False)[0]
    assert ours == keras_hub_greedy(model, prompt_ids, NEW_TOKENS)
    assert len(set(ours)) > 3
    assert len(prompt_ids) + NEW_TOKENS > MISTRAL_WINDOW
    # Token ids, against keras-hub's tokenizer of the source.
    assert run.tokenizer.tokenize(tf.constant(TEXTS)).to_list() == \
        _keras_hub_ids(sources[form], TEXTS, type(model.preprocessor.tokenizer))


def test_chat_format_markers_and_stop_tokens(checkpoints, runs_dir):
    """Gemma's turn markers are single tokens in its vocabulary, so a Gemma
    preset converts as a chat run in Gemma's format; a reply ends at
    <end_of_turn>. Mistral's reply ends with its end token </s>, written
    as text in the template and encoded as the one token. Qwen3 stops at
    <|im_end|> and <|endoftext|>."""
    from tfchat.data.chat_template import Message, chat_stop_ids, encode_conversation

    gemma = load_run(_convert(checkpoints["gemma"][1]["preset"], runs_dir, "gemma_preset"))
    assert (gemma.config.objective, gemma.config.tokenizer.chat_template) == ("chat", "gemma")
    end_of_turn = gemma.tokenizer.hub_tokenizer.token_to_id("<end_of_turn>")
    assert end_of_turn in chat_stop_ids(gemma.tokenizer)

    mistral = load_run(_convert(checkpoints["mistral"][1]["preset"], runs_dir, "mistral_preset"))
    from tfchat.data.chat_template import get_template

    mistral.tokenizer.chat_template = get_template("mistral")
    encoded = encode_conversation(mistral.tokenizer, [Message("user", "hi"),
                                                      Message("assistant", "hello")])
    eos = mistral.tokenizer.eos_id
    assert encoded.ids[0] == mistral.tokenizer.bos_id and encoded.ids[-1] == eos
    assert encoded.weights[-1] == 1 and encoded.ids.count(eos) == 1
    assert chat_stop_ids(mistral.tokenizer) == (eos,)

    qwen3 = load_run(_convert(checkpoints["qwen3"][1]["preset"], runs_dir, "qwen3_preset"))
    hub = qwen3.tokenizer.hub_tokenizer
    assert set(qwen3.tokenizer.stop_ids) == {hub.token_to_id("<|im_end|>"),
                                            hub.token_to_id("<|endoftext|>")}


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_exports_are_read_back_by_keras_hub(checkpoints, runs_dir, tmp_path, family):
    """`export --format hf` (written by tfchat: keras-hub 0.32's exporter is
    wrong for these shapes or missing) and `--format keras-hub`, each read
    back by keras-hub with the original model's logits and tokenizer."""
    model, sources = checkpoints[family]
    run_path = _convert(sources["preset"], runs_dir, f"{family}_preset")
    ids = np.random.default_rng(2).integers(0, model.backbone.vocabulary_size, (2, 20)).astype("int32")
    expected = keras_hub_logits(model, ids)
    for fmt in ("hf", "keras-hub"):
        out = str(tmp_path / fmt)
        assert export_command.main(["--run", run_path, "--format", fmt, "--out", out]) == 0
        back = keras_hub.models.Backbone.from_preset(out)
        assert type(back) is type(model.backbone)
        assert np.abs(_backbone_logits(back, ids) - expected).max() < 1e-4, (family, fmt)
        tokenizer_cls = type(model.preprocessor.tokenizer)
        assert _keras_hub_ids(out, TEXTS, tokenizer_cls) == _keras_hub_ids(sources["preset"], TEXTS)
    with open(os.path.join(str(tmp_path / "hf"), "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["model_type"] == family and config["head_dim"] == 12
    if family == "mistral":
        assert config["sliding_window"] == MISTRAL_WINDOW
    # The converted export is a checkpoint tfchat reads again.
    again = load_run(_convert(str(tmp_path / "hf"), str(tmp_path / "runs"), "again"))
    np.testing.assert_allclose(again.backbone(tf.constant(ids)).numpy(), expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_saved_model_serves_the_keras_text_and_windowed_scores(checkpoints, runs_dir, tmp_path,
                                                               family):
    """The exported SavedModel through TF Serving's v1 Session path: the
    generate signature writes the Keras model's greedy text, and the score
    signature's log-likelihoods equal those from keras-hub's own logits (an
    independent masked computation), on texts shorter and longer than
    Mistral's window."""
    from serving_calls import session_run
    from tfchat.serving.export import export_run

    model, sources = checkpoints[family]
    # A causal run (the plain template), whose export has generate and score.
    run = load_run(_convert(sources["preset"], runs_dir, f"{family}_causal",
                            "--chat_template", "plain"))
    assert run.config.objective == "causal"
    generator = Generator(run.backbone, run.tokenizer)
    prompts = [PROMPT, "hello world"]
    texts = generator.generate(prompts, NEW_TOKENS, temperature=0)
    path = export_run(run, saved_models_dir=str(tmp_path / "saved"))
    out = session_run(path, "generate",
                      {"prompt": prompts, "max_new_tokens": [NEW_TOKENS], "temperature": [0.0]})
    assert [t.decode("utf-8", "replace") for t in out["text"].tolist()] == texts
    scored = ["the cat", "the cat sat on the mat, hello world, how are you?"]
    if family == "mistral":
        assert len(run.tokenizer.tokenize(tf.constant(scored[0])).numpy()) < MISTRAL_WINDOW
        assert len(run.tokenizer.tokenize(tf.constant(scored[1])).numpy()) > 2 * MISTRAL_WINDOW
    out = session_run(path, "score", {"text": scored})
    for text, got in zip(scored, out["log_likelihood"]):
        ids = [run.tokenizer.first_id] + run.tokenizer.tokenize(tf.constant(text)).numpy().tolist()
        logits = keras_hub_logits(model, np.array([ids[:-1]], "int32"))[0].astype("float64")
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        expected = np.mean([logp[t, ids[t + 1]] for t in range(len(ids) - 1)])
        assert abs(got - expected) < 1e-4, (family, text, got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_lora_chat_fine_tuning_lowers_the_loss(checkpoints, tmp_path, family):
    """`fit --init_from` the checkpoint with LoRA on a small chat set, in the
    family's own chat format where it has one (no system messages for the
    formats without a system turn)."""
    _, sources = checkpoints[family]
    runs = str(tmp_path / "runs")
    data = write_chat_jsonl(str(tmp_path / "chat.jsonl"))
    template = {"mistral": "mistral", "gemma": "gemma", "qwen3": "chatml"}[family]
    code = fit_command.main([
        "--init_from", sources["preset"], "--data.path", data, "--name", "tuned",
        "--runs_dir", runs, "--model.lora_rank", "4", "--model.block_size", "32",
        "--tokenizer.chat_template", template, "--objective", "chat",
        "--train.batch_size", "8", "--train.max_steps", "30", "--train.learning_rate", "1e-2",
        "--train.warmup_steps", "2", "--train.eval_interval", "30", "--train.log_interval", "5",
        "--train.jit_compile", "false",
    ])
    assert code == 0
    with open(os.path.join(runs, "tuned", "metrics.jsonl"), encoding="utf-8") as f:
        losses = [json.loads(line)["loss"] for line in f if "loss" in json.loads(line)]
    assert losses[-1] < 0.7 * losses[0], losses
    assert load_run(os.path.join(runs, "tuned")).config.model.family == family


def test_a_run_written_before_families_were_recorded_loads(checkpoints, runs_dir, tmp_path):
    """A run folder from before `model.family` (its config.json without the
    key): its family is inferred from its decoder once and written back; a
    run of tfchat's own tokenizer is `none`."""
    import shutil

    from tfchat.families import family_of_old_run
    from tfchat.run import RunFolder

    converted = _convert(checkpoints["qwen3"][1]["preset"], runs_dir, "qwen3_preset")
    old = str(tmp_path / "old")
    shutil.copytree(converted, old)
    config_path = os.path.join(old, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    # A Qwen2-layout run as one was written then (qkv biases, no q/k norms).
    del config["model"]["family"]
    config["model"].update(qkv_bias=True, qk_norm=False, head_dim=0, sliding_window=0)
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    assert RunFolder(old).read_config().model.family == "qwen2"
    with open(config_path, encoding="utf-8") as f:
        assert json.load(f)["model"]["family"] == "qwen2"  # recorded once
    own = RunFolder(old).read_config().model
    assert family_of_old_run(own, "char") == "none"


def test_qwen2_sliding_window_converts_and_exports(tmp_path):
    """Qwen2's sliding window (all layers, as keras-hub applies it) converts
    with the same logits past the window, and its Hugging Face export says
    so and converts back windowed (keras-hub 0.32's own reader drops the
    window: tfchat passes it)."""
    from pretrained_checkpoints import make_causal_lm

    model = make_causal_lm("qwen2", use_sliding_window_attention=True, sliding_window_size=5)
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    run_path = _convert(preset, str(tmp_path / "runs"), "windowed")
    run = load_run(run_path)
    assert run.config.model.sliding_window == 5
    ids = np.random.default_rng(3).integers(0, model.backbone.vocabulary_size, (2, 20)).astype("int32")
    expected = keras_hub_logits(model, ids)
    assert np.abs(run.backbone(tf.constant(ids)).numpy() - expected).max() < 1e-4
    unwindowed = make_causal_lm("qwen2")
    assert np.abs(keras_hub_logits(unwindowed, ids)[:, 5:] - expected[:, 5:]).max() > 1e-2
    out = str(tmp_path / "hf")
    assert export_command.main(["--run", run_path, "--format", "hf", "--out", out]) == 0
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert (config["use_sliding_window"], config["sliding_window"]) == (True, 5)
    again = load_run(_convert(out, str(tmp_path / "runs"), "again"))
    assert again.config.model.sliding_window == 5
    assert np.abs(again.backbone(tf.constant(ids)).numpy() - expected).max() < 1e-4
