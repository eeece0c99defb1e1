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

import preference_tasks
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
from tfchat.objectives import dpo
from tfchat.run import RunFolder, load_run, start_checkpoint
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


def _direct_loss_and_slopes(policy, reference, counts, beta, loss, smoothing, rpo_alpha=0.0):
    """The mean DPO loss over pairs and its derivatives with respect to each
    pair's policy log-probabilities (chosen, rejected), by hand."""
    b = policy.shape[0]
    summed = policy
    if loss == "ipo":
        policy, reference = policy / counts, reference / counts
    chosen_ratio = policy[:, 0] - reference[:, 0]
    rejected_ratio = policy[:, 1] - reference[:, 1]
    h = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        m = beta * h
        losses = -_log_sigmoid(m) * (1 - smoothing) - _log_sigmoid(-m) * smoothing
        dl_dh = beta * (-(1 - smoothing) * _sigmoid(-m) + smoothing * _sigmoid(m))
        slopes = np.stack([dl_dh, -dl_dh], 1)
    elif loss == "ipo":
        target = 1.0 / (2.0 * beta)
        losses = (h - target) ** 2
        dl_dh = 2.0 * (h - target)
        slopes = np.stack([dl_dh, -dl_dh], 1) / counts
    else:  # apo_zero: each reply's reward pushed on its own
        up, down = _sigmoid(beta * chosen_ratio), _sigmoid(beta * rejected_ratio)
        losses = (1.0 - up) + down
        slopes = np.stack([-beta * up * (1 - up), beta * down * (1 - down)], 1)
    # RPO: the chosen reply's negative log-likelihood per token.
    losses = losses - rpo_alpha * summed[:, 0] / counts[:, 0]
    slopes[:, 0] -= rpo_alpha / counts[:, 0]
    return losses.mean(), slopes / b


def _tiny_backbone(seed, vocabulary=13, block=8):
    keras.utils.set_random_seed(seed)
    backbone = GPT(vocabulary_size=vocabulary, num_layers=1, num_heads=2, hidden_dim=16,
                   block_size=block, dropout=0.0)
    backbone(tf.zeros((1, block), tf.int32))
    return backbone


@pytest.mark.parametrize("loss,smoothing,rpo_alpha", [
    ("sigmoid", 0.0, 0.0), ("sigmoid", 0.2, 0.0), ("ipo", 0.0, 0.0), ("apo_zero", 0.0, 0.0),
    ("sigmoid", 0.0, 1.0), ("ipo", 0.0, 0.5),
])
def test_loss_and_gradient_equal_the_formula(loss, smoothing, rpo_alpha):
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

    model = PreferenceLM(_tiny_backbone(seed=3), beta=beta, loss=loss, label_smoothing=smoothing,
                         rpo_alpha=rpo_alpha)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    policy_logps, _ = _direct_logps(model.backbone, tokens, targets, weights)
    expected_loss, slopes = _direct_loss_and_slopes(policy_logps, ref_logps, counts, beta,
                                                    loss, smoothing, rpo_alpha)
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
    # The chosen reply's change against the reference and its likelihood,
    # per token, whatever the loss.
    per_token = (policy_logps[:, 0] - ref_logps[:, 0]) / counts[:, 0]
    assert float(logs["chosen_logp_change"]) == pytest.approx(per_token.mean(), rel=1e-4, abs=1e-6)
    assert float(logs["chosen_nll"]) == pytest.approx(
        (-policy_logps[:, 0] / counts[:, 0]).mean(), rel=1e-5)


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


# --- the objective's own defaults ---


def _value(config, key):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def test_dpo_takes_its_own_defaults_for_what_nobody_set(tmp_path):
    from tfchat import objectives

    general = config_lib.TrainConfig()
    config = objectives.resolve(config_lib.build_config(
        overrides=nest({"objective": "dpo", "init_from": "runs/sft"})))
    defaults = dpo.defaults(config)
    for key, value in defaults.items():
        assert _value(config, key) == value != _value(config_lib.Config(), key)
    assert objectives.defaults_used(config) == defaults
    assert config.train.learning_rate == dpo.LEARNING_RATE
    # --help says which defaults dpo replaces.
    helps = {key: help for key, _, _, help in config_lib.flat_keys()}
    assert all("dpo:" in helps[key] for key in defaults)
    # What a config file or the command line sets stays; the rest is dpo's
    # (50 steps alone work: dpo's warmup is shorter).
    path = tmp_path / "dpo.yaml"
    path.write_text("train:\n  learning_rate: 5.0e-4\n", encoding="utf-8")
    config = objectives.resolve(config_lib.build_config(
        [str(path)], nest({"objective": "dpo", "init_from": "runs/sft", "train.max_steps": 50})))
    assert (config.train.learning_rate, config.train.max_steps) == (5e-4, 50)
    assert config.train.min_learning_rate == pytest.approx(5e-5)  # a tenth of the rate given
    assert config.train.warmup_steps == defaults["train.warmup_steps"]
    assert "train.learning_rate" not in objectives.defaults_used(config)
    # objective auto on preference pairs becomes dpo, with dpo's defaults.
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    config = objectives.resolve(config_lib.build_config(
        overrides=nest({"init_from": "runs/sft", "data.path": prefs})))
    assert config.objective == "dpo"
    assert config.train.learning_rate == dpo.LEARNING_RATE
    # Other objectives, and a config read back from a run, keep theirs.
    config = objectives.resolve(config_lib.build_config(overrides={"objective": "chat"}))
    assert config.train.learning_rate == general.learning_rate
    saved = config_lib.from_dict({"objective": "dpo", "init_from": "runs/sft"})
    assert objectives.resolve(saved).train.learning_rate == general.learning_rate


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


def _preference_loss(logged):
    """The DPO part of a logged loss: without dpo.rpo_alpha's (default)
    likelihood term."""
    return logged["loss"] - config_lib.DpoConfig().rpo_alpha * logged["chosen_nll"]


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
    preference = [_preference_loss(h) for h in history if "loss" in h]
    assert preference[-1] < preference[0] < np.log(2)
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
    preference = [_preference_loss(h) for h in trained]
    assert preference[-1] < preference[0] < np.log(2)
    assert logs[-1]["val_reward_margin"] > 0


# --- defaults that keep the model intact, on tasks of two shapes ---


def _fit(settings, capsys):
    """`python -m tfchat.fit` with these settings; its printed output."""
    code = fit.main(as_cli_args(settings))
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    return out.out


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """Per task of tests/preference_tasks.py, made on first use: the chat
    model fine-tuned on both replies of every prompt."""
    root = tmp_path_factory.mktemp("preference_tasks")
    made = {}

    def sft(task):
        if task not in made:
            settings = {**preference_tasks.SFT_SETTINGS[task], "objective": "chat",
                        "name": f"sft_{task}", "runs_dir": str(root / "runs"),
                        "train.eval_interval": 400, "train.sample_tokens": 0,
                        "data.path": preference_tasks.write_chats(
                            root / f"{task}_chats.jsonl", preference_tasks.EXAMPLES[task])}
            train(config_lib.build_config(overrides=nest(settings)), verbose=0)
            made[task] = str(root / "runs" / f"sft_{task}")
        return made[task]

    return root, sft


def _held_out_replies(run_dir, task, checkpoint=None):
    """Greedy replies of the run to the 10 prompts the pairs leave out, and
    how many are in the preferred style (`in_preferred_style`)."""
    examples = preference_tasks.EXAMPLES[task][preference_tasks.HELD_OUT]
    run = load_run(run_dir, checkpoint=checkpoint)
    replies = Generator(run.backbone, run.tokenizer).chat(
        [[Message("user", prompt)] for prompt, _, _ in examples], max_new_tokens=48)
    return replies, sum(map(preference_tasks.in_preferred_style, replies, examples))


def _evaluations(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [e for e in map(json.loads, f) if "val_loss" in e]


@pytest.mark.slow
@pytest.mark.parametrize("task,lora", [("polite", False), ("directions", True)],
                         ids=["char-short-full", "bpe-sentences-lora"])
def test_dpo_defaults_switch_the_replies_and_keep_them_intact(sft_runs, task, lora, capsys):
    root, sft = sft_runs
    sft = sft(task)
    replies, preferred = _held_out_replies(sft, task)
    assert preferred <= 5, replies  # the SFT model answers in both styles
    prefs = preference_tasks.write_pairs(
        root / f"{task}_prefs.jsonl", preference_tasks.EXAMPLES[task][preference_tasks.TRAINING])
    # Only the objective, the run to start from and the data (and where the
    # run goes); LoRA is the directions task's shape.
    settings = {"objective": "dpo", "init_from": sft, "data.path": prefs,
                "runs_dir": str(root / "runs"), **({"model.lora_rank": 8} if lora else {})}
    out = _fit({**settings, "name": f"dpo_{task}"}, capsys)
    assert "dpo's defaults: train.learning_rate" in out
    assert "Warning" not in out
    run_dir = str(root / "runs" / f"dpo_{task}")
    replies, preferred = _held_out_replies(run_dir, task)
    assert preferred >= 9, replies
    for evaluation in _evaluations(run_dir):
        assert evaluation["val_chosen_logp_change"] > -config_lib.DpoConfig().max_chosen_drop, evaluation

    # Three times as long, the replies stay.
    steps = 3 * dpo.STEPS
    out = _fit({**settings, "name": f"dpo_{task}_long", "train.max_steps": steps}, capsys)
    assert "Warning" not in out
    replies, preferred = _held_out_replies(str(root / "runs" / f"dpo_{task}_long"), task)
    assert preferred >= 9, replies

    # What evaluate reports of the replies to the held-out pairs' prompts.
    assert evaluate_cli.main(["--run", run_dir]) == 0
    assert "val_replies_closer_to_chosen" in capsys.readouterr().out
    with open(os.path.join(run_dir, "evaluation.json"), encoding="utf-8") as f:
        results = json.load(f)
    assert results["checkpoint"] == "best"
    assert results["val_reward_accuracy"] >= 0.9
    assert results["val_replies_closer_to_chosen"] >= 0.9
    assert results["val_reply_chrf_chosen"] >= 80


@pytest.mark.slow
def test_plain_dpo_collapses_with_a_warning_and_the_defaults_do_not(sft_runs, capsys):
    """Issue 28's failure: plain sigmoid DPO (no likelihood term) at the SFT
    rate ranks every held-out pair right while every reply degenerates."""
    root, sft = sft_runs
    sft = sft("polite")
    examples = preference_tasks.EXAMPLES["polite"]
    prefs = preference_tasks.write_pairs(root / "collapse.jsonl",
                                         examples[preference_tasks.TRAINING])
    settings = {"objective": "dpo", "init_from": sft, "data.path": prefs,
                "runs_dir": str(root / "runs")}
    # As before this issue: TRL's beta, no likelihood term, the SFT rate.
    out = _fit({**settings, "name": "plain", "dpo.rpo_alpha": 0, "dpo.beta": 0.1,
                "train.learning_rate": 1e-3}, capsys)
    run_dir = str(root / "runs" / "plain")
    evaluations = _evaluations(run_dir)
    assert evaluations[-1]["val_reward_accuracy"] == 1.0  # what looked fine
    assert evaluations[-1]["val_chosen_logp_change"] < -0.5  # what was not
    assert "Warning at step" in out and "chosen replies are" in out
    assert "Warning: at the last evaluation" in out
    if all(e["val_chosen_logp_change"] < -0.5 for e in evaluations):
        assert "is only the least damaged one" in out
    _, preferred = _held_out_replies(run_dir, "polite", checkpoint="latest")
    assert preferred <= 2
    # The best checkpoint is the evaluation the documented rule ranks first
    # (tfchat.objectives.dpo.selection_loss), recomputed here from the log.
    config = load_run(run_dir).config

    def rank(e):  # the least fall past the limit, then the latest
        return max(0.0, -e["val_chosen_logp_change"] - config.dpo.max_chosen_drop), -e["step"]

    assert load_run(run_dir).folder.read_best()["step"] == min(evaluations, key=rank)["step"]
    # Commands load the best checkpoint, and a run started from this one
    # starts from it too; a chat run's is its latest.
    best_path = RunFolder(run_dir).latest_checkpoint("best")[0]
    assert load_run(run_dir).checkpoint == "best" and start_checkpoint(run_dir) == best_path
    assert start_checkpoint(sft) == RunFolder(sft).latest_checkpoint()[0]
    # evaluate shows the collapse in what the model writes, and warns.
    assert evaluate_cli.main(["--run", run_dir, "--checkpoint", "latest"]) == 0
    assert "Warning: the held-out chosen replies are" in capsys.readouterr().out
    with open(os.path.join(run_dir, "evaluation.json"), encoding="utf-8") as f:
        collapsed = json.load(f)
    assert collapsed["val_reward_accuracy"] == 1.0
    assert collapsed["val_reply_chrf_chosen"] < 50
    assert collapsed["val_replies_exactly_chosen"] == 0.0

    # The defaults on the same data: no warning, the chosen replies as
    # likely as before (within the limit), and the chat answers politely.
    out = _fit({**settings, "name": "defaults"}, capsys)
    assert "Warning" not in out
    run_dir = str(root / "runs" / "defaults")
    evaluations = _evaluations(run_dir)
    assert evaluations[-1]["val_chosen_logp_change"] > -0.5
    assert load_run(run_dir).folder.read_best()["step"] == evaluations[-1]["step"]  # all within
    replies, _ = _held_out_replies(run_dir, "polite")
    assert chat_cli.main(["--run", run_dir, "--temperature", "0", examples[-1][0]]) == 0
    reply = capsys.readouterr().out
    assert reply == replies[-1] + "\n" and preference_tasks.in_preferred_style(reply, examples[-1])
    # The exported chat signature (the best checkpoint, as chat loads it),
    # through the v1 Session path as TF Serving runs it.
    path = export_run(load_run(run_dir), saved_models_dir=str(root / "saved"))
    out = session_run(path, "chat", {"roles": ["user"], "contents": [examples[-2][0]],
                                     "max_new_tokens": [48], "temperature": [0.0]})
    assert out["text"].tolist() == [replies[-2].encode()]
