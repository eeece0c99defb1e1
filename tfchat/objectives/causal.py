"""`objective: causal`: next-token language modelling on plain text (a file,
a folder, a glob, JSONL documents, chatterbot transcripts)."""

import tensorflow as tf

from tfchat.data.pipeline import causal_lm_dataset, pack_sequences, tokenize_texts
from tfchat.errors import TfchatError
from tfchat.evaluation.language_model import evaluate_loss
from tfchat.inference.generator import Generator
from tfchat.objectives.base import Objective, build_causal_lm, read_corpus, training_texts
from tfchat.serving.export import add_generate_signature, add_score_signature


def check_config(config):
    return []


def check_data(config, corpus, tokenizer):
    """Fails early, and clearly, when a split cannot fill one block (packed
    documents: when it has fewer than two tokens, one target)."""
    block_size = config.model.block_size
    packed = corpus.is_documents and config.data.packing
    for split in ("train", "val"):
        tokens = tokenize_texts(corpus.texts(split), tokenizer, corpus.is_documents)
        if packed:
            if not any(True for _ in tokens.filter(lambda ids: tf.size(ids) > 1).take(1)):
                raise TfchatError(f"The {split} split of {corpus.path} has fewer than two "
                                  "tokens: nothing to predict.")
        elif not any(True for _ in pack_sequences(tokens, block_size + 1).take(1)):
            raise TfchatError(
                f"The {split} split of {corpus.path} has fewer than model.block_size + 1 "
                f"= {block_size + 1} tokens. Lower model.block_size or add text."
            )


def datasets(config, corpus, tokenizer, verbose=0, batch_size=None, splits=("train", "val")):
    m, t = config.model, config.train
    return {
        split: causal_lm_dataset(
            corpus.texts(split), tokenizer, m.block_size, batch_size or t.batch_size,
            add_eos=corpus.is_documents,
            shuffle_buffer=t.shuffle_buffer if split == "train" else 0,
            seed=t.seed, repeat=split == "train", drop_remainder=split == "train",
            packing=config.data.packing,
        )
        for split in splits
    }


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


def evaluate(run, batch_size=32, **unused):
    """Validation loss, perplexity and token accuracy over the run's
    validation split."""
    corpus = read_corpus(run.config)
    val = datasets(run.config, corpus, run.tokenizer, batch_size=batch_size, splits=["val"])
    return evaluate_loss(run.model, val["val"])


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
    signatures=(add_generate_signature, add_score_signature),
    next_steps=next_steps,
)
