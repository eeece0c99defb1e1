"""Preference tuning (objective dpo): the losses against the formulas
computed directly, preference data in every form and its errors, a
synthetic two-style task learnt with and without LoRA, resume, and the
chat's feedback commands writing pairs DPO trains on."""

import json
import os
import signal
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import CHAT_TINY, as_cli_args, nest, write_jsonl
from serving_calls import session_run
from terminal import Terminal
from tfchat import chat as chat_cli
from tfchat import config as config_lib
from tfchat import evaluate as evaluate_cli
from tfchat import fit
from tfchat.data.chat_template import Message, use_chat_template
from tfchat.data.pipeline import preference_dataset
from tfchat.data.preferences import (
    PreferenceCorpus, PreferencePair, encode_pairs, labelled_record, read_preferences_jsonl,
)
from tfchat.data.tokenizer import train_tokenizer
from tfchat.errors import TfchatError
from tfchat.inference.generator import Generator
from tfchat.job import train
from tfchat.model.gpt import GPT
from tfchat.model.preference import PreferenceLM
from tfchat.run import load_run
from tfchat.serving.export import export_run

# --- the losses, against the formulas computed directly ---


def _log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _direct_logps(backbone, tokens, targets, weights):
    """Summed log-probabilities of the weighted targets, from the logits by
    a NumPy log-softmax and a gather: [B, 2] (and token counts)."""
    b, _, t = tokens.shape
    logits = backbone(tokens.reshape(-1, t)).numpy()
    picked = np.take_along_axis(_log_softmax(logits), targets.reshape(-1, t, 1), -1)[..., 0]
    w = weights.reshape(-1, t)
    return (picked * w).sum(-1).reshape(b, 2), w.sum(-1).reshape(b, 2)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _direct_loss_and_slopes(policy, reference, counts, beta, loss, smoothing):
    """The mean DPO loss over pairs and its derivatives with respect to each
    pair's policy log-probabilities (chosen, rejected), by hand."""
    b = policy.shape[0]
    if loss == "ipo":
        policy, reference = policy / counts, reference / counts
    h = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    if loss == "sigmoid":
        m = beta * h
        losses = -_log_sigmoid(m) * (1 - smoothing) - _log_sigmoid(-m) * smoothing
        dl_dh = beta * (-(1 - smoothing) * _sigmoid(-m) + smoothing * _sigmoid(m))
        slopes = np.stack([dl_dh, -dl_dh], 1)
    else:
        target = 1.0 / (2.0 * beta)
        losses = (h - target) ** 2
        dl_dh = 2.0 * (h - target)
        slopes = np.stack([dl_dh, -dl_dh], 1) / counts
    return losses.mean(), slopes / b


def _tiny_backbone(seed, vocabulary=13, block=8):
    keras.utils.set_random_seed(seed)
    backbone = GPT(vocabulary_size=vocabulary, num_layers=1, num_heads=2, hidden_dim=16,
                   block_size=block, dropout=0.0)
    backbone(tf.zeros((1, block), tf.int32))
    return backbone


@pytest.mark.parametrize("loss,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_loss_and_gradient_equal_the_formula(loss, smoothing):
    rng = np.random.default_rng(0)
    b, t, beta = 3, 8, 0.5
    tokens = rng.integers(1, 13, (b, 2, t)).astype(np.int32)
    targets = rng.integers(1, 13, (b, 2, t)).astype(np.int32)
    # A prompt (weight 0), a reply of its own length per row, then padding.
    weights = np.zeros((b, 2, t), np.float32)
    for i in range(b):
        for j in range(2):
            weights[i, j, 2:3 + rng.integers(1, t - 3)] = 1.0
    reference = _tiny_backbone(seed=7)
    ref_logps, counts = _direct_logps(reference, tokens, targets, weights)

    model = PreferenceLM(_tiny_backbone(seed=3), beta=beta, loss=loss, label_smoothing=smoothing)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    policy_logps, _ = _direct_logps(model.backbone, tokens, targets, weights)
    expected_loss, slopes = _direct_loss_and_slopes(policy_logps, ref_logps, counts, beta,
                                                    loss, smoothing)
    # The gradient: the formula's slopes times each row's log-probability
    # gradient, taken row by row through a log-softmax and a gather.
    variables = model.trainable_variables
    expected = [np.zeros(v.shape, np.float64) for v in variables]
    for i in range(b):
        for j in range(2):
            with tf.GradientTape() as tape:
                logits = model.backbone(tokens[i, j][None])[0]
                logp = tf.reduce_sum(
                    tf.gather(tf.nn.log_softmax(logits), targets[i, j], batch_dims=1)
                    * weights[i, j])
            for e, g in zip(expected, tape.gradient(logp, variables)):
                e += slopes[i, j] * tf.convert_to_tensor(g).numpy()
    before = [v.numpy().copy() for v in variables]
    x = {"token_ids": tokens, "padding_mask": weights > -1,
         "reference_logps": ref_logps.astype(np.float32)}
    logs = model.train_step((x, targets, weights))

    assert float(logs["loss"]) == pytest.approx(expected_loss, rel=1e-5)
    # SGD at rate 1: each weight moved by minus its gradient.
    for v, old, e in zip(variables, before, expected):
        np.testing.assert_allclose(old - v.numpy(), e, rtol=1e-4, atol=2e-6, err_msg=v.path)
    assert max(np.abs(e).max() for e in expected) > 1e-3  # a gradient worth checking
    # ipo's log-probabilities, and so its rewards, are averages over the
    # reply's tokens (as TRL computes them).
    rewards = beta * (policy_logps - ref_logps) / (counts if loss == "ipo" else 1.0)
    assert float(logs["reward_chosen"]) == pytest.approx(rewards[:, 0].mean(), rel=1e-4, abs=1e-6)
    assert float(logs["reward_margin"]) == pytest.approx(
        (rewards[:, 0] - rewards[:, 1]).mean(), rel=1e-4, abs=1e-6)


def test_reward_accuracy_counts_ties_half():
    model = PreferenceLM(_tiny_backbone(seed=3))
    tokens = np.ones((2, 2, 8), np.int32)
    weights = np.ones((2, 2, 8), np.float32)
    logps, _ = _direct_logps(model.backbone, tokens, tokens, weights)
    x = {"token_ids": tokens, "padding_mask": weights > 0, "reference_logps": logps}
    logs = model.test_step((x, tokens, weights))  # the policy is the reference
    assert float(logs["reward_accuracy"]) == 0.5
    assert float(logs["loss"]) == pytest.approx(np.log(2.0), rel=1e-5)


def test_accumulated_micro_batches_give_the_whole_batch_gradient():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 13, (4, 2, 8)).astype(np.int32)
    weights = (rng.random((4, 2, 8)) > 0.3).astype(np.float32)
    x = {"token_ids": tokens, "padding_mask": weights > -1,
         "reference_logps": rng.normal(-20, 3, (4, 2)).astype(np.float32)}
    model = PreferenceLM(_tiny_backbone(seed=3))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    normalizer = tf.constant(4.0)  # pairs
    whole, whole_sums = model._gradients(x, tokens, weights, normalizer)
    split, split_sums = tf.function(model._accumulated_gradients)(x, tokens, weights,
                                                                   normalizer, 2)
    np.testing.assert_allclose([float(v) for v in split_sums], [float(v) for v in whole_sums],
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(whole, split):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(),
                                   tf.convert_to_tensor(b).numpy(), atol=1e-6)


# --- preference data ---


def _char_tokenizer(texts=("abcdefghijklmnopqrstuvwxyz .,!?",)):
    config = config_lib.TokenizerConfig(kind="char")
    return use_chat_template(train_tokenizer(config, iter(texts)), config)


def test_every_record_form_reads_to_the_same_pair(tmp_path):
    user, chosen, rejected = "hi there", "hello!", "go away."
    conversation = [{"role": "user", "content": user}]
    records = [
        {"prompt": user, "chosen": chosen, "rejected": rejected},
        {"prompt": conversation, "chosen": [{"role": "assistant", "content": chosen}],
         "rejected": {"role": "assistant", "content": rejected}},
        {"messages": conversation, "chosen": chosen, "rejected": rejected},
        {"chosen": conversation + [{"role": "assistant", "content": chosen}],
         "rejected": conversation + [{"role": "assistant", "content": rejected}]},
        labelled_record([Message("user", user)], [Message("assistant", rejected)], False),
        {"prompt": "unanswered", "completion": "alone", "label": True},
        labelled_record([Message("user", user)], [Message("assistant", chosen)], True),
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", records)
    pairs, unpaired = read_preferences_jsonl(path)
    expected = ((Message("user", user),), (Message("assistant", chosen),),
                (Message("assistant", rejected),))
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [expected] * 5
    assert unpaired == 1
    assert pairs[-1].where.endswith("lines 5 and 7")


def test_encoded_pairs_weigh_only_the_reply():
    tokenizer = _char_tokenizer()
    prompt = (Message("user", "ab"), Message("assistant", "cd"), Message("user", "ef"))
    pair = read_pair(prompt, "yes!", "no.")
    (chosen, rejected), = encode_pairs(tokenizer, [pair], max_tokens=64)
    ids = tokenizer.tokenize(tf.constant(["yes!", "no."])).to_list()
    for encoded, reply in ((chosen, ids[0]), (rejected, ids[1])):
        weighted = [t for t, w in zip(encoded.ids, encoded.weights) if w]
        # The reply and its end-of-turn marker; not the prompt's assistant turn.
        assert weighted[:-1] == reply and len(weighted) == len(reply) + 1
    prompt_length = len(chosen.ids) - len(ids[0]) - 1  # before the reply and its end marker
    assert chosen.ids[:prompt_length] == rejected.ids[:prompt_length]
    assert not any(chosen.weights[:prompt_length])

    (cut, _), = encode_pairs(tokenizer, [pair], max_tokens=len(chosen.ids) - 2)
    assert cut.cut_tokens == 2 and sum(cut.weights) == sum(chosen.weights) - 2
    (one, _), = encode_pairs(tokenizer, [pair], max_tokens=prompt_length + 1)
    assert sum(one.weights) == 1  # room for the reply's first token
    with pytest.raises(TfchatError, match="line 9: the prompt is .* no room for a reply"):
        encode_pairs(tokenizer, [pair], max_tokens=prompt_length)


def read_pair(prompt, chosen, rejected):
    return PreferencePair(tuple(prompt), (Message("assistant", chosen),),
                          (Message("assistant", rejected),), where="prefs.jsonl line 9")


def test_preference_batches_hold_both_replies_and_the_reference():
    tokenizer = _char_tokenizer()
    pairs = [read_pair([Message("user", "ab")], "yes!", "no."),
             read_pair([Message("user", "abcd")], "sure.", "nope, never.")]
    encoded = encode_pairs(tokenizer, pairs, max_tokens=33)
    reference = np.array([[-1.0, -2.0], [-3.0, -4.0]], np.float32)
    x, y, w = next(iter(preference_dataset(encoded, 32, 2, reference_logps=reference)))
    assert x["token_ids"].shape == y.shape == w.shape == (2, 2, 32)
    np.testing.assert_array_equal(x["reference_logps"], reference)
    for i, pair in enumerate(encoded):
        for j, e in enumerate(pair):
            n = len(e.ids) - 1
            np.testing.assert_array_equal(x["token_ids"][i, j, :n], e.ids[:-1])
            np.testing.assert_array_equal(y[i, j, :n], e.ids[1:])
            np.testing.assert_array_equal(w[i, j, :n], e.weights[1:])
            # Every id is a real input but the last of a full row.
            assert x["padding_mask"][i, j].numpy().sum() == min(n + 1, 32)
            assert w[i, j, n:].numpy().sum() == 0


BAD_RECORDS = [
    ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "line 2: the chosen and rejected replies are identical"),
    ({"prompt": "hi", "chosen": "  ", "rejected": "no"}, "line 2: the chosen reply is empty"),
    ({"prompt": "hi", "chosen": "yes"}, 'line 2: missing field "rejected"'),
    ({"chosen": "yes", "rejected": "no"}, "line 2: without a \"prompt\""),
    ({"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"},
     "line 2: the prompt must end with a user message"),
    ({"prompt": "hi", "completion": "yes", "label": "good"}, 'line 2: "label" must be true or false'),
    ("[1, 2]", "line 2: expected an object"),
]


@pytest.mark.parametrize("record,message", BAD_RECORDS, ids=[m.split(": ", 1)[1][:30] for _, m in BAD_RECORDS])
def test_bad_records_name_file_and_line(tmp_path, record, message):
    good = {"prompt": "hi", "chosen": "yes", "rejected": "no"}
    path = write_jsonl(tmp_path / "prefs.jsonl", [good, record, good])
    data = config_lib.DataConfig(path=path)
    with pytest.raises(TfchatError) as e:
        PreferenceCorpus(data)
    assert f"{path} {message}" in str(e.value)


# --- a synthetic preference task: two styles of reply, one preferred ---

NAMES = [a + b + c for a in "bdkm" for b in "aeiou" for c in "lnrst"][::2]  # 50 prompts
STYLES = {"warm": "sure, happy to help!", "curt": "no."}


@pytest.fixture(scope="module")
def two_style_run(tmp_path_factory):
    """A tiny chat model fine-tuned on both styles of reply to every prompt:
    it answers each prompt in one style or the other."""
    root = tmp_path_factory.mktemp("two_styles")
    records = [{"messages": [{"role": "user", "content": f"{name}?"},
                             {"role": "assistant", "content": reply}]}
               for name in NAMES for reply in STYLES.values()]
    settings = {**CHAT_TINY, "name": "sft", "runs_dir": str(root / "runs"),
                "model.block_size": 32, "model.hidden_dim": 48, "train.max_steps": 150,
                "train.eval_interval": 150, "data.val_fraction": 0.05,
                "data.path": write_jsonl(root / "chats.jsonl", records)}
    train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    return root


def _styles(run_dir, names):
    run = load_run(run_dir)
    replies = Generator(run.backbone, run.tokenizer).chat(
        [[Message("user", f"{name}?")] for name in names], max_new_tokens=30)
    return [next((s for s, text in STYLES.items() if reply == text), reply) for reply in replies]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_learns_the_preferred_style(two_style_run, lora, capsys):
    root = two_style_run
    sft = str(root / "runs" / "sft")
    # The pairs' order puts every fourth prompt in the held-out split.
    held_out = [name for i, name in enumerate(NAMES) if (i + 1) // 4 > i // 4]
    before = _styles(sft, held_out)
    assert set(before) <= set(STYLES)  # the SFT model answers in the two styles
    # Prefer the style the SFT model uses less, so the replies must switch.
    preferred = min(STYLES, key=before.count)
    other = next(s for s in STYLES if s != preferred)
    pairs = [{"prompt": f"{name}?", "chosen": STYLES[preferred], "rejected": STYLES[other]}
             for name in NAMES]
    name = "dpo_lora" if lora else "dpo"
    settings = {**CHAT_TINY, "name": name, "runs_dir": str(root / "runs"), "init_from": sft,
                "objective": "dpo", "model.block_size": 32, "model.hidden_dim": 48,
                "data.path": write_jsonl(root / "prefs.jsonl", pairs), "data.val_fraction": 0.25,
                # DPO wants a far lower rate than SFT's 1e-2: at 1e-3 (full)
                # or 2e-3 (LoRA) the margins still grow, but some replies
                # degenerate ("noo").
                "train.max_steps": 60, "train.learning_rate": 1e-3 if lora else 3e-4,
                "train.min_learning_rate": 1e-4 if lora else 3e-5, "train.eval_interval": 30,
                "train.log_interval": 10, "model.lora_rank": 4 if lora else 0}
    history = train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    run_dir = os.path.join(root, "runs", name)

    # Held-out reward accuracy: 0.5 before any step (every pair ties), then
    # at least 0.9; the loss falls from log 2.
    assert evaluate_cli.main(["--run", run_dir, "--checkpoint", "latest"]) == 0
    capsys.readouterr()
    with open(os.path.join(run_dir, "evaluation.json"), encoding="utf-8") as f:
        results = json.load(f)
    assert results["val_pairs"] == len(held_out)
    assert results["val_reward_accuracy"] >= 0.9
    assert results["val_chosen_likelier"] >= 0.9
    assert history[-1]["loss"] < history[0]["loss"] < np.log(2)
    # The SFT model found the preferred reply likelier for at most half the
    # held-out prompts (it answered them mostly the other way).
    assert before.count(preferred) <= len(held_out) / 2
    after = _styles(run_dir, held_out)
    assert after.count(preferred) >= 0.9 * len(held_out), (before, after)
    if lora:
        assert load_run(run_dir).config.model.lora_rank == 4
        return
    # A DPO run is a chat run: the terminal chat and the exported chat
    # signature (through the v1 Session path, as TF Serving runs it) answer
    # in the preferred style.
    assert chat_cli.main(["--run", run_dir, "--temperature", "0", f"{held_out[0]}?"]) == 0
    assert capsys.readouterr().out == STYLES[preferred] + "\n"
    path = export_run(load_run(run_dir), saved_models_dir=str(root / "saved"))
    out = session_run(path, "chat", {"roles": ["user"], "contents": [f"{held_out[1]}?"],
                                     "max_new_tokens": [16], "temperature": [0.0]})
    assert out["text"].tolist() == [STYLES[preferred].encode()]


@pytest.mark.slow
def test_dpo_resumes_exactly_with_dropout(two_style_run):
    root = two_style_run
    pairs = [{"prompt": f"{name}?", "chosen": STYLES["warm"], "rejected": STYLES["curt"]}
             for name in NAMES]
    constant = {**CHAT_TINY, "objective": "dpo", "runs_dir": str(root / "runs"),
                "init_from": str(root / "runs" / "sft"),
                "model.block_size": 32, "model.hidden_dim": 48, "model.dropout": 0.1,
                "data.path": write_jsonl(root / "resume.jsonl", pairs),
                "train.warmup_steps": 0, "train.learning_rate": 1e-3,
                "train.min_learning_rate": 1e-3, "train.log_interval": 4, "train.eval_interval": 8}

    def run(name, steps, resume=False):
        config = config_lib.build_config(overrides=nest({**constant, "name": name,
                                                         "train.max_steps": steps}))
        return train(config, resume=resume, verbose=0)

    first = run("resumed", 8)
    resumed = run("resumed", 16, resume=True)
    full = run("full", 16)
    assert [h["step"] for h in resumed] == [12, 16]
    keys = ["loss", "reward_margin", "reward_accuracy"]
    for a, b in zip(first + resumed, full):
        for key in keys:
            assert a[key] == pytest.approx(b[key], abs=1e-4), (key, a, b)
    assert full[-1]["val_loss"] == pytest.approx(resumed[-1]["val_loss"], abs=1e-4)


@pytest.mark.slow
def test_dpo_in_mixed_bfloat16_with_accumulation_and_xla(two_style_run):
    root = two_style_run
    pairs = [{"prompt": f"{name}?", "chosen": STYLES["curt"], "rejected": STYLES["warm"]}
             for name in NAMES]
    settings = {**CHAT_TINY, "objective": "dpo", "name": "dpo_bf16", "runs_dir": str(root / "runs"),
                "init_from": str(root / "runs" / "sft"), "model.block_size": 32,
                "model.hidden_dim": 48, "data.path": write_jsonl(root / "bf16.jsonl", pairs),
                "data.val_fraction": 0.25, "train.precision": "mixed_bfloat16",
                "train.grad_accumulation_steps": 2, "train.jit_compile": True,
                "train.max_steps": 30, "train.learning_rate": 3e-4, "train.eval_interval": 30,
                "train.log_interval": 10}
    history = train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"] < np.log(2)
    assert history[-1]["val_reward_accuracy"] >= 0.9


def test_bad_dpo_settings_exit_1_with_a_reason(two_style_run, tmp_path, capsys):
    root = two_style_run
    sft = str(root / "runs" / "sft")
    base = {**CHAT_TINY, "runs_dir": str(tmp_path / "runs"), "model.block_size": 32,
            "model.hidden_dim": 48, "objective": "dpo", "data.val_fraction": 0.5}
    good = {"prompt": "bal?", "chosen": "yes", "rejected": "no"}
    cases = [
        ({}, [good] * 4, "objective dpo needs init_from"),
        ({"init_from": sft}, [good, {"prompt": "bal?", "chosen": "", "rejected": "no"}],
         "line 2: the chosen reply is empty"),
        ({"init_from": sft}, [{"prompt": "x" * 40, "chosen": "yes", "rejected": "no"}] + [good] * 3,
         "line 1: the prompt is 43 tokens"),
        ({"init_from": sft, "dpo.loss": "kto"}, [good] * 4, "dpo.loss must be one of sigmoid, ipo"),
    ]
    for i, (settings, records, message) in enumerate(cases):
        data = write_jsonl(tmp_path / f"bad{i}.jsonl", records)
        args = as_cli_args({**base, "name": f"bad{i}", "data.path": data, **settings})
        assert fit.main(args) == 1
        err = capsys.readouterr().err
        assert message in err, err
        assert not os.path.exists(tmp_path / "runs" / f"bad{i}")


# --- the chat's feedback commands ---


@pytest.mark.slow
def test_chat_feedback_writes_pairs_dpo_trains_on(two_style_run, tmp_path):
    root = two_style_run
    sft = str(root / "runs" / "sft")
    feedback = str(tmp_path / "prefs.jsonl")
    terminal = Terminal([sys.executable, "-m", "tfchat.chat", "--run", sft, "--feedback",
                         feedback, "--temperature", "1.0", "--top-k", "0", "--seed", "5"])
    try:
        terminal.read_until("you> ")
        shown, prompts, history = {}, {}, []
        for name in NAMES[:6]:
            prompts[name] = (*history, Message("user", f"{name}?"))
            terminal.send(f"{name}?")
            first = terminal.read_until("you> ")
            terminal.send("/retry")
            second = terminal.read_until("you> ")
            assert "bot[1]> " in first and "bot[2]> " in second
            shown[name] = [first.split("bot[1]> ")[1].strip(), second.split("bot[2]> ")[1].strip()]
            # The conversation goes on with the preferred (here the last) reply.
            history = [*prompts[name], Message("assistant", shown[name][1])]
            if shown[name][0] != shown[name][1]:
                terminal.send("/prefer 2")
                assert "recorded reply 2 over 1 other reply" in terminal.read_until("you> ")
            else:
                terminal.send("/prefer 2")
                assert "all the same; nothing recorded" in terminal.read_until("you> ")
        terminal.send(f"{NAMES[7]}?")
        terminal.read_until("you> ")
        terminal.send("/good")
        assert "recorded the last reply as good" in terminal.read_until("you> ")
        terminal.send("/retry")
        terminal.read_until("you> ")
        terminal.send("/bad")
        assert "recorded the last reply as bad" in terminal.read_until("you> ")
        terminal.send("/prefer 9")
        assert "There are replies 1 to 2." in terminal.read_until("you> ")
        # Killed, not closed: every judgement is already on disk.
        terminal.process.send_signal(signal.SIGKILL)
        terminal.process.wait(timeout=30)
    finally:
        terminal.process.kill()
        os.close(terminal.master)

    pairs, unpaired = read_preferences_jsonl(feedback)
    distinct = [name for name, replies in shown.items() if replies[0] != replies[1]]
    assert len(distinct) >= 3  # sampling at temperature 1 gives different replies
    explicit = pairs[:len(distinct)]
    for pair, name in zip(explicit, distinct):
        # The conversation as the model saw it: its oldest exchanges are
        # left out once it outgrows the 32-token context.
        assert pair.prompt == prompts[name][len(prompts[name]) - len(pair.prompt):]
        assert pair.prompt[0].role == "user"
        assert pair.chosen[0].content == shown[name][1]
        assert pair.rejected[0].content == shown[name][0]
    # The good and the bad reply to the last prompt paired up, unless equal.
    assert len(pairs) - len(distinct) + unpaired in (1, 2)

    # DPO trains on what the chat wrote.
    args = as_cli_args({**CHAT_TINY, "objective": "auto", "name": "feedback_dpo",
                        "runs_dir": str(tmp_path / "runs"), "init_from": sft,
                        "model.block_size": 32, "model.hidden_dim": 48,
                        "data.path": feedback, "data.val_fraction": 0.5,
                        "train.max_steps": 20, "train.learning_rate": 2e-3,
                        "train.eval_interval": 20, "train.log_interval": 10})
    assert fit.main(args) == 0
    run = load_run(str(tmp_path / "runs" / "feedback_dpo"))
    assert run.config.objective == "dpo"  # auto: the feedback file is preference data
    with open(run.folder.metrics, encoding="utf-8") as f:
        logs = [json.loads(line) for line in f]
    trained = [line for line in logs if "loss" in line]
    assert trained[-1]["loss"] < trained[0]["loss"] < np.log(2)
    assert logs[-1]["val_reward_margin"] > 0
