"""A GPT-2 whose start token is also its end token (`<|endoftext|>`, id 0, as
keras-hub builds GPT-2 vocabularies) through every Python path that
generates: `Generator`, `ChatSession`, `python -m tfchat.generate`, `chat`
and `evaluate`. Only generated tokens may end a row: the prompt's own start
token, and the buffer not yet sampled, must not.

The reference is keras-hub's greedy decoding of the same checkpoint, cut at
its first generated end token. (keras-hub's `generate` with its own stop
token returns nothing for this vocabulary: its sampler counts the padding,
also id 0, as a finished row; so the reference decodes without stopping and
cuts afterwards.)"""

import json
import os

import numpy as np
import pytest

from pretrained_checkpoints import keras_hub_greedy, make_gpt2_end_first
from tfchat import chat as chat_command
from tfchat import convert as convert_command
from tfchat import evaluate as evaluate_command
from tfchat import fit as fit_command
from tfchat import generate as generate_command
from tfchat.data.chat_template import Message
from tfchat.inference.chat_session import ChatSession
from tfchat.inference.generator import Generator
from tfchat.run import load_run

PROMPT = "the cat sat on"
NEW_TOKENS = 16
END = 0


def _until_end(ids):
    return ids[: ids.index(END)] if END in ids else ids


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """(keras-hub model, converted run folder, runs folder)."""
    root = tmp_path_factory.mktemp("gpt2_end_first")
    model = make_gpt2_end_first()
    assert model.preprocessor.tokenizer.end_token_id == END
    assert model.preprocessor.tokenizer.start_token_id == END
    preset = str(root / "preset")
    model.save_to_preset(preset)
    runs = str(root / "runs")
    assert convert_command.main([preset, "--name", "g", "--runs_dir", runs]) == 0
    return model, os.path.join(runs, "g"), runs


def _reference(model, text):
    """keras-hub's greedy continuation of `text` (after its start token),
    up to its first generated end token: (prompt ids, ids, text)."""
    tokenizer = model.preprocessor.tokenizer
    prompt = [END] + np.asarray(tokenizer(text)).tolist()
    ids = _until_end(keras_hub_greedy(model, prompt, NEW_TOKENS))
    text = tokenizer.detokenize(np.asarray(ids, np.int32)) if ids else ""
    return prompt, ids, text


def test_the_reference_itself_stops_at_a_generated_end_token(gpt2):
    # Otherwise the tests below would not see a stop at all.
    model, _, _ = gpt2
    for text in (PROMPT, f"User:\n{PROMPT}\n\nAssistant:\n"):
        prompt, ids, _ = _reference(model, text)
        full = keras_hub_greedy(model, prompt, NEW_TOKENS)
        assert 0 < len(ids) < NEW_TOKENS and full[len(ids)] == END


def test_generator_continues_a_prompt_that_starts_with_the_end_token(gpt2):
    model, run_dir, _ = gpt2
    run = load_run(run_dir)
    prompt, expected_ids, expected_text = _reference(model, PROMPT)
    generator = Generator(run.backbone, run.tokenizer)
    ids = run.tokenizer.tokenize_prompts(np.asarray([PROMPT])).to_list()
    assert ids == [prompt]
    sampler = generator.sampler(temperature=0)
    assert generator.generate_ids(ids, NEW_TOKENS, sampler) == [expected_ids]
    assert generator.generate([PROMPT], NEW_TOKENS, temperature=0) == [expected_text]
    # A batch with a longer prompt beside it: the short row's unsampled
    # buffer is padding too.
    longer = f"{PROMPT} the cat sat on the"
    _, longer_ids, _ = _reference(model, longer)
    both = generator.generate_ids(
        run.tokenizer.tokenize_prompts(np.asarray([PROMPT, longer])).to_list(), NEW_TOKENS, sampler)
    assert both == [expected_ids, longer_ids]
    # And streamed, in chunks.
    pieces = list(generator.stream(prompt, NEW_TOKENS, temperature=0, chunk_tokens=2))
    assert "".join(pieces) == expected_text


def test_generate_command_prints_the_continuation(gpt2, capsys):
    model, run_dir, _ = gpt2
    _, _, expected = _reference(model, PROMPT)
    code = generate_command.main(["--run", run_dir, "--prompt", PROMPT, "--max-new-tokens",
                                  str(NEW_TOKENS), "--temperature", "0"])
    assert code == 0
    assert capsys.readouterr().out == PROMPT + expected + "\n"


def test_chat_command_and_chat_session_reply(gpt2, capsys):
    model, run_dir, _ = gpt2
    # The plain template a converted GPT-2 renders conversations with.
    _, _, expected = _reference(model, f"User:\n{PROMPT}\n\nAssistant:\n")
    assert expected.strip()
    code = chat_command.main(["--run", run_dir, "--temperature", "0", "--max-new-tokens",
                              str(NEW_TOKENS), PROMPT])
    assert code == 0
    assert capsys.readouterr().out.strip() == expected.strip()

    run = load_run(run_dir)
    session = ChatSession(Generator(run.backbone, run.tokenizer), max_new_tokens=NEW_TOKENS,
                          temperature=0)
    prompt = session.ask(PROMPT)
    assert "".join(session.reply(prompt)).strip() == expected.strip()
    assert session.messages()[-1] == Message("assistant", expected.strip())


@pytest.mark.slow
def test_evaluate_scores_real_replies(gpt2, tmp_path):
    """A chat run fine-tuned from the GPT-2 by a step too small to change
    any greedy choice (learning rate 1e-9): evaluate's replies are keras-hub's."""
    model, run_dir, runs = gpt2
    _, _, expected = _reference(model, f"User:\n{PROMPT}\n\nAssistant:\n")
    data = tmp_path / "chats.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for _ in range(2):
            f.write(json.dumps({"messages": [{"role": "user", "content": PROMPT},
                                             {"role": "assistant", "content": "the cat"}]}) + "\n")
    code = fit_command.main([
        "--init_from", run_dir, "--objective", "chat", "--data.path", str(data),
        "--data.val_fraction", "0.5", "--train.max_steps", "1", "--train.batch_size", "2",
        "--train.learning_rate", "1e-9", "--train.min_learning_rate", "1e-10",
        "--train.warmup_steps", "0", "--train.sample_tokens", "0", "--train.jit_compile", "false",
        "--name", "chat", "--runs_dir", runs,
    ])
    assert code == 0
    report = tmp_path / "report.json"
    code = evaluate_command.main(["--run", os.path.join(runs, "chat"), "--no-xla",
                                  "--max-new-tokens", str(NEW_TOKENS), "--json", str(report)])
    assert code == 0
    (example,) = json.loads(report.read_text())["examples"]
    assert example["reply"].strip() == expected.strip()


def test_a_vocabulary_of_a_dozen_tokens_converts(tmp_path):
    """The size limit on vocabularies is for tokenizers trained here (which
    reserve special tokens), not for a checkpoint's own."""
    import keras_hub

    vocabulary = {"<|endoftext|>": 0, "Ġ": 1, "t": 2, "h": 3, "e": 4, "c": 5, "a": 6, "s": 7,
                  "o": 8, "n": 9, "Ġt": 10, "he": 11}
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["Ġ t", "h e"])
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=12, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=64,
        max_sequence_length=32)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=16)
    preset = str(tmp_path / "preset")
    keras_hub.models.GPT2CausalLM(backbone, preprocessor).save_to_preset(preset)
    runs = str(tmp_path / "runs")
    assert convert_command.main([preset, "--name", "tiny", "--runs_dir", runs]) == 0
    run = load_run(os.path.join(runs, "tiny"))
    assert run.backbone.vocabulary_size == 12
    assert run.tokenizer.tokenize_prompts(np.asarray(["the cat"])).to_list()[0][0] == END
