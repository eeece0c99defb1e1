"""Validation loss, perplexity and accuracy of a task model over a dataset."""

import math

import tensorflow as tf


def evaluate_loss(model, dataset):
    """Token-weighted validation loss, perplexity and accuracy of a
    `CausalLM` (or `MaskedLM`: over the masked tokens) over `dataset`
    (batches of (x, y) or (x, y, weights))."""
    for metric in model.metrics:
        metric.reset_state()
    step = tf.function(model.test_step, reduce_retracing=True)
    for batch in dataset:
        step(batch)
    results = {k: float(v) for k, v in model.metric_results().items()}
    return {
        "val_loss": results["loss"],
        "val_perplexity": math.exp(min(results["loss"], 80.0)),
        "val_accuracy": results["accuracy"],
    }
