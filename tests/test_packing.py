"""Packing without cross-talk: the best-fit decreasing packer, segment ids in
the pipeline, the block-diagonal mask and per-segment positions in the
model, and training on packed batches (resume, XLA, mixed precision,
gradient accumulation)."""

import random

import numpy as np
import pytest
import tensorflow as tf

from conftest import CHAT_TINY, write_chat_jsonl, write_jsonl
from tfchat.data.chat_template import Encoded
from tfchat.data.pipeline import (
    best_fit_decreasing, causal_lm_dataset, chat_dataset, pack_segments,
)
from tfchat.data.tokenizer import CharTokenizer
from tfchat.job import train
from tfchat.model.gpt import GPT
from tfchat.model.tasks import CausalLM, token_sums

POSITIONS = ["learned", "rope"]


def reference_best_fit_decreasing(lengths, capacity):
    """The rule written directly: longest first (ties in input order), into
    the open block with the least room that fits, else a new block."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    room, block = [], [None] * len(lengths)
    for i in order:
        fitting = [b for b, r in enumerate(room) if r >= lengths[i]]
        if fitting:
            b = min(fitting, key=lambda b: (room[b], b))
        else:
            b = len(room)
            room.append(capacity)
        room[b] -= lengths[i]
        block[i] = b
    return block, len(room)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_fit_decreasing_matches_the_rule_written_directly(seed):
    rng = random.Random(seed)
    capacity = rng.choice([16, 65, 100])
    lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 300))]
    block, blocks = best_fit_decreasing(tf.constant(lengths), capacity)
    expected, expected_blocks = reference_best_fit_decreasing(lengths, capacity)
    assert int(blocks) == expected_blocks
    assert block.numpy().tolist() == expected
    # No block overflows, and short sequences fill blocks well.
    assert max(np.bincount(block.numpy(), weights=lengths)) <= capacity


@pytest.mark.parametrize("packing", [True, False])
def test_pack_segments_keeps_every_sequence_whole(packing):
    rng = np.random.default_rng(3)
    capacity = 20
    sequences = [rng.integers(1, 99, rng.integers(1, capacity + 1)).tolist() for _ in range(40)]
    weights = [rng.integers(0, 2, len(s)).astype(float).tolist() for s in sequences]
    ids, segments, w = (t.numpy() for t in pack_segments(
        tf.ragged.constant(sequences, tf.int32), tf.ragged.constant(weights, tf.float32),
        capacity, packing,
    ))
    found = []
    for row in range(len(ids)):
        seg = segments[row]
        # Segments are runs 1, 2, ... from the start of the row, then padding.
        real = seg > 0
        assert not (real[1:] & ~real[:-1]).any()
        assert (np.diff(seg[real]) >= 0).all() and seg[0] == 1
        assert not ids[row][~real].any() and not w[row][~real].any()
        for s in np.unique(seg[real]):
            found.append((ids[row][seg == s].tolist(), w[row][seg == s].tolist()))
    assert sorted(found) == sorted(zip(sequences, weights))
    if packing:
        assert len(ids) < len(sequences) and segments.max() > 1
    else:
        assert len(ids) == len(sequences) and segments.max() == 1


def tiny_gpt(position, vocabulary_size=40, block_size=24):
    gpt = GPT(vocabulary_size=vocabulary_size, num_layers=2, num_heads=2, hidden_dim=16,
              block_size=block_size, position=position)
    gpt(tf.zeros((1, block_size), tf.int32))
    return gpt


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_segment_is_computed_as_if_alone_in_its_row(position, jit_compile):
    gpt = tiny_gpt(position)
    forward = tf.function(lambda ids, segments: gpt(ids, segment_ids=segments),
                          jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    parts = [rng.integers(1, 40, n).astype("int32") for n in (7, 5, 9)]
    ids = np.concatenate(parts + [np.zeros(3, "int32")])[None]  # [1, 24]
    segments = np.concatenate([np.full(len(p), i + 1) for i, p in enumerate(parts)]
                              + [np.zeros(3)]).astype("int32")[None]
    packed = forward(ids, segments).numpy()[0]
    start = 0
    for part in parts:
        alone = gpt(part[None]).numpy()[0]
        np.testing.assert_allclose(packed[start:start + len(part)], alone, atol=1e-5)
        start += len(part)
    # Another segment's tokens change: this one's logits do not.
    changed = ids.copy()
    changed[0, 7:12] = rng.integers(1, 40, 5)
    after = forward(changed, segments).numpy()[0]
    np.testing.assert_allclose(after[:7], packed[:7], atol=1e-6)
    np.testing.assert_allclose(after[12:21], packed[12:21], atol=1e-6)
    assert np.abs(after[7:12] - packed[7:12]).max() > 1e-3


def random_conversations(n, max_length, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(rng.integers(3, max_length + 1))
        reply = int(rng.integers(1, length - 1))  # the last tokens are the assistant's
        rows.append(Encoded(ids=rng.integers(1, 40, length).tolist(),
                            weights=[0.0] * (length - reply) + [1.0] * reply))
    return rows


def loss_and_gradients(model, batch):
    x, y, w = batch
    with tf.GradientTape() as tape:
        loss_sum, _, count = token_sums(y, model(x), w)
        loss = loss_sum / count
    return float(loss), [tf.convert_to_tensor(g).numpy()
                         for g in tape.gradient(loss, model.trainable_variables)]


@pytest.mark.parametrize("position", POSITIONS)
def test_packed_loss_and_gradients_equal_one_conversation_per_row(position):
    block_size = 24
    encoded = random_conversations(30, block_size + 1)
    model = CausalLM(tiny_gpt(position, block_size=block_size))

    def whole(packing):
        batches = list(chat_dataset(encoded, block_size, 64, drop_remainder=False,
                                    packing=packing))
        assert len(batches) == 1
        return batches[0]

    packed, unpacked = whole(True), whole(False)
    assert packed[0]["token_ids"].shape[0] < unpacked[0]["token_ids"].shape[0]
    # The same targets are counted either way.
    assert float(tf.reduce_sum(packed[2])) == sum(sum(e.weights[1:]) for e in encoded)
    loss_packed, grads_packed = loss_and_gradients(model, packed)
    loss_rows, grads_rows = loss_and_gradients(model, unpacked)
    assert loss_packed == pytest.approx(loss_rows, abs=1e-5)
    for a, b in zip(grads_packed, grads_rows):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_packed_documents_keep_every_document_whole_and_apart():
    docs = ["a short one", "the quick brown fox jumps over the lazy dog, twice over",
            "mid length text", "x", "another document here"]
    tokenizer = CharTokenizer.train(docs)
    texts = tf.data.Dataset.from_tensor_slices(docs)
    block_size = 16
    batches = list(causal_lm_dataset(texts, tokenizer, block_size, 4, add_eos=True,
                                     drop_remainder=False, packing=True))
    tokens = {}
    for x, y, w in batches:
        ids, segments = x["token_ids"].numpy(), x["segment_ids"].numpy()
        y, w = y.numpy(), w.numpy()
        for row in range(len(ids)):
            for s in set(segments[row]) - {0}:
                where = np.flatnonzero(segments[row] == s)
                # Every target but the last of a segment stays in it.
                assert w[row][where[:-1]].all()
                piece = ids[row][where].tolist()
                if w[row][where[-1]]:  # the segment's last id is only a target
                    piece.append(y[row][where[-1]])
                tokens.setdefault(len(piece), []).append(piece)
        assert not w[segments == 0].any()
    expected = [tokenizer.tokenize(tf.constant(d)).numpy().tolist() + [tokenizer.eos_id]
                for d in docs]
    # Documents that fit a block come back whole; the long one in pieces.
    seen = [p for pieces in tokens.values() for p in pieces]
    for doc in expected:
        if len(doc) <= block_size + 1:
            assert any(p[:len(doc)] == doc for p in seen), doc
    long_doc = max(expected, key=len)
    assert any(p == long_doc[:block_size + 1] for p in seen)


# --- training on packed batches ---

@pytest.fixture
def chat_settings(tmp_path):
    return {**CHAT_TINY, "name": "packed", "runs_dir": str(tmp_path / "runs"),
            "data.path": write_chat_jsonl(tmp_path / "chats.jsonl"),
            "data.packing": True, "model.block_size": 32, "train.max_steps": 30,
            "train.log_interval": 5, "train.eval_interval": 15, "train.learning_rate": 3e-3,
            "train.min_learning_rate": 3e-3, "train.warmup_steps": 0}


def chat_config(settings, overrides=None):
    from conftest import nest
    from tfchat import config as config_lib

    return config_lib.build_config(overrides=nest({**settings, **(overrides or {})}))


@pytest.mark.slow
def test_packed_chat_resumes_exactly_with_dropout(chat_settings):
    settings = {**chat_settings, "model.dropout": 0.1, "train.shuffle_buffer": 64}
    n = 15
    first = train(chat_config(settings, {"train.max_steps": n}), verbose=0)
    resumed = train(chat_config(settings, {"train.max_steps": 2 * n}), resume=True, verbose=0)
    full = train(chat_config(settings, {"name": "full", "train.max_steps": 2 * n}), verbose=0)
    assert first[0]["useful_fraction"] > 0.75  # several conversations per block
    np.testing.assert_allclose([h["loss"] for h in first + resumed],
                               [h["loss"] for h in full], atol=1e-4)
    assert full[-1]["loss"] < 0.5 * full[0]["loss"]


@pytest.mark.parametrize("variant", [
    {"train.jit_compile": True},
    {"train.precision": "mixed_bfloat16"},
    {"model.position": "rope", "model.norm": "rmsnorm", "model.mlp": "swiglu"},
])
@pytest.mark.slow
def test_packed_chat_trains_under_every_setting(chat_settings, variant):
    history = train(chat_config(chat_settings, variant), verbose=0)
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]


def test_packed_gradient_accumulation_matches_one_batch(chat_settings):
    """Micro-batches of packed blocks hold different numbers of weighted
    targets; the accumulated update must still be the whole batch's."""
    from tfchat.run import build_model
    from tfchat.train.optim import build_optimizer

    batch = next(iter(chat_dataset(random_conversations(40, 33, seed=1), 32, 8)))
    counts = tf.reduce_sum(tf.reshape(batch[2], [4, -1]), axis=1).numpy()
    assert len(set(counts)) > 1

    config = chat_config(chat_settings)
    model = build_model(config, vocabulary_size=40)
    model.compile(optimizer=build_optimizer(config.train, model))
    x, y, w = batch
    normalizer = tf.reduce_sum(w)
    whole, (whole_loss, whole_correct) = model._gradients(x, y, w, normalizer)
    split, (split_loss, split_correct) = tf.function(model._accumulated_gradients)(
        x, y, w, normalizer, 4)
    assert float(split_loss) == pytest.approx(float(whole_loss), rel=1e-5)
    assert float(split_correct) == float(whole_correct)
    for a, b in zip(whole, split):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(),
                                   tf.convert_to_tensor(b).numpy(), atol=1e-6)


@pytest.mark.slow
def test_packed_documents_train_and_useful_fraction_counts_padding(tmp_path, chat_settings):
    docs = [{"text": "the quick brown fox " * (i % 4 + 1)} for i in range(200)]
    settings = {**chat_settings, "objective": "causal",
                "data.path": write_jsonl(tmp_path / "docs.jsonl", docs)}
    packed = train(chat_config(settings, {"name": "docs_packed"}), verbose=0)
    rows = train(chat_config(settings, {"name": "docs_rows", "data.packing": False}), verbose=0)
    # Packed documents leave little padding; the contiguous stream none.
    assert 0.8 < packed[0]["useful_fraction"] < 1.0
    assert rows[0]["useful_fraction"] == 1.0
    assert packed[-1]["loss"] < 0.5 * packed[0]["loss"]
