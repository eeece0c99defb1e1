"""Predict the pieces behind [MASK] markers with a masked-LM run: `FillMask`."""

import numpy as np
import tensorflow as tf

from tfchat.data.tokenizer import MASK_TOKEN
from tfchat.errors import TfchatError

MASK = MASK_TOKEN


class FillMask:
    """Predicts the pieces behind [MASK] markers with a `MaskedLM`.

    The text around each marker is tokenized as in training, and each marker
    becomes one [MASK] token, so a masked word is predicted as one piece.

    Example:
    ```python
    fill = FillMask(run.model, run.tokenizer)
    fill.predict(["to be or not to [MASK] ."], top_k=3)
    # [[[("be", 0.91), ("do", 0.02), ("go", 0.01)]]]
    ```
    """

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.block_size = model.backbone.block_size
        self._logits = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    @classmethod
    def for_run(cls, run):
        """A `FillMask` of a loaded run (`tfchat.run.load_run`); raises
        `TfchatError` unless its objective fills masks (mlm)."""
        if not run.objective.fills_masks:
            raise TfchatError(
                f"{run.path} is a {run.config.objective} run; fill-mask needs an mlm run."
            )
        return cls(run.model, run.tokenizer)

    @property
    def candidates(self):
        """How many pieces can fill a [MASK]: the vocabulary without its
        special tokens (the most `predict`'s `top_k` gives)."""
        return self.tokenizer.vocabulary_size - self.tokenizer.num_special_tokens

    def encode(self, text):
        """One text -> (token ids with [CLS]/[SEP], positions of its masks)."""
        pieces = text.split(MASK)
        if len(pieces) < 2:
            raise TfchatError(f"No {MASK} in the text {text!r}.")
        tokenized = self.tokenizer.tokenize(tf.constant(pieces)).to_list()
        ids, positions = [self.tokenizer.cls_id], []
        for i, piece_ids in enumerate(tokenized):
            if i:
                positions.append(len(ids))
                ids.append(self.tokenizer.mask_id)
            ids.extend(piece_ids)
        ids.append(self.tokenizer.sep_id)
        if len(ids) > self.block_size:
            raise TfchatError(
                f"The text {text!r} is {len(ids)} tokens with [CLS] and [SEP]; the "
                f"model reads at most {self.block_size}."
            )
        return ids, positions

    def predict(self, texts, top_k=5):
        """For each text, for each [MASK]: [(piece, probability), ...] best
        first."""
        encoded = [self.encode(text) for text in texts]
        slots = max(len(positions) for _, positions in encoded)
        token_ids = np.zeros((len(texts), self.block_size), np.int32)
        mask_positions = np.zeros((len(texts), slots), np.int32)
        for row, (ids, positions) in enumerate(encoded):
            token_ids[row, : len(ids)] = ids
            mask_positions[row, : len(positions)] = positions
        logits = self._logits({
            "token_ids": tf.constant(token_ids),
            "padding_mask": tf.constant(token_ids != self.tokenizer.pad_id),
            "mask_positions": tf.constant(mask_positions),
        })
        # Special tokens are never the answer.
        special = np.arange(logits.shape[-1]) < self.tokenizer.num_special_tokens
        logits = tf.where(special, -np.inf, logits)
        probabilities, candidates = tf.math.top_k(tf.nn.softmax(logits, axis=-1), k=top_k)
        probabilities, candidates = probabilities.numpy(), candidates.numpy()
        vocabulary = self.tokenizer.vocabulary
        return [
            [
                [(vocabulary[c], float(p)) for c, p in zip(candidates[row, slot], probabilities[row, slot])]
                for slot in range(len(positions))
            ]
            for row, (_, positions) in enumerate(encoded)
        ]

    def fill(self, text, predictions):
        """`text` with each [MASK] replaced by its best candidate."""
        pieces = text.split(MASK)
        best = [candidates[0][0] for candidates in predictions]
        return pieces[0] + "".join(word + piece for word, piece in zip(best, pieces[1:]))
