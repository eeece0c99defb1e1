"""`objective: mlm`: masked-LM pretraining of a BERT encoder. Text files are
cut into `[CLS] ... [SEP]` blocks; JSONL documents are one sequence each."""

import tensorflow as tf

from tfchat.data.cleaned import reading_config
from tfchat.data.pipeline import (
    count_truncated, default_max_predictions, masked_lm_dataset, pack_sequences, tokenize_texts,
)
from tfchat.data.sharding import WHOLE
from tfchat.errors import TfchatError
from tfchat.evaluation.language_model import evaluate_loss
from tfchat.model.tasks import MaskedLM
from tfchat.objectives.base import (
    Objective, build_encoder, encoder_inputs, encoder_only, read_corpus, share, split_shares,
    training_texts,
)
from tfchat.serving.export import add_fill_mask_signature


def check_settings(config):
    """The values of the `mlm` section that a type alone cannot check."""
    m = config.mlm
    checks = [
        (0 < m.mask_rate < 1, "mlm.mask_rate must be between 0 and 1"),
        (
            m.mask_token_rate >= 0 and m.random_token_rate >= 0
            and m.mask_token_rate + m.random_token_rate <= 1,
            "mlm.mask_token_rate and mlm.random_token_rate must be non-negative and sum to at most 1",
        ),
        (m.max_predictions >= 0, "mlm.max_predictions must be 0 or positive"),
    ]
    return [message for ok, message in checks if not ok]


def check_data(config, corpus, tokenizer, workers=1):
    """Fails early, and clearly, when a split (or a worker's share of the
    training split) gives no encoder sequence."""
    block_size = config.model.block_size
    for split, shard, which in split_shares(corpus.path, workers):
        texts = corpus.texts(split, shard)
        if corpus.is_documents:
            if not any(True for _ in texts.take(1)):
                raise TfchatError(
                    f"{which} has no documents; add documents or change data.val_fraction."
                )
            continue
        blocks = pack_sequences(tokenize_texts(texts, tokenizer), block_size - 2)
        if not any(True for _ in blocks.take(1)):
            raise TfchatError(
                f"{which} has fewer than model.block_size - 2 "
                f"= {block_size - 2} tokens. Lower model.block_size or add text."
            )


def report_truncated(texts, tokenizer, block_size):
    """Says how many texts (one sequence each) are longer than the context."""
    for split, split_texts in texts.items():
        cut, total = count_truncated(split_texts, tokenizer, block_size - 2)
        if cut:
            print(f"Truncated {cut} of {total} {split} texts longer than "
                  f"model.block_size - 2 = {block_size - 2} tokens.")


def datasets(config, corpus, tokenizer, verbose=0, batch_size=None, splits=("train", "val"),
             shard=WHOLE):
    m, t, mlm = config.model, config.train, config.mlm
    if verbose and corpus.is_documents:
        report_truncated({s: corpus.texts(s) for s in splits}, tokenizer, m.block_size)
    result = {}
    for split in splits:
        training = split == "train"
        result[split] = masked_lm_dataset(
            corpus.texts(split, share(split, shard)), tokenizer, m.block_size,
            share(split, shard).batch_size(batch_size or t.batch_size),
            documents=corpus.is_documents, mask_rate=mlm.mask_rate,
            mask_token_rate=mlm.mask_token_rate, random_token_rate=mlm.random_token_rate,
            max_predictions=mlm.max_predictions, whole_word=mlm.whole_word,
            # Validation masks differ from training's, and stay fixed.
            seed=t.seed if training else t.seed + 1,
            shuffle_buffer=t.shuffle_buffer if training else 0, repeat=training,
            drop_remainder=training,
        )
    return result


def build_model(config, vocabulary_size, labels=None, forward_pass=True):
    """A `MaskedLM` over a `BertEncoder`, built with weights."""
    m = config.model
    model = MaskedLM(build_encoder(config, vocabulary_size),
                     grad_accumulation_steps=config.train.grad_accumulation_steps,
                     dtype=config.train.precision, name="masked_lm")
    slots = config.mlm.max_predictions or default_max_predictions(
        config.mlm.mask_rate, m.block_size
    )
    model({**encoder_inputs(m.block_size), "mask_positions": tf.zeros((1, slots), tf.int32)})
    return model


def evaluate(run, batch_size=None, **unused):
    """Masked-token loss, perplexity and accuracy over the run's validation
    split, masked as in training's validation (the same seed)."""
    corpus = read_corpus(reading_config(run.config)[0])  # the run's cleaned copy, if any
    val = datasets(run.config, corpus, run.tokenizer, batch_size=batch_size, splits=["val"])
    return evaluate_loss(run.model, val["val"])


def describe(config, data, model):
    return "masked LM"


def next_steps(config):
    return ("Try it with:\n"
            f'  python -m tfchat.fill_mask --run {config.run_dir} "To be or not to [MASK]."')


OBJECTIVE = Objective(
    name="mlm",
    init_from=("mlm",),
    generates=False,
    check_config=encoder_only,
    read_data=read_corpus,
    tokenizer_texts=training_texts,
    check_data=check_data,
    datasets=datasets,
    build_model=build_model,
    evaluate=evaluate,
    signatures=(add_fill_mask_signature,),
    describe=describe,
    next_steps=next_steps,
    fills_masks=True,
    check_settings=check_settings,
)
