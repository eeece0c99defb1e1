"""Build a vocabulary from the corpus and tokenize inside the TensorFlow graph.

Four tokenizers share one interface (`tokenize`, `detokenize`, `save`, ids
of the special tokens):
  * `CharTokenizer`: one id per character seen in training text; lookups are
    a `tf.lookup.StaticHashTable`, so they export with the model.
  * `SentencePieceTokenizer`: BPE trained with the `sentencepiece` library,
    run in-graph by `tensorflow_text.SentencepieceTokenizer` (an op stock TF
    Serving links in). Byte fallback means no text is ever unknown.
  * `WordPieceTokenizer`: BERT's WordPiece, for the masked-LM encoder. The
    vocabulary is learnt with keras-hub's `compute_word_piece_vocabulary`
    and run in-graph by `tensorflow_text.FastBertTokenizer`. It splits text
    into words and punctuation, so `detokenize` gives the words back joined
    by single spaces, not the exact text.
  * `PretrainedTokenizer`: a pretrained checkpoint's own tokenizer
    (keras-hub's byte-level BPE or SentencePiece layer), with that family's
    start and end tokens; made by `python -m tfchat.convert`, never trained.
tfchat's own three reserve the same special tokens at the same ids, so the rest of tfchat
never asks which one it has. Char and BPE also read the chat markers
(`<|user|>`, ...) in text as their single ids; WordPiece, which serves only
the encoder objectives (mlm, classify), splits them like any punctuation.
WordPiece names the special tokens as BERT does: `[PAD]` is `<pad>` (0),
`[UNK]` is `<unk>` (1), `[CLS]` is `<bos>` (2) and `[SEP]` is `<eos>` (3);
its `[MASK]` follows the chat tokens.

Example:
```python
tokenizer = CharTokenizer.train(["hello world\n"])
ids = tokenizer.tokenize(tf.constant(["hello"]))   # RaggedTensor [1, None]
tokenizer.detokenize(ids)                          # [b"hello"]
```
"""

import functools
import hashlib
import io
import json
import os
import re

import keras
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text
from keras_hub.src.utils.tensor_utils import no_convert_scope
from keras_hub.tokenizers import compute_word_piece_vocabulary
from tensorflow_text.python.ops import sentencepiece_tokenizer as sp_ops

from tfchat.data.chat_template import TEMPLATES
from tfchat.data.files import write_json_atomic
from tfchat.errors import TfchatError
from tfchat.families import stop_tokens as family_stop_tokens
from tfchat.quiet import muted_notices

# Ids 0-3 are fixed; the chat tokens are reserved now so a vocabulary built
# for pretraining can be fine-tuned to chat without changing shape.
SPECIAL_TOKENS = (
    "<pad>",
    "<unk>",
    "<bos>",
    "<eos>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Special tokens that `detokenize` renders as nothing.
_SILENT_IDS = (PAD_ID, BOS_ID, EOS_ID)
# The chat markers, which both tokenizers read from text as single tokens (so
# a rendered chat prompt is a plain string that tokenizes the same in Python
# and inside an exported graph). The control tokens 0-3 never come from text.
CHAT_MARKERS = SPECIAL_TOKENS[4:]
_CONFIG_FILE = "tokenizer.json"


class Tokenizer(tf.Module):
    """Shared interface. `tokenize` maps a string tensor of any rank to int32
    ids with one more, ragged, dimension; `detokenize` reverses it."""

    kind = None
    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    @property
    def vocabulary_size(self):
        raise NotImplementedError

    def token_id(self, token):
        """The id of a special token, e.g. `token_id("<|user|>")`."""
        return SPECIAL_TOKENS.index(token)

    # Whether tokenizing writes a cache in the graph (keras-hub's BPE does;
    # tfchat.data.pipeline then lets iterator checkpoints leave it out).
    caches_in_graph = False

    # What a sequence starts with (a pretrained family's start token; tfchat's
    # own vocabularies start with nothing) and the ids generation stops at.
    start_ids = ()

    @property
    def stop_ids(self):
        return (self.eos_id,)

    @property
    def first_id(self):
        """The id read before a text's first token, so that token is
        predicted too: the start token where there is one, else the end of
        a previous document."""
        return self.start_ids[0] if self.start_ids else self.eos_id

    def tokenize_prompts(self, strings):
        """[B] strings -> ragged [B, None] ids, each row after `start_ids`:
        prompts as the model saw text begin in training."""
        ids = self.tokenize(strings)
        if not self.start_ids:
            return ids
        starts = tf.fill([ids.nrows(), len(self.start_ids)], tf.constant(self.start_ids[0], tf.int32))
        # The ragged concat's int64 row arithmetic logs, once, an error-level
        # notice that oneDNN leaves int64 to Eigen; nothing is wrong.
        with muted_notices():
            return tf.concat([tf.RaggedTensor.from_tensor(starts), ids], axis=1)

    # How conversations are rendered (`tfchat.data.chat_template`); a run
    # sets its own with `use_chat_template`.
    chat_template = TEMPLATES["tfchat"]

    def special_tokens(self):
        """{name: id} of every special token (for export metadata)."""
        return {name: self.token_id(name) for name in SPECIAL_TOKENS}

    def tokenize_pieces(self, pieces):
        """[[id, ...], ...]: each of a chat template's fixed pieces (a list
        of strings) tokenized, eagerly."""
        return self.tokenize(tf.constant(list(pieces), tf.string)).to_list()

    def save(self, directory):
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, characters, name="char_tokenizer"):
        super().__init__(name=name)
        self.characters = list(characters)
        pieces = list(SPECIAL_TOKENS) + self.characters
        self.pieces = pieces
        keys = list(self.characters)
        ids = list(range(len(SPECIAL_TOKENS), len(pieces)))
        # Each chat marker is first replaced by one private-use character
        # that the table maps to the marker's id (a single lookup, no ragged
        # surgery); BPE gets the same from SentencePiece's user symbols.
        for marker in CHAT_MARKERS:
            stand_in = _marker_stand_in(marker)
            if stand_in not in keys:
                keys.append(stand_in)
                ids.append(SPECIAL_TOKENS.index(marker))
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, tf.string), tf.constant(ids, tf.int32)
            ),
            default_value=UNK_ID,
        )
        shown = [
            "" if i in _SILENT_IDS else piece for i, piece in enumerate(pieces)
        ]
        self._id_to_text = tf.constant(shown, tf.string)

    @classmethod
    def train(cls, texts):
        """Builds the vocabulary from an iterable of strings (streamed)."""
        seen = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise TfchatError("Cannot build a vocabulary from an empty corpus.")
        return cls(sorted(seen))

    @property
    def vocabulary_size(self):
        return len(self.pieces)

    def tokenize(self, strings):
        strings = tf.convert_to_tensor(strings, tf.string)
        for marker in CHAT_MARKERS:
            strings = tf.strings.regex_replace(
                strings, re.escape(marker), _marker_stand_in(marker)
            )
        chars = tf.strings.unicode_split(strings, "UTF-8")
        return tf.ragged.map_flat_values(self._table.lookup, chars)

    def detokenize(self, ids):
        pieces = tf.ragged.map_flat_values(tf.gather, self._id_to_text, ids)
        return tf.strings.reduce_join(pieces, axis=-1)

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        write_json_atomic(
            os.path.join(directory, _CONFIG_FILE),
            {"kind": self.kind, "characters": self.characters},
            indent=None,  # the bytes tfchat has always written (init_from compares them)
        )


def _marker_stand_in(marker):
    """A character from Unicode's Supplementary Private Use Area-A, one per
    chat marker, that no real text uses."""
    return chr(0xF0000 + SPECIAL_TOKENS.index(marker))


class SentencePieceTokenizer(Tokenizer):
    kind = "bpe"
    _MODEL_FILE = "sentencepiece.model"

    def __init__(self, proto, name="sentencepiece_tokenizer"):
        super().__init__(name=name)
        self.proto = proto
        # Creating a model resource logs SentencePiece's "precompiled_charsmap
        # is empty" (from tensorflow-text's own copy, which no setting
        # reaches); the commands drop that line (`tfchat.quiet`).
        with muted_notices():
            self._sp = tf_text.SentencepieceTokenizer(model=proto, out_type=tf.int32)
            # See `_shared_sentencepiece_resource`: the model resource tf_text
            # made dies with TensorFlow's eager kernel cache; use a shared one.
            self._sp._model_resource = _shared_sentencepiece_resource(proto)
        self._size = int(self._sp.vocab_size())

    @classmethod
    def train(cls, texts, vocab_size, symbols=()):
        """Trains BPE on an iterable of strings with the sentencepiece library;
        `symbols` are more strings kept as single pieces (the data-hygiene
        stage's placeholders, <EMAIL>, ...)."""
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=writer,
                model_type="bpe",
                vocab_size=vocab_size,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                pad_piece=SPECIAL_TOKENS[PAD_ID],
                unk_piece=SPECIAL_TOKENS[UNK_ID],
                bos_piece=SPECIAL_TOKENS[BOS_ID],
                eos_piece=SPECIAL_TOKENS[EOS_ID],
                user_defined_symbols=list(SPECIAL_TOKENS[4:]) + ["\n"] + list(symbols),
                # Keep text exactly as written, so detokenize(tokenize(x)) == x.
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                byte_fallback=True,
                character_coverage=1.0,
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                max_sentence_length=1 << 16,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise TfchatError(f"SentencePiece training failed: {e}") from None
        return cls(writer.getvalue())

    @property
    def vocabulary_size(self):
        return self._size

    def tokenize(self, strings):
        return self._sp.tokenize(tf.convert_to_tensor(strings, tf.string))

    def detokenize(self, ids):
        return self._sp.detokenize(ids)

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, self._MODEL_FILE), "wb") as f:
            f.write(self.proto)
        write_json_atomic(
            os.path.join(directory, _CONFIG_FILE),
            {"kind": self.kind, "model_file": self._MODEL_FILE},
            indent=None,  # the bytes tfchat has always written (init_from compares them)
        )


def _tokenize_as_vector(tokenize_vector, strings):
    """Tokenizes a string tensor of any rank with a tokenizer that takes a
    vector [N] -> ragged [N, None]: the result has the input's shape plus a
    ragged last dimension."""
    strings = tf.convert_to_tensor(strings, tf.string)
    ids = tokenize_vector(tf.reshape(strings, [-1]))
    if strings.shape.rank == 0:
        return ids[0]
    for axis in reversed(range(1, strings.shape.rank)):
        ids = tf.RaggedTensor.from_uniform_row_length(ids, tf.shape(strings, tf.int64)[axis])
    return ids


def _shared_sentencepiece_resource(proto):
    """The SentencePiece model resource for `proto`, created under a
    `shared_name` that is a digest of the proto.

    `tensorflow_text.SentencepieceTokenizer` creates its model with a
    `SentencepieceOp` that has no `shared_name`, so the resource is private
    to that op's kernel (TODO b/318839908 in tensorflow-text) and is deleted
    when the kernel is. In eager mode the kernel lives in the context's
    kernel cache, which `tf.random.set_seed` (so `keras.utils.set_random_seed`,
    so every `tfchat.job.train`) clears: a tokenizer made before a training
    in the same process then failed with "Resource localhost/_0_SentencepieceOp
    /... does not exist". A shared resource belongs to the resource manager
    instead (it lives as long as the process, once per distinct proto), and
    every kernel that creates it again finds the same one. The op, with its
    `shared_name`, is still what an exported SavedModel runs, so the model
    stays in-graph."""
    shared_name = "tfchat_sentencepiece_" + hashlib.sha256(proto).hexdigest()
    return _shared_resource_class()(proto, shared_name)


@functools.cache
def _shared_resource_class():
    # Built on first use: it subclasses a private tensorflow-text class
    # (pinned by setup.py's range; tests/test_tokenizer.py would catch a change).
    class SharedSentencepieceModelResource(sp_ops._SentencepieceModelResource):
        def __init__(self, model, shared_name):
            self._shared_name = shared_name
            super().__init__(model, name=None)

        def _create_resource(self):
            with tf.name_scope("SentenceTokenizerInitializer"):
                return sp_ops.gen_sentencepiece_tokenizer.sentencepiece_op(
                    model=self._model, shared_name=self._shared_name
                )

    return SharedSentencepieceModelResource


# The marker a fill-mask text holds where a word is to be predicted, and the
# WordPiece token it becomes. Text is split on it before tokenizing, so it is
# matched exactly (case included), whatever the tokenizer lowercases.
MASK_TOKEN = "[MASK]"

# WordPiece names for ids 0-3, then the chat tokens at the same ids as in the
# other tokenizers, then [MASK]: every id below `num_special_tokens` is a
# control token that plain text never produces.
WORDPIECE_SPECIAL_TOKENS = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", *SPECIAL_TOKENS[4:], MASK_TOKEN,
)
# `token_id` accepts either name for ids 0-3.
_WORDPIECE_ALIASES = dict(zip(WORDPIECE_SPECIAL_TOKENS[:4], SPECIAL_TOKENS[:4]))


class WordPieceTokenizer(Tokenizer):
    """BERT WordPiece, in-graph (see module docs).

    Args:
        vocabulary: list of str. Pieces in id order; must start with
            `WORDPIECE_SPECIAL_TOKENS`. Continuation pieces start with "##".
        lowercase: bool. Lowercase and strip accents first (BERT uncased);
            must match how the vocabulary was learnt.

    Example:
    ```python
    tokenizer = WordPieceTokenizer.train(["To be, or not to be."] * 20, 100)
    ids = tokenizer.tokenize(tf.constant(["to be"]))   # RaggedTensor [1, None]
    tokenizer.detokenize(ids)                          # [b"to be"]
    ```
    """

    kind = "wordpiece"
    _VOCAB_FILE = "wordpiece_vocab.txt"

    def __init__(self, vocabulary, lowercase=True, name="wordpiece_tokenizer"):
        super().__init__(name=name)
        vocabulary = list(vocabulary)
        if tuple(vocabulary[: len(WORDPIECE_SPECIAL_TOKENS)]) != WORDPIECE_SPECIAL_TOKENS:
            raise TfchatError(
                "A WordPiece vocabulary must start with "
                f"{', '.join(WORDPIECE_SPECIAL_TOKENS)}. Received: "
                f"{vocabulary[: len(WORDPIECE_SPECIAL_TOKENS)]}"
            )
        self.vocabulary = vocabulary
        self.lowercase = lowercase
        self.num_special_tokens = len(WORDPIECE_SPECIAL_TOKENS)
        self.cls_id, self.sep_id = BOS_ID, EOS_ID
        self.mask_id = vocabulary.index(MASK_TOKEN)
        self._bert = tf_text.FastBertTokenizer(
            vocab=vocabulary,
            token_out_type=tf.int32,
            unknown_token="[UNK]",
            support_detokenization=True,
            lower_case_nfd_strip_accents=lowercase,
        )
        # [V] bool: whether a piece continues the word before it ("##ing");
        # whole-word masking groups a word's pieces with it.
        self.is_continuation = tf.constant(
            [piece.startswith("##") and len(piece) > 2 for piece in vocabulary]
        )

    @classmethod
    def train(cls, texts, vocab_size, lowercase=True):
        """Learns a vocabulary of at most `vocab_size` pieces (special tokens
        included) from an iterable of strings, streamed through tf.data."""
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(texts), output_signature=tf.TensorSpec([], tf.string)
        ).batch(1024)
        try:
            vocabulary = compute_word_piece_vocabulary(
                dataset,
                vocab_size,
                lowercase=lowercase,
                strip_accents=lowercase,
                reserved_tokens=list(WORDPIECE_SPECIAL_TOKENS),
            )
        except StopIteration:  # the learner's way of saying "no words"
            vocabulary = []
        if len(vocabulary) <= len(WORDPIECE_SPECIAL_TOKENS):
            raise TfchatError("Cannot build a vocabulary from an empty corpus.")
        return cls(vocabulary, lowercase=lowercase)

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def special_tokens(self):
        return {**super().special_tokens(), MASK_TOKEN: self.mask_id}

    def token_id(self, token):
        """The id of a special token, by either name: `token_id("[MASK]")`,
        `token_id("[CLS]")` or `token_id("<bos>")`."""
        if token in _WORDPIECE_ALIASES:
            token = _WORDPIECE_ALIASES[token]
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        if token in WORDPIECE_SPECIAL_TOKENS:
            return WORDPIECE_SPECIAL_TOKENS.index(token)
        raise ValueError(f"Not a special token: {token!r}")

    def tokenize(self, strings):
        # FastBertTokenizer takes a vector of strings only.
        return _tokenize_as_vector(self._bert.tokenize, strings)

    def detokenize(self, ids):
        # Padding, [CLS] and [SEP] render as nothing, as <pad>/<bos>/<eos> do.
        silent = tf.constant(_SILENT_IDS, tf.int32)

        def shown(flat):
            return tf.reduce_all(tf.not_equal(flat[..., None], silent), axis=-1)

        if isinstance(ids, tf.RaggedTensor):
            ids = tf.ragged.boolean_mask(ids, tf.ragged.map_flat_values(shown, ids))
        else:
            ids = tf.convert_to_tensor(ids, tf.int32)
            ids = tf.ragged.boolean_mask(ids, shown(ids))
        return self._bert.detokenize(ids)

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, self._VOCAB_FILE), "w", encoding="utf-8") as f:
            f.write("".join(piece + "\n" for piece in self.vocabulary))
        write_json_atomic(
            os.path.join(directory, _CONFIG_FILE),
            {"kind": self.kind, "vocab_file": self._VOCAB_FILE, "lowercase": self.lowercase},
            indent=None,  # the bytes tfchat has always written (init_from compares them)
        )


class PretrainedTokenizer(Tokenizer):
    """A pretrained checkpoint's own tokenizer: keras-hub's byte-level BPE
    (GPT-2, Llama 3, Qwen2) or SentencePiece (Llama 2) layer, run inside the
    graph, as keras-hub's preprocessors run it in `tf.data`.

    Its special tokens are the family's: `bos_id` is the start token (None
    where the family has none, as Qwen2), `eos_id` the end token, and
    `stop_ids` every end token (Llama 3 also ends a turn with <|eot_id|>).
    Its chat template is `plain` unless the run names the family's own
    (`tfchat.data.chat_template`; `tfchat.convert` picks it from the
    checkpoint).

    Saved as keras-hub saves a tokenizer in a preset (its config and assets)
    in `keras_hub/`, beside tfchat's `tokenizer.json`.

    Example:
    ```python
    tokenizer = PretrainedTokenizer(keras_hub.tokenizers.Tokenizer.from_preset(path))
    tokenizer.tokenize(tf.constant(["Hello"]))        # RaggedTensor [1, None]
    ```
    """

    kind = "pretrained"
    caches_in_graph = True
    chat_template = TEMPLATES["plain"]
    _PRESET_DIR = "keras_hub"

    def __init__(self, hub_tokenizer, name="pretrained_tokenizer"):
        super().__init__(name=name)
        # keras-hub runs a tokenizer eagerly through the Hugging Face
        # `tokenizers` library when it is installed, and in TensorFlow ops
        # inside a graph. tfchat tokenizes in the graph (tf.data, export), so
        # it uses the TensorFlow path everywhere, eager calls included: the
        # ids it trains on are the ids it serves with.
        hub_tokenizer._allow_python_workflow = False
        self.hub_tokenizer = hub_tokenizer
        self.pad_id = int(hub_tokenizer.pad_token_id or 0)
        start = getattr(hub_tokenizer, "start_token_id", None)
        self.bos_id = None if start is None else int(start)
        self.eos_id = int(hub_tokenizer.end_token_id)
        stops = [self.eos_id]
        second = getattr(hub_tokenizer, "end_token2_id", None)  # Llama 3's <|eot_id|>
        if second is not None:
            stops.append(int(second))
        for token in family_stop_tokens(type(hub_tokenizer).__name__):
            token_id = hub_tokenizer.token_to_id(token) if token in self._vocabulary() else None
            if token_id is not None and int(token_id) not in stops:
                stops.append(int(token_id))
        self._stop_ids = tuple(stops)
        self.start_ids = () if self.bos_id is None else (self.bos_id,)
        self._silent = tf.constant(sorted({*self._stop_ids, *self.start_ids}), tf.int32)
        self._size = int(hub_tokenizer.vocabulary_size())

    @property
    def vocabulary_size(self):
        return self._size

    @property
    def stop_ids(self):
        return self._stop_ids

    def token_id(self, token):
        token_id = self.hub_tokenizer.token_to_id(token) if token in self.special_tokens() else None
        if token_id is None:
            raise ValueError(
                f"Not a special token of this pretrained tokenizer: {token!r} "
                f"(it has {', '.join(self.special_tokens())})"
            )
        return token_id

    def special_tokens(self):
        names = getattr(self.hub_tokenizer, "special_tokens", None) or []
        return {name: int(self.hub_tokenizer.token_to_id(name)) for name in names}

    def _vocabulary(self):
        vocabulary = getattr(self.hub_tokenizer, "vocabulary", None)
        if isinstance(vocabulary, dict):
            return vocabulary
        return set(self.hub_tokenizer.get_vocabulary())

    def tokenize_pieces(self, pieces):
        """A piece that holds the tokenizer's special tokens (Mistral's
        reply ends with the text </s>) gets their ids: a SentencePiece
        model does not read its control symbols from text."""
        special = self.special_tokens()
        if not special:
            return super().tokenize_pieces(pieces)
        pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(special, key=len, reverse=True)) + ")")
        result = []
        for piece in pieces:
            parts = [part for part in pattern.split(piece) if part]
            if all(part not in special for part in parts):
                result.append(None)  # tokenized whole, below
                continue
            ids = []
            for part in parts:
                ids += [special[part]] if part in special else super().tokenize_pieces([part])[0]
            result.append(ids)
        whole = [piece for piece, ids in zip(pieces, result) if ids is None]
        whole_ids = iter(super().tokenize_pieces(whole) if whole else [])
        return [next(whole_ids) if ids is None else ids for ids in result]

    def tokenize(self, strings):
        def tokenize_vector(flat):
            with no_convert_scope():  # keep keras-hub from turning ids into lists
                return tf.cast(self.hub_tokenizer.tokenize(flat), tf.int32)

        # keras-hub takes a string or a vector.
        return _tokenize_as_vector(tokenize_vector, strings)

    def detokenize(self, ids):
        # Start and end tokens render as nothing, as tfchat's <bos>/<eos> do.
        def shown(flat):
            return tf.reduce_all(tf.not_equal(flat[..., None], self._silent), axis=-1)

        if isinstance(ids, tf.RaggedTensor):
            ids = tf.ragged.boolean_mask(ids, tf.ragged.map_flat_values(shown, ids))
        else:
            ids = tf.convert_to_tensor(ids, tf.int32)
            ids = tf.ragged.boolean_mask(ids, shown(ids))
        with no_convert_scope():
            return self.hub_tokenizer.detokenize(ids)

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.hub_tokenizer.save_to_preset(os.path.join(directory, self._PRESET_DIR))
        write_json_atomic(
            os.path.join(directory, _CONFIG_FILE),
            {"kind": self.kind, "preset": self._PRESET_DIR},
            indent=None,
        )

    @classmethod
    def load(cls, directory):
        """Reads back what `save` wrote (keras-hub's own tokenizer config and
        assets: a preset's tokenizer, without the rest of the preset)."""
        with open(os.path.join(directory, _CONFIG_FILE), encoding="utf-8") as f:
            preset = os.path.join(directory, json.load(f)["preset"])
        with open(os.path.join(preset, _CONFIG_FILE), encoding="utf-8") as f:
            hub_tokenizer = keras.saving.deserialize_keras_object(json.load(f))
        hub_tokenizer.load_preset_assets(preset)
        return cls(hub_tokenizer)


def train_tokenizer(tokenizer_config, texts, symbols=()):
    """Builds the configured tokenizer from an iterable of training strings;
    a BPE vocabulary keeps each of `symbols` as one piece."""
    if tokenizer_config.kind == "char":
        return CharTokenizer.train(texts)
    if tokenizer_config.kind == "bpe":
        return SentencePieceTokenizer.train(texts, tokenizer_config.vocab_size, symbols)
    if tokenizer_config.kind == "wordpiece":
        return WordPieceTokenizer.train(
            texts, tokenizer_config.vocab_size, tokenizer_config.lowercase
        )
    if tokenizer_config.kind == "pretrained":
        raise TfchatError(
            "tokenizer.kind pretrained comes with a pretrained checkpoint; start from one "
            "with init_from (python -m tfchat.convert --help lists the sources)."
        )
    raise TfchatError(
        f"Unknown tokenizer.kind {tokenizer_config.kind!r}; use char, bpe or wordpiece."
    )


def load_tokenizer(directory):
    """Loads a tokenizer written by `save`."""
    path = os.path.join(directory, _CONFIG_FILE)
    if not os.path.isfile(path):
        raise TfchatError(f"No tokenizer found in {directory}.")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec["kind"] == "char":
        return CharTokenizer(spec["characters"])
    if spec["kind"] == "pretrained":
        return PretrainedTokenizer.load(directory)
    if spec["kind"] == "wordpiece":
        with open(os.path.join(directory, spec["vocab_file"]), encoding="utf-8") as f:
            vocabulary = f.read().split("\n")[:-1]
        return WordPieceTokenizer(vocabulary, lowercase=spec["lowercase"])
    with open(os.path.join(directory, spec["model_file"]), "rb") as f:
        return SentencePieceTokenizer(f.read())
