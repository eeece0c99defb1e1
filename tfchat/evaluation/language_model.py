"""Validation loss, perplexity and accuracy of a task model over a dataset;
and how a causal model continues held-out text: the first part of each
validation document (or passage of a running text) is the prompt, the rest
the reference, and the greedy continuation is scored with BLEU, chrF,
METEOR and ROUGE (`tfchat.evaluation.table.generation_metrics`)."""

import math

import numpy as np
import tensorflow as tf

# Continuations scored when `limit` is 0: enough for a figure, few enough
# that a tiny run evaluates in seconds.
DEFAULT_CONTINUATIONS = 32


def evaluate_loss(model, dataset):
    """Token-weighted validation loss, perplexity and accuracy of a
    `CausalLM` (or `MaskedLM`: over the masked tokens) over `dataset`
    (batches of (x, y) or (x, y, weights)), and `val_tokens`, the number
    of targets they are over (those of non-zero weight)."""
    for metric in model.metrics:
        metric.reset_state()
    step = tf.function(model.test_step, reduce_retracing=True)
    tokens = 0
    for batch in dataset:
        step(batch)
        weights = batch[2] if len(batch) > 2 else None
        tokens += int(tf.math.count_nonzero(weights) if weights is not None
                      else tf.size(batch[1]))
    results = {k: float(v) for k, v in model.metric_results().items()}
    return {
        "val_loss": results["loss"],
        "val_perplexity": math.exp(min(results["loss"], 80.0)),
        "val_accuracy": results["accuracy"],
        "val_tokens": tokens,
    }


def held_out_continuations(pieces, block_size, max_new_tokens, limit=0, documents=True,
                           end_id=None):
    """(prompt ids, reference ids) pairs from `pieces` (1-D id arrays: the
    validation split's documents, or pieces of one running text): at most
    `limit` (0: DEFAULT_CONTINUATIONS) of them, each reference
    `min(max_new_tokens, block_size // 2)` tokens or fewer, each prompt at
    most the rest of the block. A document gives one pair, its first half
    (up to that cap) the prompt and what follows the reference (its end
    token, `end_id`, dropped); a running text is cut into consecutive
    blocks, each a prompt and the reference after it."""
    limit = limit or DEFAULT_CONTINUATIONS
    new = max(1, min(max_new_tokens, block_size // 2))
    pairs = []
    if documents:
        for ids in pieces:
            ids = list(ids)
            if end_id is not None and ids and ids[-1] == end_id:
                ids = ids[:-1]
            cut = min(len(ids) // 2, block_size - new)
            if cut < 1 or cut >= len(ids):
                continue
            pairs.append((ids[:cut], ids[cut:cut + new]))
            if len(pairs) == limit:
                break
        return pairs
    prompt_length = max(1, min(block_size - new, new))
    window, stream = prompt_length + new, []
    for ids in pieces:
        stream.extend(ids)
        while len(stream) >= window and len(pairs) < limit:
            pairs.append((stream[:prompt_length], stream[prompt_length:window]))
            stream = stream[window:]
        if len(pairs) == limit:
            break
    return pairs


def evaluate_continuations(generator, pairs, batch_size=32, examples=3, wordnet=None):
    """Greedy continuations of `pairs`' prompts (`held_out_continuations`),
    each at most as long as the longest reference, scored against the
    references: `continuation_bleu`, `_chrf`, `_meteor`, `_rouge_1`,
    `_rouge_2`, `_rouge_l`, `_rouge_lsum` (0-100), their `"metrics"` table
    rows with bootstrap intervals, the count and the first `examples`."""
    from tfchat.evaluation.chat import bleu_tokenization
    from tfchat.evaluation.table import generation_metrics

    if not pairs:
        return {"continuations": 0}
    new = max(len(reference) for _, reference in pairs)
    sampler = generator.sampler(temperature=0.0)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    continuations = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids = generator.generate_ids([list(map(int, pairs[i][0])) for i in rows], new, sampler)
        for i, text in zip(rows, generator.decode(ids)):
            continuations[i] = text
    prompts = generator.decode([list(map(int, p)) for p, _ in pairs])
    references = generator.decode([list(map(int, r)) for _, r in pairs])
    tokenize = bleu_tokenization(references)
    flat, rows = generation_metrics(continuations, references, tokenize, wordnet,
                                    prefix="continuation_")
    return {
        **flat,
        "continuation_bleu_tokenize": tokenize,
        "continuations": len(pairs),
        "continuation_tokens": new,
        "metrics": rows,
        "examples": [{"prompt": prompts[i], "reference": references[i],
                      "continuation": continuations[i]}
                     for i in range(min(examples, len(pairs)))],
    }


def pieces_as_numpy(dataset):
    """A dataset of 1-D id tensors -> an iterator of numpy arrays."""
    return (np.asarray(ids) for ids in dataset.as_numpy_iterator())
