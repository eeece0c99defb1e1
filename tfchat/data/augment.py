"""Token-level augmentation of the training split, on the fly in tf.data
(`data.augment_mask`, `data.augment_delete`, `data.augment_swap`).

Each training sequence (a document or a stretch of a text stream before it
is cut into blocks, a rendered conversation before packing) is perturbed
afresh every time the pipeline reads it:

  delete  each token is removed with this probability;
  swap    each token trades places with its right neighbour with about
          this probability (swaps never overlap);
  mask    each token is hidden with this probability: the model reads the
          tokenizer's stand-in (`mask_id`) in its place, but the target
          at that place stays the real token, so the model never learns
          to write the stand-in.

Only tokens that are text may change: never a special token (start, end,
a chat template's markers), and in a conversation only the content of the
roles in `data.augment_roles` (user turns unless asked: the replies the
model learns to write, and the system prompt it obeys, stay as written).

Every draw is a stateless function of (train.seed, the sequence's place in
the pipeline's stream), the same `enumerate` position an iterator
checkpoint saves: the same seed gives the same batches, and a resumed run
continues with the very draws the uninterrupted run would have made.

Masked tokens travel through packing as `-1 - id` (negative, so no real
id or padding is mistaken for one) and are split into the stand-in input
and the real target right after the causal shift (`split_masked`).
"""

import dataclasses

import tensorflow as tf

# What a token of a rendered conversation is (`Encoded.roles`).
TEMPLATE, SYSTEM, USER, ASSISTANT = 0, 1, 2, 3
ROLE_CODES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


@dataclasses.dataclass(frozen=True)
class Augment:
    """Per-token probabilities of each transform, and the conversation
    roles whose content may change."""

    mask: float = 0.0
    delete: float = 0.0
    swap: float = 0.0
    roles: tuple = ("user",)

    @property
    def on(self):
        return bool(self.mask or self.delete or self.swap)


def from_config(data):
    """The `Augment` a `DataConfig` describes."""
    return Augment(data.augment_mask, data.augment_delete, data.augment_swap,
                   parse_roles(data.augment_roles))


def parse_roles(spec):
    """"user,assistant" -> ("user", "assistant"); ValueError naming the
    valid roles for any other name."""
    roles = tuple(r.strip() for r in spec.split(",") if r.strip())
    unknown = [r for r in roles if r not in ROLE_CODES]
    if unknown or not roles:
        raise ValueError(f"data.augment_roles must name some of {', '.join(ROLE_CODES)} "
                         f"(comma-separated). Received: {spec!r}")
    return roles


def mask_id(tokenizer):
    """The id a masked token is read as: the tokenizer's [MASK] (WordPiece),
    else its unknown token (tfchat's own vocabularies: byte fallback means
    no text ever maps to <unk>, so it means only "a token is hidden here"),
    else, for a pretrained vocabulary without one, its padding id."""
    if getattr(tokenizer, "mask_id", None) is not None:
        return int(tokenizer.mask_id)
    if tokenizer.kind != "pretrained":
        return int(tokenizer.unk_id)
    unknown = getattr(tokenizer.hub_tokenizer, "unk_token_id", None)
    return int(unknown) if unknown is not None else int(tokenizer.pad_id)


def special_ids(tokenizer):
    """The ids augmentation leaves alone in a text (its special tokens)."""
    ids = {*tokenizer.special_tokens().values(), *tokenizer.start_ids, *tokenizer.stop_ids}
    return sorted(int(i) for i in ids if i is not None)


def augment_sequence(ids, changeable, seed, augment, carried=()):
    """One 1-D sequence perturbed (see the module docs).

    Args:
        ids: int32 [n].
        changeable: bool [n], the tokens that may change.
        seed: int64 [2], the stateless seed of this sequence.
        augment: an `Augment`.
        carried: 1-D tensors like `ids` (weights), deleted and swapped with
            their tokens.

    Returns:
        (ids, carried): masked tokens as `-1 - id`.
    """
    ids = tf.cast(ids, tf.int32)
    carried = list(carried)
    delete_seed, swap_seed, mask_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    if augment.delete:
        drop = changeable & (tf.random.stateless_uniform(tf.shape(ids), delete_seed) < augment.delete)
        ids, changeable = ids[~drop], changeable[~drop]
        carried = [c[~drop] for c in carried]
    if augment.swap:
        both = changeable[:-1] & changeable[1:]
        chosen = both & (tf.random.stateless_uniform(tf.shape(both), swap_seed) < augment.swap)
        # A swap at i is kept only where none was drawn at i - 1: kept swaps
        # never share a token.
        chosen &= ~tf.concat([[False], chosen[:-1]], 0)
        right = tf.cast(tf.concat([chosen, [False]], 0), tf.int32)  # takes its right neighbour
        left = tf.cast(tf.concat([[False], chosen], 0), tf.int32)  # takes its left neighbour
        order = tf.range(tf.size(ids)) + right - left
        ids, changeable = tf.gather(ids, order), tf.gather(changeable, order)
        carried = [tf.gather(c, order) for c in carried]
    if augment.mask:
        hidden = changeable & (tf.random.stateless_uniform(tf.shape(ids), mask_seed) < augment.mask)
        ids = tf.where(hidden, -1 - ids, ids)
    return ids, tuple(carried)


def _sequence_seed(seed, index, salt=0):
    base = tf.stack([tf.cast(seed or 0, tf.int64), tf.cast(salt, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def augment_id_sequences(sequences, augment, specials, seed, salt=0):
    """Dataset of 1-D id sequences -> the same, perturbed (masked tokens
    as `-1 - id`); special ids never change. `salt` (an epoch) makes a
    re-read of the same stream draw anew."""
    specials = tf.constant(specials or [-1], tf.int32)

    def perturb(index, ids):
        ids = tf.cast(ids, tf.int32)
        changeable = tf.reduce_all(ids[:, None] != specials[None, :], axis=1)
        return augment_sequence(ids, changeable, _sequence_seed(seed, index, salt), augment)[0]

    return sequences.enumerate().map(perturb, num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=True)


def augment_conversations(rows, augment, seed):
    """Dataset of (ids, weights, roles) rendered conversations -> (ids,
    weights), the content of `augment.roles`' turns perturbed."""
    allowed = tf.constant([ROLE_CODES[r] for r in augment.roles], tf.int32)

    def perturb(index, row):
        ids, weights, roles = row
        changeable = tf.reduce_any(roles[:, None] == allowed[None, :], axis=1)
        ids, (weights,) = augment_sequence(ids, changeable, _sequence_seed(seed, index),
                                           augment, carried=(weights,))
        return ids, weights

    return rows.enumerate().map(perturb, num_parallel_calls=tf.data.AUTOTUNE,
                                deterministic=True)


def split_masked(inputs, targets, stand_in):
    """Shifted ids carrying masked tokens as `-1 - id` -> (inputs with the
    stand-in id, targets with the real id)."""
    return (tf.where(inputs < 0, tf.constant(stand_in, inputs.dtype), inputs),
            tf.where(targets < 0, -1 - targets, targets))
