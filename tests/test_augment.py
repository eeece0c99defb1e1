"""Augmentation of the training split (`tfchat.data.augment`): each
transform against its rule, only the tokens it may touch, seeded, and a
run that resumes exactly with it on."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from conftest import CHAT_TINY, write_chat_jsonl
from tfchat.data.augment import ASSISTANT, TEMPLATE, USER, Augment, augment_sequence
from tfchat.data.chat_template import Encoded, Message, encode_conversations
from tfchat.data.pipeline import causal_lm_dataset, chat_dataset
from tfchat.data.tokenizer import CharTokenizer
from tfchat.errors import TfchatError
from tfchat.job import train

SEED = tf.constant([7, 1], tf.int64)


def perturb(ids, changeable, augment, seed=SEED, carried=()):
    out, carried = augment_sequence(tf.constant(ids, tf.int32), tf.constant(changeable),
                                    seed, augment, [tf.constant(c) for c in carried])
    return out.numpy().tolist(), [c.numpy().tolist() for c in carried]


def test_each_transform_touches_only_changeable_tokens_at_its_rate():
    n = 20_000
    ids = list(range(100, 100 + n))
    changeable = [i % 2 == 0 for i in range(n)]  # every other token is fixed
    fixed = {t for t, c in zip(ids, changeable) if not c}

    deleted, _ = perturb(ids, changeable, Augment(delete=0.2))
    assert fixed <= set(deleted)  # no fixed token is ever removed
    assert deleted == sorted(deleted)  # the rest keep their order
    assert (n - len(deleted)) / (n / 2) == pytest.approx(0.2, abs=0.02)

    masked, _ = perturb(ids, changeable, Augment(mask=0.3))
    hidden = [i for i, t in enumerate(masked) if t < 0]
    assert all(changeable[i] for i in hidden)
    assert all(masked[i] == -1 - ids[i] for i in hidden)  # the real id rides along
    assert len(hidden) / (n / 2) == pytest.approx(0.3, abs=0.02)

    # Swaps need two changeable neighbours: none here, so nothing moves...
    assert perturb(ids, changeable, Augment(swap=0.5))[0] == ids
    # ...and with all changeable, swaps are of neighbours and never overlap.
    swapped, (weights,) = perturb(ids, [True] * n, Augment(swap=0.2),
                                  carried=[np.arange(n, dtype=np.float32)])
    assert sorted(swapped) == ids and weights == [t - 100 for t in swapped]
    moved = [i for i in range(n) if swapped[i] != ids[i]]
    assert all(abs(swapped[i] - ids[i]) == 1 for i in moved)
    pairs = [i for i in moved if swapped[i] == ids[i] + 1]
    assert all(swapped[i + 1] == ids[i] for i in pairs)
    # A swap is drawn with 0.2 and kept unless one was drawn just before it.
    assert len(pairs) / n == pytest.approx(0.2 * 0.8, abs=0.015)


def test_the_same_seed_draws_the_same_and_another_seed_differs():
    ids, changeable = list(range(10, 210)), [True] * 200
    augment = Augment(mask=0.2, delete=0.1, swap=0.1)
    first = perturb(ids, changeable, augment)[0]
    assert perturb(ids, changeable, augment)[0] == first
    assert perturb(ids, changeable, augment, tf.constant([7, 2], tf.int64))[0] != first


def test_encoded_conversations_say_whose_each_token_is():
    tokenizer = CharTokenizer.train(["hi there, be kind. fine"])
    [encoded] = encode_conversations(tokenizer, [[Message("system", "be kind"),
                                                  Message("user", "hi there"),
                                                  Message("assistant", "fine")]])
    assert len(encoded.roles) == len(encoded.ids)
    text = {code: "".join(tokenizer.detokenize(tf.constant(
        [t for t, r in zip(encoded.ids, encoded.roles) if r == code])).numpy().decode())
        for code in (1, USER, ASSISTANT)}
    assert text == {1: "be kind", USER: "hi there", ASSISTANT: "fine"}
    # Whatever the assistant is taught is its own content or the template's.
    assert all(r in (ASSISTANT, TEMPLATE) for r, w in zip(encoded.roles, encoded.weights) if w)


def conversations(count, seed=0):
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        user, reply = rng.integers(10, 40, rng.integers(8, 14)), rng.integers(10, 40, 6)
        ids = [4] + user.tolist() + [5, 6] + reply.tolist() + [3]
        roles = [TEMPLATE] + [USER] * len(user) + [TEMPLATE, TEMPLATE] + [ASSISTANT] * 6 + [TEMPLATE]
        weights = [0] * (len(user) + 3) + [1] * 7
        result.append(Encoded(ids, weights, roles=roles))
    return result


def batches(ds, count):
    return [tuple(tf.nest.map_structure(lambda t: t.numpy(), b)) for b in ds.take(count)]


def test_chat_augmentation_changes_user_turns_and_never_what_the_model_learns():
    encoded = conversations(64)
    settings = dict(block_size=32, batch_size=8, packing=False, repeat=True, seed=3)
    plain = batches(chat_dataset(encoded, **settings), 8)
    augment = Augment(mask=0.3, delete=0.2, swap=0.2)
    perturbed = batches(chat_dataset(encoded, augment=augment, mask_id=1, **settings), 8)
    changed = 0
    for (x, y, w), (ax, ay, aw) in zip(plain, perturbed):
        for row in range(len(y)):
            # The taught targets, and everything after the user turn, as written.
            assert ay[row][aw[row] > 0].tolist() == y[row][w[row] > 0].tolist()
            # (the inputs end with the reply's marker and the reply: 8 ids)
            tail = int((x["segment_ids"][row] > 0).sum()) - 8
            atail = int((ax["segment_ids"][row] > 0).sum()) - 8
            assert ax["token_ids"][row][atail:atail + 8].tolist() == \
                x["token_ids"][row][tail:tail + 8].tolist()
            changed += ax["token_ids"][row].tolist() != x["token_ids"][row].tolist()
        assert (ax["token_ids"] >= 0).all() and (ay >= 0).all()  # no -1 - id escapes
        assert 1 in ax["token_ids"] and 1 not in ay  # masked: read, never taught
    assert changed > 0.8 * 64
    # Asked to, it changes the replies too.
    replies = batches(chat_dataset(encoded, augment=Augment(delete=0.3, roles=("assistant",)),
                                   mask_id=1, **settings), 1)
    assert replies[0][1][replies[0][2] > 0].tolist() != plain[0][1][plain[0][2] > 0].tolist()


def test_stream_augmentation_keeps_special_tokens_and_targets_real():
    tokenizer = CharTokenizer.train(["abcdefghij klmnop"])
    document = "abcdefghij klmnop"
    texts = tf.data.Dataset.from_tensor_slices([document] * 40)
    settings = dict(block_size=32, batch_size=4, add_eos=True, shuffle_buffer=16, seed=2,
                    repeat=True)
    for packing in (True, False):
        ds = causal_lm_dataset(texts, tokenizer, packing=packing, **settings,
                               augment=Augment(mask=0.2, swap=0.1, delete=0.1))
        inputs, targets = collections.Counter(), collections.Counter()
        for batch in ds.take(20):
            x, y = batch[0], batch[1]
            inputs.update((x["token_ids"] if packing else x).numpy().ravel().tolist())
            targets.update(y.numpy().ravel().tolist())
        assert inputs[tokenizer.unk_id] > 0 and targets[tokenizer.unk_id] == 0
        # Every document keeps its end: one in each 18 targets (17 + <eos>),
        # fewer than 18 once tokens are deleted.
        share = targets[tokenizer.eos_id] / sum(n for t, n in targets.items() if t)
        assert 1 / 18 < share < 1 / 14


def test_augmentation_settings_are_checked(make_config):
    from tfchat import objectives

    with pytest.raises(TfchatError, match="augment_roles must name some of system, user"):
        objectives.check(make_config({"data.augment_mask": 0.1, "data.augment_roles": "users"}))
    with pytest.raises(TfchatError, match=r"must be in \[0, 1\)"):
        objectives.check(make_config({"data.augment_delete": 1.5}))
    with pytest.raises(TfchatError, match="objectives causal, chat, distill, not mlm"):
        objectives.check(make_config({"objective": "mlm", "tokenizer.kind": "wordpiece",
                                      "data.augment_swap": 0.1}))


@pytest.mark.slow
def test_chat_run_with_augmentation_resumes_exactly(tmp_path):
    from conftest import nest
    from tfchat import config as config_lib

    settings = {**CHAT_TINY, "name": "augmented", "runs_dir": str(tmp_path / "runs"),
                "data.path": write_chat_jsonl(tmp_path / "chats.jsonl"),
                "model.block_size": 32, "model.dropout": 0.1, "train.shuffle_buffer": 64,
                "train.log_interval": 5, "train.eval_interval": 10,
                "train.learning_rate": 3e-3, "train.min_learning_rate": 3e-3,
                "train.warmup_steps": 0, "data.augment_mask": 0.2,
                "data.augment_delete": 0.1, "data.augment_swap": 0.1}

    def config(**overrides):
        return config_lib.build_config(overrides=nest({**settings, **overrides}))

    n = 10
    first = train(config(**{"train.max_steps": n}), verbose=0)
    resumed = train(config(**{"train.max_steps": 2 * n}), resume=True, verbose=0)
    full = train(config(**{"name": "full", "train.max_steps": 2 * n}), verbose=0)
    plain = train(config(**{"name": "plain", "train.max_steps": 2 * n,
                            "data.augment_mask": 0.0, "data.augment_delete": 0.0,
                            "data.augment_swap": 0.0}), verbose=0)
    losses = [h["loss"] for h in full]
    np.testing.assert_allclose([h["loss"] for h in first + resumed], losses, atol=1e-4)
    assert [h["loss"] for h in plain] != pytest.approx(losses, abs=1e-4)  # it did augment
    assert full[-1]["val_loss"] == pytest.approx(resumed[-1]["val_loss"], abs=1e-4)
