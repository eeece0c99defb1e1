import random

import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfchat.config import TokenizerConfig
from tfchat.data import tokenizer as tokenizer_lib
from tfchat.data.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    train_tokenizer,
)
from tfchat.errors import TfchatError

BPE_VOCAB = 400
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'-éüß"


def training_lines(n=1500, seed=0):
    """Deterministic word salad over ~70 characters, with repeated words
    so BPE has merges to learn; byte fallback needs 400 > 256 + 70 + 9."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 7)))
             for _ in range(300)]
    words += ["the", "and", "king", "queen", "thou", "hath"] * 20
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "\n"
            for _ in range(n)]


SAMPLES = [
    "the king and queen\n",
    "  leading and trailing spaces  \n\n\nblank lines\n",
    "tabs\tand\r\nwindows lines",
    "unicode: naïve café, straße, 字, 🙂, Ω≈ç√",
    "literal specials <pad><unk><bos><eos> stay text",
    "",
]


@pytest.fixture(scope="module")
def bpe():
    return SentencePieceTokenizer.train(training_lines(), BPE_VOCAB)


@pytest.fixture(scope="module")
def char():
    return CharTokenizer.train(["".join(training_lines())] + SAMPLES)


@pytest.fixture(params=["char", "bpe"])
def tokenizer(request, char, bpe):
    return {"char": char, "bpe": bpe}[request.param]


def round_trip(tokenizer, texts):
    ids = tokenizer.tokenize(tf.constant(texts))
    return [t.decode("utf-8") for t in tokenizer.detokenize(ids).numpy()], ids


def test_round_trip(tokenizer):
    decoded, ids = round_trip(tokenizer, SAMPLES)
    assert decoded == SAMPLES
    assert ids.dtype == tf.int32
    assert ids.shape.rank == 2
    assert int(tf.reduce_max(ids.flat_values)) < tokenizer.vocabulary_size


def test_bpe_vocabulary_and_compression(bpe):
    assert bpe.vocabulary_size == BPE_VOCAB
    # Merges were learned: frequent words take few tokens, and text like the
    # training text takes fewer tokens than it has characters.
    frequent = "the king and the queen hath thou"
    assert bpe.tokenize(tf.constant(frequent)).shape[0] < len(frequent) / 2
    text = "".join(training_lines(50, seed=1))
    assert bpe.tokenize(tf.constant(text)).shape[0] < 0.9 * len(text)


def test_bpe_never_unknown(bpe):
    text = "never seen: 漢字かな ĳ ∰ 🦜 \x00 \x7f"
    ids = bpe.tokenize(tf.constant([text]))
    assert tokenizer_lib.UNK_ID not in ids.flat_values.numpy()
    assert round_trip(bpe, [text])[0] == [text]


def test_char_unknown_characters_map_to_unk(char):
    ids = char.tokenize(tf.constant("a漢b")).numpy().tolist()
    assert ids[1] == tokenizer_lib.UNK_ID
    assert tokenizer_lib.UNK_ID not in (ids[0], ids[2])


@settings(max_examples=40, deadline=None, database=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\u2581"), max_size=40))
def test_bpe_round_trips_any_text(bpe, text):
    assert round_trip(bpe, [text])[0] == [text]


@pytest.mark.xfail(strict=True, reason="SentencePiece reads U+2581 as its space marker")
def test_bpe_round_trips_lower_one_eighth_block(bpe):
    assert round_trip(bpe, ["a\u2581b"])[0] == ["a\u2581b"]


@settings(max_examples=40, deadline=None, database=None)
@given(text=st.text(alphabet=ALPHABET + " \n\t", max_size=60))
def test_char_round_trips_any_text_of_its_alphabet(char, text):
    assert round_trip(char, [text])[0] == [text]


def test_special_token_ids_are_fixed(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    for i, token in enumerate(tokenizer_lib.SPECIAL_TOKENS):
        assert tokenizer.token_id(token) == i


def test_plain_text_never_gives_special_ids(tokenizer):
    ids = tokenizer.tokenize(tf.constant(SAMPLES[:-2] + training_lines(100, seed=2)))
    values = set(ids.flat_values.numpy().tolist())
    assert not values & {0, 1, 2, 3, 4, 5, 6, 7}
    # Written-out control tokens are text, not the control ids.
    literal = tokenizer.tokenize(tf.constant("<pad><bos><eos>")).numpy().tolist()
    assert not set(literal) & {0, 2, 3}


def test_detokenize_hides_pad_bos_eos(tokenizer):
    ids = tokenizer.tokenize(tf.constant(["hat"])).to_list()[0]
    padded = [tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id]
    text = tokenizer.detokenize(tf.ragged.constant([padded], dtype=tf.int32))
    assert text.numpy()[0].decode() == "hat"


def test_bpe_chat_markers_are_single_tokens(bpe):
    ids = bpe.tokenize(tf.constant("<|user|>hi<|end|>")).numpy().tolist()
    assert ids[0] == bpe.token_id("<|user|>")
    assert ids[-1] == bpe.token_id("<|end|>")


def test_chat_markers_in_text_are_their_ids(tokenizer):
    text = "<|system|>be<|end|><|user|>hi <|x|><|end|><|assistant|>"
    ids = tokenizer.tokenize(tf.constant(text)).numpy().tolist()
    markers = [tokenizer.token_id(t) for t in tokenizer_lib.CHAT_MARKERS]
    assert [t for t in ids if t in markers] == [
        tokenizer.token_id(t)
        for t in ("<|system|>", "<|end|>", "<|user|>", "<|end|>", "<|assistant|>")
    ]
    assert ids[:1] == [tokenizer.token_id("<|system|>")]
    known = text.replace(" <|x|>", "")  # "|" is not in the char alphabet
    assert round_trip(tokenizer, [known])[0] == [known]


def test_tokenize_in_tf_function_and_dataset_map(tokenizer):
    texts = ["the king", "café 字\n", "and"]
    expected = tokenizer.tokenize(tf.constant(texts)).to_list()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode_decode(strings):
        ids = tokenizer.tokenize(strings)
        return ids.to_tensor(-1), tokenizer.detokenize(ids)

    padded, decoded = encode_decode(tf.constant(texts))
    assert [[t for t in row if t != -1] for row in padded.numpy().tolist()] == expected
    assert [t.decode() for t in decoded.numpy()] == texts

    ds = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer.tokenize)
    assert [x.numpy().tolist() for x in ds] == expected
    ds = ds.map(tokenizer.detokenize)
    assert [x.numpy().decode() for x in ds] == texts


def test_bpe_survives_clearing_the_eager_kernel_cache(bpe):
    """`tf.random.set_seed` (which `keras.utils.set_random_seed`, and so every
    `tfchat.job.train`, calls) clears TensorFlow's eager kernel cache. The
    SentencePiece model is a resource owned by the kernel that created it, so
    a tokenizer built before the reseed used to fail afterwards with
    "Resource localhost/_0_SentencepieceOp/... does not exist"."""
    texts = ["the king and queen\n", "café 字"]
    ids = bpe.tokenize(tf.constant(texts)).to_list()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(strings):
        return bpe.tokenize(strings).to_tensor(-1)

    encode(tf.constant(texts))  # traced (and its kernels built) before
    again = SentencePieceTokenizer(bpe.proto)  # the same model, loaded twice
    tf.random.set_seed(None)  # clears the kernel cache; leaves no global seed
    assert bpe.tokenize(tf.constant(texts)).to_list() == ids
    assert round_trip(bpe, texts)[0] == texts
    assert bpe.vocabulary_size == int(bpe._sp.vocab_size())
    assert [[t for t in row if t != -1] for row in encode(tf.constant(texts)).numpy().tolist()] == ids
    assert again.tokenize(tf.constant(texts)).to_list() == ids
    # A tokenizer loaded after the reseed gives the same ids too.
    assert SentencePieceTokenizer(bpe.proto).tokenize(tf.constant(texts)).to_list() == ids


def test_save_and_load(tokenizer, tmp_path):
    tokenizer.save(str(tmp_path / "tok"))
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert type(loaded) is type(tokenizer)
    assert loaded.vocabulary_size == tokenizer.vocabulary_size
    texts = SAMPLES + training_lines(20, seed=3)
    before = tokenizer.tokenize(tf.constant(texts)).to_list()
    assert loaded.tokenize(tf.constant(texts)).to_list() == before
    assert round_trip(loaded, texts)[0] == texts


def test_train_tokenizer_from_config():
    lines = training_lines(300)
    char = train_tokenizer(TokenizerConfig(kind="char"), iter(lines))
    assert char.vocabulary_size == len(tokenizer_lib.SPECIAL_TOKENS) + len(set("".join(lines)))
    bpe = train_tokenizer(TokenizerConfig(kind="bpe", vocab_size=350), iter(lines))
    assert isinstance(bpe, SentencePieceTokenizer) and bpe.vocabulary_size == 350


def test_tokenizer_errors(tmp_path):
    with pytest.raises(TfchatError, match="empty"):
        CharTokenizer.train(["", ""])
    with pytest.raises(TfchatError, match="SentencePiece"):
        # Too small for the byte-fallback pieces plus the characters.
        SentencePieceTokenizer.train(training_lines(100), 100)
    with pytest.raises(TfchatError, match="No tokenizer"):
        load_tokenizer(str(tmp_path))
