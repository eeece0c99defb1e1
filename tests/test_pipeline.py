import numpy as np
import pytest
import tensorflow as tf

from tfchat.data.pipeline import causal_lm_dataset, pack_sequences, tokenize_texts
from tfchat.data.tokenizer import CharTokenizer

TEXTS = [f"line {i}: the quick brown fox {'!' * (i % 5)}\n" for i in range(300)]
BLOCK, BATCH = 16, 4


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(TEXTS)


def stream(tokenizer, texts, add_eos=False):
    """The concatenated token stream, computed text by text in Python."""
    ids = []
    for text in texts:
        ids += tokenizer.tokenize(tf.constant(text)).numpy().tolist()
        if add_eos:
            ids.append(tokenizer.eos_id)
    return np.array(ids, np.int32)


def dataset(tokenizer, texts=TEXTS, **kwargs):
    kwargs = {"block_size": BLOCK, "batch_size": BATCH, **kwargs}
    return causal_lm_dataset(tf.data.Dataset.from_tensor_slices(texts), tokenizer, **kwargs)


def rows(ds, batches=None):
    """All (inputs, targets) rows of the first `batches` batches."""
    ds = ds if batches is None else ds.take(batches)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_blocks_are_the_token_stream_shifted_by_one(tokenizer):
    ds = dataset(tokenizer)
    spec_x, spec_y = ds.element_spec
    assert spec_x.dtype == spec_y.dtype == tf.int32
    assert spec_x.shape.as_list() == spec_y.shape.as_list() == [BATCH, BLOCK]

    ids = stream(tokenizer, TEXTS)
    blocks = ids[: len(ids) // (BLOCK + 1) * (BLOCK + 1)].reshape(-1, BLOCK + 1)
    x, y = rows(ds)
    full = len(blocks) // BATCH * BATCH  # drop_remainder drops a partial batch
    np.testing.assert_array_equal(x, blocks[:full, :-1])
    np.testing.assert_array_equal(y, blocks[:full, 1:])


def test_keeps_final_partial_batch_without_drop_remainder(tokenizer):
    ids = stream(tokenizer, TEXTS)
    num_blocks = len(ids) // (BLOCK + 1)
    assert num_blocks % BATCH  # the test needs a partial final batch
    x, _ = rows(dataset(tokenizer, drop_remainder=False))
    assert len(x) == num_blocks
    # More texts than one tokenize batch (256) span chunks seamlessly.
    assert len(TEXTS) > 256


def test_shuffled_blocks_stay_intact(tokenizer):
    ids = stream(tokenizer, TEXTS)
    blocks = ids[: len(ids) // (BLOCK + 1) * (BLOCK + 1)].reshape(-1, BLOCK + 1)
    known = {tuple(b) for b in blocks}
    x, y = rows(dataset(tokenizer, shuffle_buffer=1000, seed=3))
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    whole = np.concatenate([x, y[:, -1:]], axis=1)
    assert all(tuple(b) in known for b in whole)
    # Shuffled: not in stream order.
    assert not np.array_equal(whole, blocks[: len(whole)])


def test_same_seed_same_batches_other_seed_differs(tokenizer):
    def first(seed):
        ds = dataset(tokenizer, shuffle_buffer=1000, seed=seed, repeat=True)
        return rows(ds, batches=5)[0]

    a, b, c = first(7), first(7), first(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _window_starts(tokens, n):
    """{window of n tokens: every position it starts at in the stream}."""
    starts = {}
    for i in range(len(tokens) - n + 1):
        starts.setdefault(tuple(tokens[i:i + n]), []).append(i)
    return starts


def test_each_epoch_is_a_new_cut_of_the_stream(tokenizer):
    tokens = stream(tokenizer, TEXTS)
    per_epoch = (len(tokens) - BLOCK) // (BLOCK + 1)
    ds = dataset(tokenizer, batch_size=per_epoch, shuffle_buffer=10_000, seed=5, repeat=True)
    batches = [np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1) for x, y in ds.take(3)]
    cuts = []
    windows = _window_starts(list(tokens), BLOCK + 1)
    for block in np.concatenate(batches):
        starts = windows.get(tuple(block.tolist()), [])
        assert starts, "a block that is not a window of the token stream"
        cuts.append({i % (BLOCK + 1) for i in starts})
    # Fixed blocks would all fit one cut; here the cut moves between epochs.
    assert not set.intersection(*cuts)
    assert not np.array_equal(batches[0], batches[1])


def test_add_eos_between_documents(tokenizer):
    docs = ["ab", "cde", "f", "ghij"]
    chunks = tokenize_texts(tf.data.Dataset.from_tensor_slices(docs), tokenizer, add_eos=True)
    got = np.concatenate([c.numpy() for c in chunks])
    np.testing.assert_array_equal(got, stream(tokenizer, docs, add_eos=True))
    eos = np.flatnonzero(got == tokenizer.eos_id)
    np.testing.assert_array_equal(eos, np.cumsum([len(d) + 1 for d in docs]) - 1)

    chunks = tokenize_texts(tf.data.Dataset.from_tensor_slices(docs), tokenizer)
    got = np.concatenate([c.numpy() for c in chunks])
    assert tokenizer.eos_id not in got and len(got) == len("".join(docs))


def test_add_eos_in_causal_lm_dataset(tokenizer):
    docs = TEXTS[:40]
    x, y = rows(dataset(tokenizer, docs, add_eos=True, batch_size=1))
    ids = stream(tokenizer, docs, add_eos=True)
    whole = np.concatenate([x, y[:, -1:]], axis=1).reshape(-1)
    np.testing.assert_array_equal(whole, ids[: len(whole)])
    assert (whole == tokenizer.eos_id).sum() >= len(docs) - 1


def test_pack_sequences_drops_short_remainder():
    chunks = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1, 2, 3], [4], [5, 6, 7, 8]]))
    blocks = [b.numpy().tolist() for b in pack_sequences(chunks, 3)]
    assert blocks == [[1, 2, 3], [4, 5, 6]]
