"""tf.data pipelines: tokenize -> pack -> shift -> shuffle -> batch -> prefetch.

Text arrives as a dataset of strings (`Corpus.texts`). It is tokenized in the
graph a few hundred pieces at a time, flattened into one running stream of
ids, and cut into blocks of `block_size + 1` ids. Each block becomes a causal
LM example: inputs are its first `block_size` ids, targets the last
`block_size` (the same ids shifted left by one).

Example:
```python
ds = causal_lm_dataset(corpus.texts("train"), tokenizer, block_size=64,
                       batch_size=12, shuffle_buffer=10_000, seed=1337)
x, y = next(iter(ds))   # int32 [12, 64] each; y[:, :-1] == x[:, 1:]
```

Conversations (`chat_dataset`) and documents (`causal_lm_dataset` with
`add_eos` and `packing`) are packed instead: several whole sequences share
a block, placed best-fit decreasing (`best_fit_decreasing`, as TRL's SFT
packing does), each with its own segment id, and the model keeps them
apart (`tfchat.model.layers`: attention within a segment only, positions
restarting at 0 in each). Their batches are
({"token_ids", "segment_ids"}, targets, weights): weights are 0 on padding
(segment 0) and on the target that would cross into the next segment, and
for chat 1 only where the target is a token the assistant writes. Without
packing, each conversation is one row of its own, right-padded.
"""

import math

import numpy as np
import tensorflow as tf

from tfchat.data import augment as augmentation

AUTOTUNE = tf.data.AUTOTUNE
# Strings tokenized per call: big enough to amortise op overhead, small
# enough that a huge corpus never sits in memory.
_TOKENIZE_BATCH = 256


def tokenize_batches(texts, tokenizer, add_eos):
    """Dataset of strings -> dataset of ragged [n, None] int32 ids, n
    strings at a time (see `tokenize_texts` for `add_eos`)."""

    def tokenize(batch):
        if add_eos:
            ids = tokenizer.tokenize_prompts(batch)  # [n, None]
            eos = tf.fill([tf.shape(batch)[0], 1], tf.constant(tokenizer.eos_id, tf.int32))
            return tf.concat([ids, eos], axis=1)
        return tokenizer.tokenize(batch)

    batches = texts.batch(_TOKENIZE_BATCH).map(tokenize, num_parallel_calls=AUTOTUNE)
    return _ignore_tokenizer_cache(batches, tokenizer)


def _ignore_tokenizer_cache(ds, tokenizer):
    if tokenizer.caches_in_graph:
        # keras-hub's BPE memoizes each word's pieces in a hash table, a
        # stateful op that iterator checkpoints refuse by default. The table
        # only caches a pure function of the text, so nothing is lost when a
        # checkpoint leaves it out (a restored iterator yields the same ids).
        options = tf.data.Options()
        options.experimental_external_state_policy = (
            tf.data.experimental.ExternalStatePolicy.IGNORE
        )
        ds = ds.with_options(options)
    return ds


def tokenize_texts(texts, tokenizer, add_eos=False):
    """Dataset of strings -> dataset of 1-D int32 id chunks.

    With `add_eos`, each string is a document and gets `tokenizer.eos_id`
    after it, so packed blocks show the model where documents end (and the
    family's start token before it, for a pretrained tokenizer that has one).
    """
    chunks = tokenize_batches(texts, tokenizer, add_eos).map(lambda ids: ids.flat_values)
    return _ignore_tokenizer_cache(chunks, tokenizer)


def _deterministic_prefetch(ds):
    """Every pipeline's last step: parallel maps keep their order (a seed then
    fixes the batches, and resumed runs see the same ones), and batches are
    prepared while the model trains."""
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(AUTOTUNE)


def pack_sequences(chunks, length):
    """Dataset of 1-D id chunks -> dataset of [length] blocks (the stream's
    remainder shorter than `length` is dropped)."""
    # `rebatch` copies slices of whole chunks; `unbatch().batch()` makes every
    # id its own dataset element, and packed half as fast (0.78M vs 1.45M
    # ids/s on a synthetic stream), CPU that training on the same 2 cores needs.
    return chunks.rebatch(length, drop_remainder=True)


def shift_for_causal_lm(block):
    """[T + 1] ids -> (inputs [T], targets [T]) with targets = inputs shifted."""
    return block[..., :-1], block[..., 1:]


def _epoch_blocks(chunks, block_size, seed, epoch, perturb=None):
    """One epoch of blocks whose boundaries start at a random offset in
    [0, block_size]: later epochs then see new contexts, not copies of the
    first epoch's blocks (nanoGPT samples random windows for the same
    reason). The offset is a function of (seed, epoch): deterministic, and
    the stream's position stays checkpointable. `perturb(chunks, epoch)`
    (augmentation) changes the chunks first, anew each epoch."""
    if perturb is not None:
        chunks = perturb(chunks, epoch)
    offset = tf.random.stateless_uniform(
        [], seed=tf.stack([tf.cast(seed, tf.int64), epoch]), maxval=block_size + 1,
        dtype=tf.int64,
    )

    def drop_leading(remaining, chunk):
        dropped = tf.minimum(remaining, tf.size(chunk, out_type=tf.int64))
        return remaining - dropped, chunk[dropped:]

    return pack_sequences(chunks.scan(offset, drop_leading), block_size + 1)


# --- Packing: several sequences per block, kept apart by segment ids ---

# Sequences packed together at most: best fit over a window of this many
# (each placement scans the window's open blocks, so the cost grows with its
# square). On 1,823 sequences of chatterbot-like lengths (median 24) in
# 193-token blocks, windows of 1,000 needed 281 blocks, as many as packing
# all at once (280 at the very least), and took about 20 ms each.
_PACK_WINDOW = 1000


def best_fit_decreasing(lengths, capacity):
    """Assigns sequences to blocks: longest first, each into the open block
    it fills most tightly (the least room left that still fits it), or a new
    block when none fits. TRL's SFT packing ("bfd") uses the same rule.

    Args:
        lengths: [n] int, each in 1 .. capacity.
        capacity: int. Tokens per block.

    Returns:
        (block [n] int32, the block of each sequence; number of blocks).

    Example:
    ```python
    best_fit_decreasing(tf.constant([5, 3, 4, 2]), 7)   # ([0, 1, 1, 0], 2)
    ```
    """
    lengths = tf.cast(lengths, tf.int32)
    n = tf.size(lengths)
    order = tf.argsort(lengths, direction="DESCENDING", stable=True)
    sorted_lengths = tf.gather(lengths, order)
    no_room = tf.constant(capacity + 1, tf.int32)

    def place(i, room, blocks, assigned):
        length = sorted_lengths[i]
        fits = (tf.range(n) < blocks) & (room >= length)  # [n] open blocks with room
        best = tf.argmin(tf.where(fits, room, no_room), output_type=tf.int32)
        opens = ~tf.reduce_any(fits)
        block = tf.where(opens, blocks, best)
        room = tf.tensor_scatter_nd_sub(room, [[block]], [length])
        return i + 1, room, blocks + tf.cast(opens, tf.int32), assigned.write(i, block)

    _, _, blocks, assigned = tf.while_loop(
        lambda i, *_: i < n, place,
        (0, tf.fill([n], tf.constant(capacity, tf.int32)), 0,
         tf.TensorArray(tf.int32, size=n)),
    )
    block = tf.scatter_nd(order[:, None], assigned.stack(), [n])
    return block, blocks


def pack_segments(ids, weights, capacity, packing=True):
    """Sequences -> blocks of `capacity` tokens with a segment id per token.

    Args:
        ids: ragged [n, None] int32, each row 1 .. capacity long.
        weights: ragged [n, None] float32 like `ids`: each token's weight
            as a target.
        capacity: int. Tokens per block.
        packing: bool. Best-fit decreasing (`best_fit_decreasing`); False
            gives each sequence a block of its own.

    Returns:
        (ids, segment_ids, weights), each [blocks, capacity]: segment ids
        1, 2, ... for the sequences of a block in their input order, 0 for
        padding (ids 0, weight 0); blocks in the input order of their first
        sequence.
    """
    n = ids.nrows(out_type=tf.int32)
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    if packing:
        block, blocks = best_fit_decreasing(lengths, capacity)
        # Blocks in the order their first sequence arrived, not longest
        # first: a shuffle buffer smaller than the window would otherwise
        # see runs of full blocks, then runs of the short ones.
        first = tf.math.unsorted_segment_min(tf.range(n), block, blocks)
        block = tf.gather(tf.argsort(tf.argsort(first)), block)
    else:
        block, blocks = tf.range(n), n
    # Where each sequence starts in its block, and its place among the
    # block's sequences.
    order = tf.argsort(block, stable=True)
    sorted_block = tf.gather(block, order)
    starts = tf.cumsum(tf.gather(lengths, order), exclusive=True)
    first = tf.math.segment_min(tf.range(n), sorted_block)  # [blocks] first sorted index
    offset = starts - tf.gather(tf.gather(starts, first), sorted_block)
    rank = tf.range(n) - tf.gather(first, sorted_block)
    offset = tf.scatter_nd(order[:, None], offset, [n])
    segment = tf.scatter_nd(order[:, None], rank + 1, [n])
    # Scatter every token to (its block, its sequence's offset + its index).
    row = tf.cast(ids.value_rowids(), tf.int32)
    index = tf.range(tf.size(row)) - tf.gather(tf.cast(ids.row_starts(), tf.int32), row)
    where = tf.stack([tf.gather(block, row), tf.gather(offset, row) + index], axis=1)
    shape = tf.stack([blocks, capacity])

    def scatter(values):
        return tf.scatter_nd(where, values, shape)

    return (scatter(tf.cast(ids.flat_values, tf.int32)), scatter(tf.gather(segment, row)),
            scatter(tf.cast(weights.flat_values, tf.float32)))


def split_long(ids, capacity):
    """Ragged [n, None] ids -> ragged pieces of at most `capacity` ids: each
    row cut every `capacity` ids, pieces of one id (no target) dropped."""
    ids = tf.cast(ids, tf.int32)
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    row = tf.cast(ids.value_rowids(), tf.int32)
    index = tf.range(tf.size(row)) - tf.gather(tf.cast(ids.row_starts(), tf.int32), row)
    pieces_per_row = (lengths + capacity - 1) // capacity
    first_piece = tf.cumsum(pieces_per_row, exclusive=True)
    piece = tf.gather(first_piece, row) + index // capacity
    pieces = tf.RaggedTensor.from_value_rowids(
        ids.flat_values, piece, nrows=tf.reduce_sum(pieces_per_row)
    )
    return tf.ragged.boolean_mask(pieces, pieces.row_lengths() > 1)


def shift_packed(ids, segment_ids, weights):
    """[B, T + 1] packed blocks -> ({"token_ids", "segment_ids"} [B, T],
    targets [B, T], weights [B, T]): the causal shift, with weight 0 on a
    target in another segment than its input (no sequence predicts the
    next one's first token)."""
    inputs, targets = shift_for_causal_lm(ids)
    input_segments, target_segments = shift_for_causal_lm(segment_ids)
    same = tf.cast(tf.equal(input_segments, target_segments), tf.float32)
    return ({"token_ids": inputs, "segment_ids": input_segments}, targets,
            weights[..., 1:] * same)


def _packed_batches(pieces, capacity, batch_size, packing, shuffle_buffer, seed,
                    drop_remainder, stand_in=None):
    """Dataset of (ids, weights) 1-D sequences -> shifted packed batches;
    with `stand_in`, masked ids (`-1 - id`, `tfchat.data.augment`) read as
    `stand_in` and are predicted as themselves."""
    blocks = pieces.ragged_batch(_PACK_WINDOW).map(
        lambda ids, weights: pack_segments(ids, weights, capacity, packing),
        num_parallel_calls=AUTOTUNE,
    ).unbatch()
    if shuffle_buffer:
        blocks = blocks.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = blocks.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(shift_packed, num_parallel_calls=AUTOTUNE)
    if stand_in is None:
        return ds

    def unmask(x, targets, weights):
        token_ids, targets = augmentation.split_masked(x["token_ids"], targets, stand_in)
        return {**x, "token_ids": token_ids}, targets, weights

    return ds.map(unmask, num_parallel_calls=AUTOTUNE)


def packed_documents_dataset(texts, tokenizer, block_size, batch_size, shuffle_buffer=0,
                             seed=None, repeat=False, drop_remainder=True, ids=None,
                             augment=None):
    """Documents (each string one, with its start and end tokens) -> packed
    causal-LM batches, as `chat_dataset`'s, every target weighted 1. A
    document longer than a block is cut into pieces of `block_size + 1`
    ids, each a segment of its own; documents are shuffled before packing,
    so each epoch packs them differently. `ids` (1-D id sequences, one per
    document, already tokenized) replaces `texts`. `augment`
    (`tfchat.data.augment.Augment`) perturbs each piece."""
    capacity = block_size + 1
    documents = texts if ids is None else ids
    if shuffle_buffer:
        documents = documents.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        documents = documents.repeat()
    batches = (tokenize_batches(documents, tokenizer, add_eos=True) if ids is None
               else documents.ragged_batch(_TOKENIZE_BATCH))
    pieces = batches.map(lambda ids: split_long(ids, capacity)).unbatch()
    stand_in = None
    if augment is not None and augment.on:
        pieces = augmentation.augment_id_sequences(
            pieces, augment, augmentation.special_ids(tokenizer), seed,
        ).filter(lambda ids: tf.size(ids) > 1)  # a piece deleted down to no target
        stand_in = augmentation.mask_id(tokenizer) if augment.mask else None
    pieces = pieces.map(lambda ids: (ids, tf.ones_like(ids, tf.float32)))
    pieces = _ignore_tokenizer_cache(pieces, tokenizer)
    ds = _packed_batches(pieces, capacity, batch_size, True, shuffle_buffer, seed,
                         drop_remainder, stand_in)
    return _deterministic_prefetch(ds)


def causal_lm_dataset(
    texts,
    tokenizer,
    block_size,
    batch_size,
    add_eos=False,
    shuffle_buffer=0,
    seed=None,
    repeat=False,
    drop_remainder=True,
    packing=False,
    ids=None,
    augment=None,
):
    """The full causal-LM input pipeline; see module docs.

    With `add_eos` (each string a document) and `packing`, documents are
    packed without cross-talk instead (`packed_documents_dataset`).
    `ids`, 1-D id sequences already tokenized (`tfchat.data.prepared`: one
    per document, or runs of text), replaces tokenizing `texts`; the
    batches are the same.

    Training uses `shuffle_buffer > 0` and `repeat=True`: each epoch cuts
    the stream at a new random offset and reshuffles its blocks,
    deterministically for a fixed `seed`. Evaluation uses neither and keeps
    a final partial batch with `drop_remainder=False`.

    `augment` (`tfchat.data.augment.Augment`, training only) perturbs the
    text's tokens before they are cut into blocks, anew each epoch.
    """
    if add_eos and packing:
        return packed_documents_dataset(texts, tokenizer, block_size, batch_size,
                                        shuffle_buffer, seed, repeat, drop_remainder, ids,
                                        augment)
    chunks = tokenize_texts(texts, tokenizer, add_eos) if ids is None else ids
    perturb = None
    if augment is not None and augment.on:
        specials = augmentation.special_ids(tokenizer)

        def perturb(chunks, epoch):
            return augmentation.augment_id_sequences(chunks, augment, specials, seed, epoch)

    if repeat and shuffle_buffer:
        blocks = tf.data.Dataset.counter().flat_map(
            lambda epoch: _epoch_blocks(chunks, block_size, seed or 0, epoch, perturb)
        )
        # Options of a dataset made inside flat_map are dropped; keep the
        # source's (a JSONL corpus lets checkpoints save an iterator over its
        # stateless py_function).
        blocks = blocks.with_options(chunks.options())
        # The stream is endless, so one shuffle buffer mixes it throughout.
        # (A shuffle inside flat_map, seeded per epoch, would be a stateful
        # seed generator that iterator checkpoints cannot save.)
        blocks = blocks.shuffle(shuffle_buffer, seed=seed)
    elif perturb is not None:
        # One endless stream, perturbed as it goes, so no two passes repeat.
        blocks = pack_sequences(perturb(chunks.repeat() if repeat else chunks, 0),
                                block_size + 1)
        if shuffle_buffer:
            blocks = blocks.shuffle(shuffle_buffer, seed=seed)
    else:
        blocks = pack_sequences(chunks, block_size + 1)
        if shuffle_buffer:
            blocks = blocks.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            blocks = blocks.repeat()
    ds = blocks.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(shift_for_causal_lm, num_parallel_calls=AUTOTUNE)
    if perturb is not None and augment.mask:
        stand_in = augmentation.mask_id(tokenizer)
        ds = ds.map(lambda x, y: augmentation.split_masked(x, y, stand_in),
                    num_parallel_calls=AUTOTUNE)
    return _deterministic_prefetch(ds)


def chat_dataset(
    encoded,
    block_size,
    batch_size,
    shuffle_buffer=0,
    seed=None,
    repeat=False,
    drop_remainder=True,
    packing=True,
    augment=None,
    mask_id=None,
):
    """Rendered conversations -> batches of ({"token_ids", "segment_ids"},
    targets, weights).

    Args:
        encoded: list of `tfchat.data.chat_template.Encoded`, each at most
            `block_size + 1` tokens long (`encode_conversations(...,
            max_tokens=block_size + 1)`).
        packing: bool. Several conversations per block, best-fit decreasing
            (see the module docs); False: one per row.
        augment: a `tfchat.data.augment.Augment` perturbing the content of
            its roles' turns (training only), `mask_id` the id a masked
            token reads as (`tfchat.data.augment.mask_id`).

    Yields:
        token_ids and segment_ids int32 [B, block_size], targets int32 [B,
        block_size] (token_ids shifted left by one) and weights float32 [B,
        block_size], each target's weight from the template, 0 on padding
        (<pad>, id 0, segment 0) and between conversations. Packed or not,
        no conversation sees another, as at generation time. Conversations
        are shuffled before packing, so each epoch packs them differently.
    """
    lengths = np.array([len(e.ids) for e in encoded], np.int64)
    if lengths.size and lengths.max() > block_size + 1:
        raise ValueError(
            "Every conversation must fit in block_size + 1 tokens. Received: "
            f"a conversation of {lengths.max()} tokens, block_size={block_size}"
        )
    ids = tf.RaggedTensor.from_row_lengths(
        np.array([t for e in encoded for t in e.ids], np.int32), lengths
    )
    weights = tf.RaggedTensor.from_row_lengths(
        np.array([w for e in encoded for w in e.weights], np.float32), lengths
    )
    columns = (ids, weights)
    perturbing = augment is not None and augment.on
    if perturbing:
        columns += (tf.RaggedTensor.from_row_lengths(
            np.array([r for e in encoded for r in e.roles], np.int32), lengths),)
    # Rows of a ragged tensor slice into dense 1-D tensors.
    rows = tf.data.Dataset.from_tensor_slices(columns).map(
        lambda *row: tuple(tf.ensure_shape(column, [None]) for column in row)
    )
    if shuffle_buffer:
        rows = rows.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        rows = rows.repeat()
    if perturbing:
        rows = augmentation.augment_conversations(rows, augment, seed)
    ds = _packed_batches(rows, block_size + 1, batch_size, packing, shuffle_buffer, seed,
                         drop_remainder, mask_id if perturbing and augment.mask else None)
    return _deterministic_prefetch(ds)


def preference_dataset(
    encoded_pairs,
    block_size,
    batch_size,
    reference_logps=None,
    shuffle_buffer=0,
    seed=None,
    repeat=False,
    drop_remainder=True,
):
    """Encoded preference pairs -> batches of ({"token_ids", "padding_mask"[,
    "reference_logps"]}, targets, weights), a pair per row.

    Args:
        encoded_pairs: list of (chosen, rejected) `Encoded`s, each at most
            `block_size + 1` ids (`tfchat.data.preferences.encode_pairs`).
        reference_logps: float32 [N, 2] or None: the reference model's
            summed log-probabilities of each pair's chosen and rejected
            reply, carried with the pair through the shuffle.

    Yields:
        token_ids int32 [B, 2, block_size] (chosen, then rejected; right-
        padded with id 0), padding_mask bool [B, 2, block_size], targets
        int32 [B, 2, block_size] (token_ids shifted left by one), weights
        float32 [B, 2, block_size] (1 on the reply's assistant tokens), and
        reference_logps float32 [B, 2]. Pairs are not packed: a pair's two
        rows are scored side by side, one forward pass for both.
    """
    sequences = [e for pair in encoded_pairs for e in pair]
    lengths = np.array([len(e.ids) for e in sequences], np.int64)
    if lengths.size and lengths.max() > block_size + 1:
        raise ValueError(
            "Every reply must fit in block_size + 1 tokens. Received: "
            f"{lengths.max()} tokens, block_size={block_size}"
        )

    def ragged(values, dtype):
        rows = tf.RaggedTensor.from_row_lengths(np.array(values, dtype), lengths)
        return tf.RaggedTensor.from_uniform_row_length(rows, 2)  # [N, 2, None]

    columns = {
        "ids": ragged([t for e in sequences for t in e.ids], np.int32),
        "weights": ragged([w for e in sequences for w in e.weights], np.float32),
    }
    if reference_logps is not None:
        columns["reference_logps"] = np.asarray(reference_logps, np.float32).reshape(-1, 2)
    rows = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle_buffer:
        rows = rows.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        rows = rows.repeat()
    capacity = block_size + 1

    def pad(row):
        # [2, None] ragged -> [2, block_size + 1], and which ids are real.
        ids, weights = row["ids"], row["weights"]
        padded = {
            "ids": ids.to_tensor(0, shape=[2, capacity]),
            "weights": weights.to_tensor(0.0, shape=[2, capacity]),
            "real": tf.sequence_mask(ids.row_lengths(), capacity),
        }
        if "reference_logps" in row:
            padded["reference_logps"] = row["reference_logps"]
        return padded

    def shift(batch):
        inputs, targets = shift_for_causal_lm(batch["ids"])
        x = {"token_ids": inputs, "padding_mask": batch["real"][..., :-1]}
        if "reference_logps" in batch:
            x["reference_logps"] = batch["reference_logps"]
        return x, targets, batch["weights"][..., 1:]

    ds = rows.map(pad, num_parallel_calls=AUTOTUNE).batch(batch_size, drop_remainder=drop_remainder)
    return _deterministic_prefetch(ds.map(shift, num_parallel_calls=AUTOTUNE))


# --- Encoder inputs: masked-LM pretraining and text classification ---
#
# The encoder reads `[CLS] tokens [SEP]`, padded to `block_size` with
# <pad> (id 0). A text file is one running stream, cut into full blocks of
# `block_size - 2` tokens; a document corpus (JSONL, dialogues) and a
# labelled example give one sequence each, cut to fit. Masked-LM batches are
# ({"token_ids", "padding_mask", "mask_positions"}, mask_ids, mask_weights),
# the (x, y, sample_weight) that `tfchat.model.tasks.MaskedLM` reads.


def add_cls_and_sep(ids, block_size, tokenizer):
    """Ragged [B, None] ids -> `[CLS] ids [SEP]`, cut to `block_size`
    (the end of ids is dropped, [SEP] kept) and padded with <pad>.

    Returns (token_ids [B, block_size] int32, padding_mask [B,
    block_size] bool). (keras-hub's StartEndPacker does the same, but
    outside tf.function it switches to a separate Python implementation;
    this is one graph path wherever it runs.)
    """
    ids = tf.cast(ids, tf.int32)
    rows = ids.nrows()
    cls = tf.fill([rows, 1], tf.constant(tokenizer.cls_id, tf.int32))
    sep = tf.fill([rows, 1], tf.constant(tokenizer.sep_id, tf.int32))
    sequences = tf.concat([cls, ids[:, : block_size - 2], sep], axis=1)
    token_ids = sequences.to_tensor(
        default_value=tokenizer.pad_id, shape=[None, block_size]
    )
    padding_mask = tf.sequence_mask(sequences.row_lengths(), block_size)
    return token_ids, padding_mask


def count_truncated(texts, tokenizer, max_tokens):
    """How many of a dataset's strings tokenize to more than `max_tokens`
    ids. Returns (truncated, total) Python ints (one pass over the data)."""

    def counts(batch):
        lengths = tokenizer.tokenize(batch).row_lengths()
        return tf.stack([
            tf.reduce_sum(tf.cast(lengths > max_tokens, tf.int64)),
            tf.size(lengths, out_type=tf.int64),
        ])

    total = texts.batch(_TOKENIZE_BATCH).map(counts, num_parallel_calls=AUTOTUNE).reduce(
        tf.zeros([2], tf.int64), lambda a, b: a + b
    )
    return int(total[0]), int(total[1])


def mask_tokens(
    token_ids,
    seed,
    vocabulary_size,
    mask_id,
    num_special_tokens,
    max_predictions,
    mask_rate=0.15,
    mask_token_rate=0.8,
    random_token_rate=0.1,
    is_continuation=None,
):
    """Chooses tokens for the masked-LM to predict and corrupts them as BERT
    does: of the chosen tokens, `mask_token_rate` become [MASK],
    `random_token_rate` a random ordinary token, the rest stay as they are.

    Ids below `num_special_tokens` (padding, [CLS], [SEP], [MASK], ...) are
    never chosen. Each sequence chooses `mask_rate` of its ordinary tokens,
    rounded stochastically so the expected share is exactly `mask_rate` even
    for short sequences, and at most `max_predictions`. With
    `is_continuation` ([V] bool, `WordPieceTokenizer.is_continuation`)
    whole words are chosen: a word's pieces are all chosen, with the same
    replacement, or none are (words are taken while they fit the count, so
    the share is a little below `mask_rate`).

    Written here rather than taken from keras-hub's MaskedLMMaskGenerator
    (tensorflow-text's `mask_language_model` in tf.data), which (a) rounds
    the count up, so 16-token blocks get 18.75% chosen, not 15% (measured),
    (b) draws with stateful random ops, which a checkpointed tf.data iterator
    cannot restore and parallel map calls reorder, and (c) can replace a token
    with a special token. Here every draw is a stateless function of `seed`.

    Args:
        token_ids: [B, L] int ids.
        seed: [2] int, the stateless seed of this batch.
        max_predictions: int P, the number of prediction slots.

    Returns:
        dict of token_ids [B, L] int32 (corrupted), mask_positions [B, P]
        int32 (ascending; 0 in unused slots), mask_ids [B, P] int32 (the
        original ids; 0 in unused slots), mask_weights [B, P] float32 (1 for
        a real prediction).

    Example:
    ```python
    out = mask_tokens(ids, tf.constant([7, 0]), vocabulary_size=1000,
                      mask_id=8, num_special_tokens=9, max_predictions=20)
    ```
    """
    token_ids = tf.cast(token_ids, tf.int32)
    batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    positions = tf.broadcast_to(tf.range(length)[None, :], [batch, length])
    selectable = token_ids >= num_special_tokens

    # The unit of choice: a token, or a word (a piece and the "##" pieces
    # that follow it). `word` numbers each position's unit within its row.
    if is_continuation is None:
        starts = selectable
    else:
        continues = tf.gather(is_continuation, token_ids)
        after_selectable = tf.pad(selectable[:, :-1], [[0, 0], [1, 0]])
        starts = selectable & ~(continues & after_selectable)
    word = tf.maximum(tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1, 0)

    # A random priority per unit, a permutation so no two units tie: sorting
    # by it keeps each unit's tokens together, in position order.
    noise = tf.random.stateless_uniform([batch, length], seeds[0])
    priority = tf.argsort(tf.argsort(noise, axis=1), axis=1)
    key = tf.where(selectable, tf.gather(priority, word, batch_dims=1), length)
    order = tf.argsort(key, axis=1, stable=True)  # [B, L] positions, best first
    rank = tf.argsort(order, axis=1)  # [B, L] each position's place in order

    # Each unit's length and each token's offset in its unit, to choose
    # whole units: a token is chosen when its unit ends within the count.
    flat_unit = tf.reshape(word + tf.range(batch)[:, None] * length, [-1])
    segments = batch * length
    unit_length = tf.math.unsorted_segment_sum(
        tf.reshape(tf.cast(selectable, tf.int32), [-1]), flat_unit, segments
    )
    unit_start = tf.math.unsorted_segment_min(
        tf.reshape(tf.where(selectable, positions, length), [-1]), flat_unit, segments
    )
    token_length = tf.reshape(tf.gather(unit_length, flat_unit), [batch, length])
    offset = positions - tf.reshape(tf.gather(unit_start, flat_unit), [batch, length])

    count = tf.reduce_sum(tf.cast(selectable, tf.float32), axis=1)
    rounding = tf.random.stateless_uniform([batch], seeds[1])
    target = tf.floor(count * mask_rate + rounding)
    target = tf.cast(tf.minimum(target, float(max_predictions)), tf.int32)[:, None]
    chosen = selectable & (rank - offset + token_length <= target)

    # The chosen positions, ascending, in P slots.
    slot_key = tf.sort(tf.where(chosen, positions, length + positions), axis=1)
    slot_key = tf.pad(slot_key, [[0, 0], [0, tf.maximum(max_predictions - length, 0)]],
                      constant_values=2 * length)[:, :max_predictions]
    in_use = slot_key < length
    mask_positions = tf.where(in_use, slot_key, 0)
    mask_ids = tf.where(in_use, tf.gather(token_ids, mask_positions, batch_dims=1), 0)

    # One replacement draw per unit, so a whole word is treated alike.
    choice = tf.gather(tf.random.stateless_uniform([batch, length], seeds[2]), word, batch_dims=1)
    random_ids = tf.random.stateless_uniform(
        [batch, length], seeds[3], minval=num_special_tokens,
        maxval=vocabulary_size, dtype=tf.int32,
    )
    to_mask = chosen & (choice < mask_token_rate)
    to_random = chosen & ~to_mask & (choice < mask_token_rate + random_token_rate)
    corrupted = tf.where(to_mask, mask_id, tf.where(to_random, random_ids, token_ids))
    return {
        "token_ids": corrupted,
        "mask_positions": mask_positions,
        "mask_ids": mask_ids,
        "mask_weights": tf.cast(in_use, tf.float32),
    }


def default_max_predictions(mask_rate, block_size):
    """Prediction slots that a sequence never overflows: ceil(rate * L)."""
    return max(1, math.ceil(mask_rate * block_size - 1e-9))


def masked_lm_dataset(
    texts,
    tokenizer,
    block_size,
    batch_size,
    documents=False,
    mask_rate=0.15,
    mask_token_rate=0.8,
    random_token_rate=0.1,
    max_predictions=0,
    whole_word=False,
    shuffle_buffer=0,
    seed=None,
    repeat=False,
    drop_remainder=True,
):
    """The masked-LM input pipeline (see the section comment above).

    With `documents`, each string is one sequence (cut to fit); otherwise the
    strings are one stream cut into full blocks. Masks are drawn fresh for
    every batch by `mask_tokens`, from a seed made of `seed` and the batch's
    index, so the same `seed` gives the same batches, a resumed iterator
    continues the same sequence of masks, and a validation split is masked
    the same way at every evaluation.

    Example:
    ```python
    ds = masked_lm_dataset(corpus.texts("train"), tokenizer, 64, 16,
                           shuffle_buffer=10_000, seed=1, repeat=True)
    x, y, w = next(iter(ds))  # x["token_ids"] [16, 64]; y, w [16, 10]
    ```
    """
    max_predictions = max_predictions or default_max_predictions(mask_rate, block_size)
    if documents:
        sequences = texts
    else:
        sequences = pack_sequences(tokenize_texts(texts, tokenizer), block_size - 2)
    if shuffle_buffer:
        sequences = sequences.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        sequences = sequences.repeat()
    ds = sequences.batch(batch_size, drop_remainder=drop_remainder)

    def add_special_tokens(batch):
        ids = tokenizer.tokenize(batch) if documents else tf.RaggedTensor.from_tensor(batch)
        return add_cls_and_sep(ids, block_size, tokenizer)

    def mask(index, token_ids, padding_mask):
        masked = mask_tokens(
            token_ids,
            tf.stack([tf.constant(seed or 0, tf.int64), index]),
            vocabulary_size=tokenizer.vocabulary_size,
            mask_id=tokenizer.mask_id,
            num_special_tokens=tokenizer.num_special_tokens,
            max_predictions=max_predictions,
            mask_rate=mask_rate,
            mask_token_rate=mask_token_rate,
            random_token_rate=random_token_rate,
            is_continuation=tokenizer.is_continuation if whole_word else None,
        )
        x = {
            "token_ids": masked["token_ids"],
            "padding_mask": padding_mask,
            "mask_positions": masked["mask_positions"],
        }
        return x, masked["mask_ids"], masked["mask_weights"]

    ds = ds.map(add_special_tokens, num_parallel_calls=AUTOTUNE).enumerate()
    ds = ds.map(lambda i, batch: mask(i, *batch), num_parallel_calls=AUTOTUNE)
    return _deterministic_prefetch(ds)


def classification_dataset(
    texts,
    labels,
    tokenizer,
    block_size,
    batch_size,
    shuffle_buffer=0,
    seed=None,
    repeat=False,
    drop_remainder=False,
):
    """Labelled texts -> ({"token_ids", "padding_mask"}, labels [B] int32).

    `texts` is a list of str and `labels` a list of class ids. Each text is
    one `[CLS] text [SEP]` sequence, cut to `block_size`.
    """
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(texts, tf.string), tf.constant(labels, tf.int32))
    )
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def encode(batch_texts, batch_labels):
        token_ids, padding_mask = add_cls_and_sep(
            tokenizer.tokenize(batch_texts), block_size, tokenizer
        )
        return {"token_ids": token_ids, "padding_mask": padding_mask}, batch_labels

    ds = ds.map(encode, num_parallel_calls=AUTOTUNE)
    return _deterministic_prefetch(ds)
