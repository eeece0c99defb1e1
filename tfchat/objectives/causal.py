"""`objective: causal`: next-token language modelling on plain text (a file,
a folder, a glob, JSONL documents, chatterbot transcripts)."""

import tensorflow as tf

from tfchat.data import augment
from tfchat.data.cleaned import reading_config
from tfchat.data.sharding import WHOLE
from tfchat.data.pipeline import causal_lm_dataset, pack_sequences, tokenize_texts
from tfchat.errors import TfchatError
from tfchat.evaluation.language_model import (
    evaluate_continuations, evaluate_loss, held_out_continuations, pieces_as_numpy,
)
from tfchat.inference.generator import Generator
from tfchat.objectives.base import (
    Objective, build_causal_lm, read_corpus, share, split_shares, training_texts,
)
from tfchat.serving.export import add_generate_signature, add_score_signature


def check_config(config):
    return []


def check_data(config, corpus, tokenizer, workers=1):
    """Fails early, and clearly, when a split (or one of `workers` workers'
    share of the training split) cannot fill one block (packed documents:
    when it has fewer than two tokens, one target). Every worker checks
    every share, so all of them stop, or none does."""
    block_size = config.model.block_size
    packed = corpus.is_documents and config.data.packing
    for split, shard, which in split_shares(corpus.path, workers):
        texts, tokens = _inputs(corpus, split, shard)
        if tokens is None:
            tokens = tokenize_texts(texts, tokenizer, corpus.is_documents)
        if packed:
            if not any(True for _ in tokens.filter(lambda ids: tf.size(ids) > 1).take(1)):
                raise TfchatError(f"{which} has fewer than two tokens: nothing to predict.")
        elif not any(True for _ in pack_sequences(tokens, block_size + 1).take(1)):
            raise TfchatError(
                f"{which} has fewer than model.block_size + 1 = {block_size + 1} tokens. "
                "Lower model.block_size or add text."
            )


def datasets(config, corpus, tokenizer, verbose=0, batch_size=None, splits=("train", "val"),
             shard=WHOLE):
    """{split: causal-LM batches}; the training split only `shard`'s part
    of it, in `shard`'s part of each batch (`tfchat.data.sharding`)."""
    m, t = config.model, config.train
    result = {}
    for split in splits:
        texts, ids = _inputs(corpus, split, share(split, shard))
        result[split] = causal_lm_dataset(
            texts, tokenizer, m.block_size,
            share(split, shard).batch_size(batch_size or t.batch_size),
            add_eos=corpus.is_documents,
            shuffle_buffer=t.shuffle_buffer if split == "train" else 0,
            seed=t.seed, repeat=split == "train", drop_remainder=split == "train",
            packing=config.data.packing, ids=ids,
            augment=augment.from_config(config.data) if split == "train" else None,
        )
    return result


def _inputs(corpus, split, shard):
    """(texts, None) of a corpus' split share, or (None, ids) of a folder
    `tfchat.prepare` tokenized."""
    if getattr(corpus, "is_prepared", False):
        return None, corpus.id_sequences(split, shard)
    return corpus.texts(split, shard), None


def sampler(model, tokenizer, config):
    """The logged sample: `train.sample_tokens` tokens after
    `train.sample_prompt`. One generator for the run: its compiled step reads
    the weights as they train, so it is traced once, not at every evaluation."""
    t = config.train
    if not t.sample_tokens:
        return None
    generator = Generator(model.backbone, tokenizer)

    def sample():
        return t.sample_prompt + generator.generate(
            [t.sample_prompt], t.sample_tokens, temperature=0.8, top_k=40, seed=t.seed,
            stop_at_eos=False,
        )[0]

    return sample


def evaluate(run, batch_size=32, max_new_tokens=128, limit=0, examples=3, jit_compile=True,
             **unused):
    """Validation loss, perplexity and token accuracy over the run's
    validation split; and the greedy continuations of the first `limit`
    (0: `DEFAULT_CONTINUATIONS`) held-out documents or passages, prompted
    with their first part and scored against the rest (at most
    `max_new_tokens` and half a block) by BLEU, chrF, METEOR and ROUGE
    (`tfchat.evaluation.language_model.evaluate_continuations`)."""
    corpus = read_corpus(reading_config(run.config)[0])  # the run's cleaned copy, if any
    val = datasets(run.config, corpus, run.tokenizer, batch_size=batch_size, splits=["val"])
    results = evaluate_loss(run.model, val["val"])
    texts, ids = _inputs(corpus, "val", WHOLE)
    if ids is None:
        ids = tokenize_texts(texts, run.tokenizer, corpus.is_documents)
    pairs = held_out_continuations(
        pieces_as_numpy(ids), run.config.model.block_size, max_new_tokens, limit,
        documents=corpus.is_documents, end_id=run.tokenizer.eos_id,
    )
    generator = Generator(run.backbone, run.tokenizer, jit_compile=jit_compile)
    results.update(evaluate_continuations(generator, pairs, batch_size, examples))
    return results


def format_results(results):
    """key: value lines, then the example continuations."""
    lines = [f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}"
             for key, value in results.items() if key not in ("examples", "metrics")]
    for example in results.get("examples", []):
        lines.append(f"\nprompt: {example['prompt']}\nreference: {example['reference']}\n"
                     f"continuation: {example['continuation']}")
    return "\n".join(lines)


def describe(config, corpus, model):
    if not corpus.is_documents:
        return ""
    return ("documents packed several to a block, each seeing only itself"
            if config.data.packing else "documents in one running stream")


def next_steps(config):
    prompt = "User: Hello\\nBot:" if config.data.path.startswith("chatterbot:") else "\\n"
    return ("Sample from it with:\n"
            f'  python -m tfchat.generate --run {config.run_dir} --prompt "{prompt}"')


OBJECTIVE = Objective(
    name="causal",
    init_from=("causal", "chat", "dpo"),
    generates=True,
    check_config=check_config,
    read_data=read_corpus,
    tokenizer_texts=training_texts,
    check_data=check_data,
    datasets=datasets,
    build_model=build_causal_lm,
    sampler=sampler,
    describe=describe,
    evaluate=evaluate,
    format_results=format_results,
    signatures=(add_generate_signature, add_score_signature),
    next_steps=next_steps,
    reads_prepared=True,
    augments=True,
)
