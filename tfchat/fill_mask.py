"""Fill in [MASK]ed words with a masked-LM run.

    python -m tfchat.fill_mask --run runs/enc "To be or not to [MASK]."
    python -m tfchat.fill_mask --run runs/enc --top-k 10 "a [MASK] b" "c [MASK]"

For each [MASK] in each text it prints the top-k candidate pieces with their
probabilities, then the text with every [MASK] filled by its best candidate.
Only ordinary vocabulary pieces are candidates, never special tokens.
"""

import argparse
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

import tfchat  # noqa: F401  (sets the Keras backend)
import numpy as np
import tensorflow as tf

from tfchat.errors import TfchatError
from tfchat.serving import MASK_TOKEN

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
        self.sequence_length = model.backbone.max_sequence_length
        self._logits = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

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
        if len(ids) > self.sequence_length:
            raise TfchatError(
                f"The text {text!r} is {len(ids)} tokens with [CLS] and [SEP]; the "
                f"model reads at most {self.sequence_length}."
            )
        return ids, positions

    def predict(self, texts, top_k=5):
        """For each text, for each [MASK]: [(piece, probability), ...] best
        first."""
        encoded = [self.encode(text) for text in texts]
        slots = max(len(positions) for _, positions in encoded)
        token_ids = np.zeros((len(texts), self.sequence_length), np.int32)
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.fill_mask",
        description="Fill in [MASK]ed words with a masked-LM run (objective mlm).",
    )
    parser.add_argument("--run", required=True, help="Run folder, e.g. runs/enc.")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help=f"Text with one or more {MASK}.")
    parser.add_argument("--top-k", type=int, default=5, help="Candidates shown per [MASK].")
    parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                        help="Which checkpoint of the run to load.")
    quiet.add_verbose_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from tfchat.run import load_run

    try:
        if args.top_k < 1:
            raise TfchatError(f"--top-k must be at least 1. Received: {args.top_k}")
        run = load_run(args.run, checkpoint=args.checkpoint)
        if run.config.objective != "mlm":
            raise TfchatError(
                f"{args.run} is a {run.config.objective} run; fill-mask needs an mlm run."
            )
        fill = FillMask(run.model, run.tokenizer)
        top_k = min(args.top_k, run.tokenizer.vocabulary_size - run.tokenizer.num_special_tokens)
        predictions = fill.predict(args.texts, top_k)
    except TfchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for text, masks in zip(args.texts, predictions):
        print(text)
        for i, candidates in enumerate(masks, start=1):
            label = f"  {MASK} {i}: " if len(masks) > 1 else f"  {MASK}: "
            print(label + ", ".join(f"{piece} {p:.4f}" for piece, p in candidates))
        print("  -> " + fill.fill(text, masks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
