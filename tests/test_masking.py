"""Masked-LM inputs: `mask_tokens` statistics and invariants, and the
`masked_lm_dataset` / `classification_dataset` pipelines."""

import numpy as np
import pytest
import tensorflow as tf

from tfchat import job
from tfchat.data.pipeline import (
    add_cls_and_sep,
    classification_dataset,
    count_truncated,
    mask_tokens,
    masked_lm_dataset,
)
from tfchat.data.tokenizer import WordPieceTokenizer

from conftest import write_jsonl

VOCAB, MASK_ID, SPECIAL = 400, 8, 9


def random_batch(rng, batch=64, length=16):
    """[CLS] ordinary ids [SEP] then padding, of random lengths; some rows
    also hold a literal [UNK] or [MASK] id, which must never be chosen."""
    ids = rng.integers(SPECIAL, VOCAB, size=(batch, length)).astype("int32")
    for row, n in enumerate(rng.integers(3, length + 1, size=batch)):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = 2, 3, 0
        if n > 4:
            ids[row, 1 + rng.integers(n - 2)] = rng.choice([1, MASK_ID])
    return ids


def chosen_positions(out):
    """[B, L] bool of the positions `mask_tokens` chose (from its slots)."""
    positions, weights = out["mask_positions"].numpy(), out["mask_weights"].numpy()
    chosen = np.zeros(out["token_ids"].shape, bool)
    for row in range(len(positions)):
        chosen[row, positions[row][weights[row] > 0]] = True
    return chosen


_mask = tf.function(
    lambda ids, seed, max_predictions, continuation: mask_tokens(
        ids, seed, vocabulary_size=VOCAB, mask_id=MASK_ID, num_special_tokens=SPECIAL,
        max_predictions=max_predictions, is_continuation=continuation,
    ),
    reduce_retracing=True,
)


def run_mask(ids, seed, max_predictions=8, continuation=None):
    return _mask(tf.constant(ids), tf.constant(seed, tf.int64), max_predictions, continuation)


def test_masking_statistics_over_many_batches():
    rng = np.random.default_rng(0)
    selectable = chosen_total = as_mask = as_random = as_kept = 0
    for index in range(100):
        ids = random_batch(rng)
        out = run_mask(ids, [5, index])
        chosen = chosen_positions(out)
        corrupted = out["token_ids"].numpy()
        # Special tokens (padding, [CLS], [SEP], [UNK], a literal [MASK])
        # are never chosen, and nothing outside the chosen set changes.
        assert not (chosen & (ids < SPECIAL)).any()
        np.testing.assert_array_equal(corrupted[~chosen], ids[~chosen])
        selectable += (ids >= SPECIAL).sum()
        chosen_total += chosen.sum()
        as_mask += (corrupted[chosen] == MASK_ID).sum()
        kept = corrupted[chosen] == ids[chosen]
        as_kept += kept.sum()
        random = (corrupted[chosen] != MASK_ID) & ~kept
        as_random += random.sum()
        # Random replacements are ordinary tokens.
        assert (corrupted[chosen][random] >= SPECIAL).all()
    # Short sequences (1-14 ordinary tokens) still average 15%.
    assert chosen_total / selectable == pytest.approx(0.15, abs=0.01)
    # A random replacement can draw the original token (1 in 391); it then
    # counts as kept, as in BERT.
    assert as_mask / chosen_total == pytest.approx(0.8, abs=0.02)
    assert as_random / chosen_total == pytest.approx(0.1, abs=0.02)
    assert as_kept / chosen_total == pytest.approx(0.1, abs=0.02)
    # Enough draws that ±2% is several standard deviations.
    assert chosen_total > 5_000


def test_slots_hold_the_original_ids_in_order():
    ids = random_batch(np.random.default_rng(1), length=32)
    out = run_mask(ids, [1, 2], max_predictions=10)
    positions, mask_ids = out["mask_positions"].numpy(), out["mask_ids"].numpy()
    weights = out["mask_weights"].numpy()
    assert positions.shape == mask_ids.shape == weights.shape == (64, 10)
    for row in range(64):
        used = weights[row] > 0
        # Used slots come first, ascending; unused ones are zeros.
        assert (np.diff(used.astype(int)) <= 0).all()
        assert (np.diff(positions[row][used]) > 0).all()
        np.testing.assert_array_equal(mask_ids[row][used], ids[row, positions[row][used]])
        assert not positions[row][~used].any() and not mask_ids[row][~used].any()


def test_cap_on_predictions_per_sequence():
    ids = np.full((32, 64), 100, np.int32)  # 64 ordinary tokens: ~9.6 wanted
    out = run_mask(ids, [3, 4], max_predictions=4)
    assert (out["mask_weights"].numpy().sum(axis=1) == 4).all()
    assert chosen_positions(out).sum(axis=1).max() == 4


def test_same_seed_same_masks_other_seed_differs():
    ids = random_batch(np.random.default_rng(2))
    a, b, c = run_mask(ids, [7, 1]), run_mask(ids, [7, 1]), run_mask(ids, [7, 2])
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    assert not np.array_equal(a["mask_positions"].numpy(), c["mask_positions"].numpy())


def test_whole_word_masking_takes_every_piece_of_a_word():
    rng = np.random.default_rng(3)
    # Ids 200 and up continue the word before them ("##..." pieces).
    continuation = np.arange(VOCAB) >= 200
    chosen_words = partial_words = 0
    for index in range(30):
        ids = random_batch(rng, length=24)
        out = run_mask(ids, [9, index], max_predictions=8, continuation=tf.constant(continuation))
        chosen = chosen_positions(out)
        corrupted = out["token_ids"].numpy()
        for row in range(len(ids)):
            word, words = [], []
            for pos, token in enumerate(ids[row]):
                if token < SPECIAL:
                    words, word = words + [word] * bool(word), []
                elif continuation[token] and word:
                    word.append(pos)
                else:
                    words, word = words + [word] * bool(word), [pos]
            for word in words:
                picked = chosen[row, word]
                if picked.all():
                    chosen_words += 1
                    # One replacement decision per word: all [MASK] or none.
                    is_mask = corrupted[row, word] == MASK_ID
                    assert is_mask.all() or not is_mask.any()
                elif picked.any():
                    partial_words += 1
        assert not (chosen & (ids < SPECIAL)).any()
    assert chosen_words > 200 and partial_words == 0


@pytest.fixture(scope="module")
def wordpiece():
    lines = [f"line {i}: the quick brown fox jumps over {i % 7} lazy dogs\n" for i in range(200)]
    return WordPieceTokenizer.train(lines, 200), lines


def test_masked_lm_dataset_packs_a_stream(wordpiece):
    tokenizer, lines = wordpiece
    ds = masked_lm_dataset(tf.data.Dataset.from_tensor_slices(lines), tokenizer, 16, 4, seed=1)
    x, y, w = next(iter(ds))
    assert x["token_ids"].shape == (4, 16) and y.shape == w.shape == x["mask_positions"].shape == (4, 3)
    assert x["padding_mask"].numpy().all()
    token_ids = x["token_ids"].numpy()
    assert (token_ids[:, 0] == tokenizer.cls_id).all() and (token_ids[:, -1] == tokenizer.sep_id).all()
    # Restoring the masked tokens gives back the stream, 14 tokens a block.
    restored = token_ids.copy()
    for row in range(4):
        used = w.numpy()[row] > 0
        restored[row, x["mask_positions"].numpy()[row][used]] = y.numpy()[row][used]
    stream = tokenizer.tokenize(tf.constant(lines)).flat_values.numpy()
    np.testing.assert_array_equal(restored[:, 1:-1].reshape(-1), stream[: 4 * 14])


def test_masked_lm_dataset_documents_truncates_and_pads(wordpiece):
    tokenizer, _ = wordpiece
    docs = ["the fox", "the quick brown fox jumps over the lazy dogs line 1 line 2 line 3"]
    ds = masked_lm_dataset(tf.data.Dataset.from_tensor_slices(docs), tokenizer, 8, 2,
                           documents=True, drop_remainder=False, mask_rate=0.5)
    x, y, w = next(iter(ds))
    mask = x["padding_mask"].numpy()
    assert mask.sum(axis=1).tolist() == [4, 8]
    assert not x["token_ids"].numpy()[~mask].any()
    # The cut keeps [SEP] last; padding is never chosen.
    assert x["token_ids"].numpy()[1, -1] == tokenizer.sep_id
    for row, length in enumerate(mask.sum(axis=1)):
        used = x["mask_positions"].numpy()[row][w.numpy()[row] > 0]
        assert len(used) and ((used >= 1) & (used < length - 1)).all()
    assert count_truncated(tf.data.Dataset.from_tensor_slices(docs), tokenizer, 6) == (1, 2)


def test_masked_lm_dataset_is_seeded_and_resumes(wordpiece, tmp_path):
    tokenizer, lines = wordpiece

    def make(seed):
        return masked_lm_dataset(tf.data.Dataset.from_tensor_slices(lines), tokenizer, 16, 4,
                                 shuffle_buffer=100, seed=seed, repeat=True)

    def take(iterator, n):
        return [next(iterator)[0]["token_ids"].numpy() for _ in range(n)]

    a, b = take(iter(make(3)), 6), take(iter(make(3)), 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, take(iter(make(4)), 6))
    # A checkpointed iterator continues with the same blocks and masks.
    iterator = iter(make(3))
    take(iterator, 3)
    checkpoint = tf.train.Checkpoint(data=iterator)
    path = checkpoint.save(str(tmp_path / "it"))
    restored = iter(make(3))
    tf.train.Checkpoint(data=restored).restore(path)
    np.testing.assert_array_equal(take(restored, 3), a[3:])


def test_classification_dataset(wordpiece):
    tokenizer, _ = wordpiece
    texts = ["the quick fox", "lazy dogs", "the quick brown fox jumps over the lazy dogs"]
    (x, labels), = list(classification_dataset(texts, [2, 0, 1], tokenizer, 6, 8))
    assert labels.numpy().tolist() == [2, 0, 1]
    expected, mask = add_cls_and_sep(tokenizer.tokenize(tf.constant(texts)), 6, tokenizer)
    np.testing.assert_array_equal(x["token_ids"].numpy(), expected.numpy())
    assert x["padding_mask"].numpy().sum(axis=1).tolist() == [5, 4, 6]
    assert x["token_ids"].numpy()[2].tolist()[-1] == tokenizer.sep_id


@pytest.mark.slow
def test_training_on_a_jsonl_corpus_checkpoints_and_resumes(make_config, tmp_path):
    # JSONL text is extracted by a tf.py_function; tf.data refused to save
    # the trainer's iterator over it until told the function holds no state.
    # (Only while the reader is mid-file, so more documents than one
    # tokenizer batch of 256.)
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"document {i}"} for i in range(1500)])
    settings = {"data.path": path, "train.eval_interval": 5, "train.shuffle_buffer": 16}
    config = make_config({**settings, "train.max_steps": 10})
    assert [h["step"] for h in job.train(config, verbose=0)] == [5, 10]
    config = make_config({**settings, "train.max_steps": 15})
    assert [h["step"] for h in job.train(config, resume=True, verbose=0)] == [15]
