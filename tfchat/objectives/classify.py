"""`objective: classify`: text classification with a BERT encoder, usually
fine-tuned from an mlm run (`init_from`), on labelled JSONL/CSV or the
chatterbot categories."""

import numpy as np
import tensorflow as tf

from tfchat.data.cleaned import reading_config
from tfchat.data.labelled import read_labelled
from tfchat.data.pipeline import classification_dataset
from tfchat.data.sharding import WHOLE
from tfchat.errors import TfchatError
from tfchat.evaluation.classification import (
    classification_report, format_report, predict_classes,
)
from tfchat.evaluation import table
from tfchat.evaluation.fairness import classification_groups
from tfchat.model.tasks import TextClassifier
from tfchat.objectives.base import (
    Objective, build_encoder, encoder_inputs, encoder_only, share,
)
from tfchat.objectives.mlm import report_truncated
from tfchat.serving.export import add_classify_signature


def read_data(config, labels=None):
    """The labelled texts; `labels` (a resumed run's) fixes the label ids."""
    return read_labelled(config.data, labels=labels)


def tokenizer_texts(data):
    return iter(data.texts("train"))


def check_data(config, data, tokenizer, workers=1):
    """`read_labelled` has checked both splits already."""


def datasets(config, data, tokenizer, verbose=0, batch_size=None, splits=("train", "val"),
             shard=WHOLE):
    m, t = config.model, config.train
    if verbose:
        report_truncated({s: tf.data.Dataset.from_tensor_slices(data.texts(s)) for s in splits},
                         tokenizer, m.block_size)
    result = {}
    for split in splits:
        training = split == "train"
        part = share(split, shard)
        result[split] = classification_dataset(
            part.rows(data.texts(split)), part.rows(data.label_ids(split)), tokenizer,
            m.block_size, part.batch_size(batch_size or t.batch_size), seed=t.seed,
            shuffle_buffer=t.shuffle_buffer if training else 0, repeat=training,
            drop_remainder=training,
        )
    return result


def build_model(config, vocabulary_size, labels=None, forward_pass=True):
    """A `TextClassifier` over a `BertEncoder`, built with weights."""
    if not labels:
        raise ValueError(f"A classify model needs its labels. Received: {labels!r}")
    model = TextClassifier(build_encoder(config, vocabulary_size), len(labels),
                           grad_accumulation_steps=config.train.grad_accumulation_steps,
                           dtype=config.train.precision, name="text_classifier")
    model(encoder_inputs(config.model.block_size))
    return model


def evaluate(run, batch_size=None, data=None, split=None, **unused):
    """Accuracy, macro-F1, per-class scores and the confusion matrix on the
    validation split of the run's data, or on all of `data` (a path, already
    in `run.config.data`) when given. Texts longer than the context are cut
    to fit, as in training. With `data.group_field`, the same per group and
    the gaps between groups under "groups" (`tfchat.evaluation.fairness`)."""
    split = split or ("all" if data else "val")
    labelled = read_data(reading_config(run.config)[0], labels=run.labels)
    if not labelled.examples(split):
        raise TfchatError(f"No {split} examples in {run.config.data.path}.")
    dataset = classification_dataset(
        labelled.texts(split), labelled.label_ids(split), run.tokenizer,
        run.config.model.block_size, batch_size or run.config.train.batch_size,
    )
    true, predicted = predict_classes(run.model, dataset)
    report = classification_report(true, predicted, run.labels)
    true, predicted = np.asarray(true), np.asarray(predicted)
    report["metrics"] = [  # evaluation.json's rows, with bootstrap intervals
        table.mean_entry("accuracy", (true == predicted).astype(float)),
        table.entry("macro_f1", report["macro_f1"], len(true), table.bootstrap_statistic(
            lambda i: classification_report(true[i], predicted[i], run.labels)["macro_f1"],
            len(true))),
    ]
    if labelled.groups(split) is not None:  # data.group_field: fairness across groups
        report["groups"] = classification_groups(true, predicted, labelled.groups(split),
                                                 run.labels, run.config.data.group_field)
    return report


def report_best(run):
    return (f"\nValidation split, best checkpoint (step {run.step}):\n"
            + format_report(evaluate(run)))


def describe(config, data, model):
    return f"{len(data.labels)} classes, {len(data.train)} training examples"


def next_steps(config):
    return f"Evaluate it with:\n  python -m tfchat.evaluate --run {config.run_dir}"


OBJECTIVE = Objective(
    name="classify",
    init_from=("mlm", "classify"),
    generates=False,
    check_config=encoder_only,
    read_data=read_data,
    tokenizer_texts=tokenizer_texts,
    check_data=check_data,
    datasets=datasets,
    build_model=build_model,
    evaluate=evaluate,
    format_results=format_report,
    report_best=report_best,
    signatures=(add_classify_signature,),
    describe=describe,
    next_steps=next_steps,
    labelled=True,
)
