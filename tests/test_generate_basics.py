import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tfchat.data.tokenizer import CharTokenizer
from tfchat.inference.generator import Generator, make_sampler
from tfchat.model.gpt import GPT

CONTEXT = 16


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz \n"])


@pytest.fixture(scope="module")
def generator(tokenizer):
    keras.utils.set_random_seed(0)
    gpt = GPT(vocabulary_size=tokenizer.vocabulary_size, num_layers=2, num_heads=2,
              hidden_dim=32, block_size=CONTEXT)
    gpt.build()
    # Larger weights than the init, so greedy choices depend on the context.
    rng = np.random.default_rng(0)
    gpt.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32")
                     for w in gpt.get_weights()])
    return Generator(gpt, tokenizer)


def greedy_reference(gpt, prompt, steps):
    """Greedy decoding with a full forward pass per token, no cache."""
    ids = list(prompt)
    for _ in range(steps):
        logits = gpt(np.array([ids[-CONTEXT:]], "int32"))[0, -1].numpy()
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def test_greedy_batch_matches_uncached_decoding(generator, tokenizer):
    prompts = [[5, 9, 12], [20, 21, 22, 23, 24, 25]]  # ragged: right-padded
    new = generator.generate_ids(prompts, 8, make_sampler(temperature=0), stop_at_eos=False)
    assert [len(n) for n in new] == [8, 8]
    for prompt, got in zip(prompts, new):
        assert got == greedy_reference(generator.backbone, prompt, 8)


def test_generation_past_the_context_keeps_half_a_window(generator):
    prompt, steps = [5, 9, 12, 14], 30
    new = generator.generate_ids([prompt], steps, make_sampler(temperature=0), stop_at_eos=False)[0]
    assert len(new) == steps
    # Reference: the first window fills the context; each later one starts
    # from the last CONTEXT // 2 tokens.
    row, expected = list(prompt), []
    while len(expected) < steps:
        window = row[-(CONTEXT // 2 if expected else CONTEXT - 1):]
        count = min(CONTEXT - len(window), steps - len(expected))
        ids = list(window)
        for _ in range(count):
            logits = generator.backbone(np.array([ids], "int32"))[0, -1].numpy()
            ids.append(int(logits.argmax()))
        expected += ids[len(window):]
        row += ids[len(window):]
    assert new == expected


def test_generate_strings_and_seeded_sampling(generator, tokenizer):
    texts = generator.generate(["abc", "zz"], 6, temperature=0, stop_at_eos=False)
    ids = generator.generate_ids(
        tokenizer.tokenize(tf.constant(["abc", "zz"])).to_list(), 6,
        make_sampler(temperature=0), stop_at_eos=False,
    )
    expected = tokenizer.detokenize(tf.ragged.constant(ids, dtype=tf.int32)).numpy()
    assert texts == [t.decode() for t in expected]

    # top_k above the vocabulary is clamped; a seed makes sampling repeatable.
    first = generator.generate(["abc"], 10, temperature=1.0, top_k=1000, seed=3)
    assert generator.generate(["abc"], 10, temperature=1.0, top_k=1000, seed=3) == first


@pytest.mark.parametrize(
    "kwargs,cls",
    [
        ({"temperature": 0}, keras_hub.samplers.GreedySampler),
        ({"temperature": 0.8, "top_p": 0.9}, keras_hub.samplers.TopPSampler),
        ({"temperature": 0.8, "top_k": 5}, keras_hub.samplers.TopKSampler),
        ({"temperature": 0.8}, keras_hub.samplers.RandomSampler),
    ],
)
def test_make_sampler(kwargs, cls):
    assert type(make_sampler(**kwargs)) is cls
