"""Generation and scoring as pure TensorFlow graphs, for exported SavedModels.

Everything here runs inside one `tf.function` with core TensorFlow ops (plus
the tokenizer's tensorflow-text ops), so a SavedModel built from it serves in
stock TF Serving, with XLA off and no Python:

  * `generate_ids`: the whole sampling loop, a `tf.while_loop` over
    `GPT.call_with_cache` with a KV cache. Prompts of different lengths batch
    together; every setting is per row (TF Serving may batch requests).
  * `sample_next_tokens`: greedy, temperature, top-k and top-p, with a
    per-row `seed` and stateless random ops, so a seed gives the same text
    every time and whatever else shares the batch.
  * `score_ids`: mean log-likelihood of texts.
  * `make_generate_function` / `make_score_function`: the string-in,
    string-out functions `tfchat.export` registers as signatures.
  * `make_fill_mask_function` / `make_classify_function`: the same for the
    BERT encoder runs (objectives mlm and classify): the text is encoded
    in the graph as in training and `tfchat.fill_mask`, one forward pass.

Why not keras-hub's samplers (as `tfchat.generate` uses): they draw from a
stateful `keras.random.SeedGenerator` and take one setting for the whole
batch, so a request cannot pass its own seed, temperature or top-k. tfchat
needs both, so this module has its own small sampler.

Rules for the exported model (documented in the README):
  * An empty prompt starts from `<eos>`, the token that separates documents
    in training: the model writes the start of a new document (as
    `tfchat.generate` does).
  * Windows are `tfchat.generate`'s (`Generator.iter_generate_ids`), so
    greedy text is the same as there for any prompt and `max_new_tokens`
    (negative means 0): a prompt that fits the context with room for a new
    token is read whole, a longer one from its last `block_size // 2`
    tokens; once a row fills the context it goes on in windows of its last
    `block_size // 2` tokens. Unlike there, each row's windows are its own,
    whatever else is in the batch.
  * Generation stops at `<eos>` or `<|end|>`; the stop token is not returned.
  * `temperature <= 0` is greedy; `top_k <= 0` and `top_p >= 1` are off; a
    negative `seed` draws a fresh one per request.

Example:
```python
run = tfchat.run.load_run("runs/default")
generate = make_generate_function(run.backbone, run.tokenizer)
generate(tf.constant(["ROMEO:"]), tf.constant([50]), tf.constant([0.0]),
         tf.constant([0]), tf.constant([1.0]), tf.constant([-1], tf.int64))
# {"text": [b" ..."], "num_tokens": [50], "num_prompt_tokens": [6]}
```
"""

import tensorflow as tf

from tfchat.data.chat_template import chat_stop_ids
from tfchat.data.pipeline import add_cls_and_sep
from tfchat.data.tokenizer import MASK_TOKEN

# Settings a generate request may leave out (TF Serving then uses these
# SignatureDef defaults). One value applies to every prompt in the request.
# max_new_tokens is capped at half the context, so a default request keeps
# at least half the context for its prompt.
GENERATE_DEFAULTS = {
    "max_new_tokens": 64,
    "temperature": 0.8,
    "top_k": 0,
    "top_p": 1.0,
    "seed": -1,
}


def generate_input_signature():
    """The generate signature's inputs: a batch of prompts and, per prompt
    (or one value for all), the sampling settings."""
    return [
        tf.TensorSpec([None], tf.string, name="prompt"),
        tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
        tf.TensorSpec([None], tf.float32, name="temperature"),
        tf.TensorSpec([None], tf.int32, name="top_k"),
        tf.TensorSpec([None], tf.float32, name="top_p"),
        tf.TensorSpec([None], tf.int64, name="seed"),
    ]


def score_input_signature():
    return [tf.TensorSpec([None], tf.string, name="text")]


def _per_row(values, batch, name):
    """[1] or [B] -> [B]: one value applies to every row."""
    count = tf.size(values)
    check = tf.debugging.Assert(
        tf.logical_or(tf.equal(count, 1), tf.equal(count, batch)),
        [f"{name} must have one value, or one per prompt; got", count,
         "values for", batch, "prompts"],
    )
    with tf.control_dependencies([check]):
        return tf.cond(
            tf.equal(count, 1),
            lambda: tf.fill([batch], values[0]),
            lambda: tf.identity(values),
        )


def _uniform_noise(seeds, step, vocabulary_size):
    """[B, V] uniform noise in (0, 1); row b depends only on (seeds[b], step),
    so a row's randomness never depends on what else is in the batch."""

    def row(seed):
        return tf.random.stateless_uniform(
            [vocabulary_size], seed=tf.stack([seed, step]),
            minval=1e-7, maxval=1.0,
        )

    return tf.map_fn(row, seeds, fn_output_signature=tf.float32)


def sample_next_tokens(logits, temperature, top_k, top_p, seeds, step):
    """Picks one token per row.

    Args:
        logits: [B, V] float32.
        temperature: [B] float32; <= 0 means greedy.
        top_k: [B] int32; keep the k most likely tokens (<= 0: all).
        top_p: [B] float32; keep the smallest set of most likely tokens whose
            probability reaches p (>= 1: all).
        seeds: [B] int64, one random stream per row.
        step: int64 scalar, the position being sampled (a new draw each step).

    Returns: [B] int32 token ids.
    """
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sample():
        vocabulary_size = tf.shape(logits)[1]
        scaled = logits / tf.maximum(temperature, 1e-6)[:, None]
        ranked = tf.sort(scaled, axis=-1, direction="DESCENDING")  # [B, V]
        k = tf.where(top_k > 0, tf.minimum(top_k, vocabulary_size), vocabulary_size)
        in_top_k = tf.range(vocabulary_size)[None, :] < k[:, None]
        ranked = tf.where(in_top_k, ranked, -float("inf"))
        # Nucleus over what top-k kept: a token stays while the probability
        # of the tokens ranked above it is below p (the first always stays).
        probs = tf.nn.softmax(ranked, axis=-1)
        above = tf.math.cumsum(probs, axis=-1, exclusive=True)
        kept = tf.logical_and(above < top_p[:, None], in_top_k)
        count = tf.maximum(tf.reduce_sum(tf.cast(kept, tf.int32), axis=-1), 1)
        threshold = tf.gather(ranked, count - 1, batch_dims=1)  # [B]
        filtered = tf.where(scaled >= threshold[:, None], scaled, -float("inf"))
        # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax.
        noise = _uniform_noise(seeds, step, vocabulary_size)
        gumbel = -tf.math.log(-tf.math.log(noise))
        return tf.argmax(filtered + gumbel, axis=-1, output_type=tf.int32)

    # All-greedy batches skip the sort and the noise.
    sampled = tf.cond(tf.reduce_any(temperature > 0), sample, lambda: greedy)
    return tf.where(temperature > 0, sampled, greedy)


def _start_empty_rows(token_ids, start_id):
    """Gives every empty row of a ragged [B, None] batch the one token
    `start_id`; returns (token_ids, lengths [B] int32)."""
    lengths = tf.cast(token_ids.row_lengths(), tf.int32)
    empty = tf.cast(tf.equal(lengths, 0), tf.int32)
    starts = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(empty)], tf.constant(start_id, token_ids.dtype)),
        tf.cast(empty, token_ids.row_splits.dtype),
    )
    return tf.concat([starts, token_ids], axis=1), lengths + empty


def valid_utf8(text):
    """`text` with invalid UTF-8 replaced by U+FFFD, as Python's decoding
    shows it: a reply cut at `max_new_tokens` may end inside a character
    whose bytes a byte-level BPE splits across tokens, and JSON (TF
    Serving's REST API) cannot carry such bytes. UnicodeTranscode is a core
    op."""
    return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                        replacement_char=0xFFFD)


def generate_ids(
    backbone,
    token_ids,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seeds,
    stop_ids,
    start_id,
    pad_id=0,
):
    """Continues each prompt with KV-cached `tf.while_loop`s, in windows of
    the context as `Generator.iter_generate_ids` makes them.

    Each window is one pass: the rows' window prompts are right-padded into
    one [B, L] buffer (L <= block_size), one pass over them fills the cache,
    then each step runs one token per row through
    `backbone.call_with_cache`. Until a row's own window prompt ends, its
    prompt token is kept instead of the sampled one (as keras-hub does), so
    rows of different lengths share every step. A row still going when its
    window is full goes on in a new window of its last half context.

    Args:
        backbone: a `GPT` (anything with `call_with_cache`, `build_cache`
            and `block_size`).
        token_ids: RaggedTensor [B, None] int32 prompt ids.
        max_new_tokens, temperature, top_k, top_p, seeds: [B] per-row
            settings (see `sample_next_tokens`).
        stop_ids: ids that end a row (not returned).
        start_id: the id an empty prompt starts from.

    Returns:
        (new_ids RaggedTensor [B, None] int32, prompt_lengths [B] int32: the
        prompt tokens actually read, after left truncation).
    """
    context = backbone.block_size
    half = context // 2
    batch = token_ids.nrows(out_type=tf.int32)
    max_new = tf.maximum(max_new_tokens, 0)
    token_ids, lengths = _start_empty_rows(token_ids, start_id)
    # Generator's first window: the whole prompt while it leaves room for a
    # new token, else its last half context. Fitting the prompt to leave
    # room for all of max_new instead cut prompts the Generator reads whole,
    # and the text went another way.
    keep = tf.where(lengths < context, lengths, half)
    padded = token_ids.to_tensor(default_value=pad_id)  # [B, longest]
    prompt_width = tf.maximum(tf.reduce_max(keep), 1)
    columns = tf.range(prompt_width)[None, :]
    source = tf.minimum((lengths - keep)[:, None] + columns, tf.shape(padded)[1] - 1)
    in_prompt = columns < keep[:, None]
    prompt = tf.where(in_prompt, tf.gather(padded, source, batch_dims=1), pad_id)
    stop_ids = tf.constant(list(stop_ids), tf.int32)

    def window_pass(window_index, window, window_keep, done, count, new):
        width = tf.shape(window)[1]
        # As far as the row wanting the most needs, up to the context: a
        # row still going afterwards has filled the whole context.
        wanted = tf.where(done, 0, window_keep + max_new - count)
        total = tf.minimum(tf.maximum(tf.reduce_max(wanted), width), context)
        tokens = tf.pad(window, [[0, 0], [0, total - width]], constant_values=pad_id)
        cache = backbone.build_cache(batch, total)
        # Prefill: one pass over the window's prompt columns seeds the cache.
        _, cache = backbone.call_with_cache(window, cache, 0)
        positions = tf.range(total)[None, :]
        # Positions repeat from window to window; the noise must not. The
        # first window's draws are those of the position alone, so seeded
        # text within the context is what it was.
        noise_offset = tf.cast(window_index, tf.int64) * context

        def not_finished(index, tokens, cache, done, count, new):
            return tf.logical_and(index < total, tf.logical_not(tf.reduce_all(done)))

        def step(index, tokens, cache, done, count, new):
            # Logits for position `index` come from the token before it.
            previous = tf.slice(tokens, [0, index - 1], [-1, 1])
            logits, cache = backbone.call_with_cache(previous, cache, index - 1)
            sampled = sample_next_tokens(
                logits[:, 0, :], temperature, top_k, top_p, seeds,
                noise_offset + tf.cast(index, tf.int64),
            )
            generating = tf.logical_and(index >= window_keep, tf.logical_not(done))
            stopped = tf.reduce_any(tf.equal(sampled[:, None], stop_ids[None, :]), axis=1)
            emit = tf.logical_and(generating, tf.logical_not(stopped))
            # Rows still in their prompt keep it; finished rows keep padding.
            column = tf.where(emit, sampled, tokens[:, index])
            tokens = tf.where(positions == index, column[:, None], tokens)
            new = new.write(new.size(), tf.where(emit, sampled, -1))
            count += tf.cast(emit, tf.int32)
            done = tf.logical_or(done, tf.logical_and(generating, stopped))
            done = tf.logical_or(done, count >= max_new)
            return index + 1, tokens, cache, done, count, new

        _, tokens, _, done, count, new = tf.while_loop(
            not_finished, step,
            (tf.reduce_min(window_keep), tokens, cache, done, count, new),
        )
        next_window = tokens[:, total - half:]
        return window_index + 1, next_window, tf.fill([batch], half), done, count, new

    # Each step writes [B] ids, -1 where a row emitted nothing; the first
    # write of -1s lets an empty result stack (the batch is not static).
    new = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])
    new = new.write(0, tf.fill([batch], -1))
    _, _, _, _, _, new = tf.while_loop(
        lambda window_index, window, window_keep, done, count, new: tf.logical_not(
            tf.reduce_all(done)),
        window_pass,
        (tf.constant(0), prompt, keep, max_new <= 0, tf.zeros([batch], tf.int32), new),
        shape_invariants=(
            tf.TensorShape([]), tf.TensorShape([None, None]), tf.TensorShape([None]),
            tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape(None),
        ),
    )
    emitted = tf.transpose(new.stack())  # [B, steps + 1]
    return tf.ragged.boolean_mask(emitted, emitted >= 0), keep


def score_ids(backbone, token_ids, start_id, pad_id=0):
    """Mean log-likelihood per row of ragged [B, None] ids.

    Each row is read as a document: `start_id` (<eos>) goes before it, so
    its first token is scored too. Rows longer than the context are scored
    in consecutive windows of `block_size` tokens (each window starts
    without the context before it, as the validation loss is computed).

    Returns (mean_log_likelihood [B] float32, num_tokens [B] int32); a row
    with no tokens scores 0.0 over 0 tokens.
    """
    context = backbone.block_size
    batch = token_ids.nrows(out_type=tf.int32)
    counts = tf.cast(token_ids.row_lengths(), tf.int32)
    starts = tf.fill([batch, 1], tf.constant(start_id, token_ids.dtype))
    sequences = tf.concat([tf.RaggedTensor.from_tensor(starts), token_ids], axis=1)
    windows = tf.maximum((tf.reduce_max(counts) + context - 1) // context, 1)
    width = windows * context
    dense = sequences.to_tensor(default_value=pad_id, shape=[None, None])
    dense = tf.pad(dense, [[0, 0], [0, width + 1 - tf.shape(dense)[1]]], constant_values=pad_id)
    inputs = tf.reshape(dense[:, :-1], [batch * windows, context])
    targets = tf.reshape(dense[:, 1:], [batch * windows, context])
    logits = backbone(inputs, training=False)  # [B * W, T, V]
    log_likelihood = -tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=tf.cast(logits, tf.float32)
    )
    log_likelihood = tf.reshape(log_likelihood, [batch, width])
    weight = tf.cast(tf.range(width)[None, :] < counts[:, None], tf.float32)
    total = tf.reduce_sum(log_likelihood * weight, axis=1)
    return total / tf.maximum(tf.cast(counts, tf.float32), 1.0), counts


def make_generate_function(backbone, tokenizer, defaults=None, encode=None, stop_ids=None):
    """The generate signature: strings in, strings out.

    Returns `generate(prompt, max_new_tokens, temperature, top_k, top_p,
    seed)` (see `generate_input_signature`) -> {"text": [B] string,
    "num_tokens": [B] int32 generated, "num_prompt_tokens": [B] int32 of the
    prompt used}. All but `prompt` have defaults (`GENERATE_DEFAULTS`,
    overridden by `defaults`), written into the SignatureDef so TF Serving
    requests may leave them out. `encode(prompt, max_new_tokens)` makes the
    prompt's ragged [B, None] ids, given the request's `max_new_tokens` for a
    prompt fitted to leave room for the reply (default:
    `tokenizer.tokenize_prompts` of the prompt; the chat signature passes its
    template's, fitted as `Generator.chat` fits it), and `stop_ids` what ends
    a row (default: the end tokens and the chat template's end-of-turn).
    """
    values = {**GENERATE_DEFAULTS, **(defaults or {})}
    if not (defaults and "max_new_tokens" in defaults):
        values["max_new_tokens"] = min(
            values["max_new_tokens"], backbone.block_size // 2
        )
    dtypes = {s.name: s.dtype for s in generate_input_signature()}
    default = {k: tf.constant([v], dtypes[k]) for k, v in values.items()}
    stop_ids = chat_stop_ids(tokenizer) if stop_ids is None else stop_ids
    encode = encode or (lambda prompt, max_new_tokens: tokenizer.tokenize_prompts(prompt))

    def generate(
        prompt,
        max_new_tokens=default["max_new_tokens"],
        temperature=default["temperature"],
        top_k=default["top_k"],
        top_p=default["top_p"],
        seed=default["seed"],
    ):
        token_ids = encode(prompt, max_new_tokens)
        batch = token_ids.nrows(out_type=tf.int32)
        seed = _per_row(seed, batch, "seed")
        # A negative seed asks for fresh randomness.
        seed = tf.where(
            seed < 0,
            tf.random.uniform([batch], maxval=tf.int64.max, dtype=tf.int64),
            seed,
        )
        new_ids, prompt_lengths = generate_ids(
            backbone,
            token_ids,
            _per_row(max_new_tokens, batch, "max_new_tokens"),
            _per_row(temperature, batch, "temperature"),
            _per_row(top_k, batch, "top_k"),
            _per_row(top_p, batch, "top_p"),
            seed,
            stop_ids=stop_ids,
            start_id=tokenizer.first_id,
            pad_id=tokenizer.pad_id,
        )
        return {
            "text": valid_utf8(tokenizer.detokenize(new_ids)),
            "num_tokens": tf.cast(new_ids.row_lengths(), tf.int32),
            "num_prompt_tokens": prompt_lengths,
        }

    return generate


def make_score_function(backbone, tokenizer):
    """The score signature: `score(text)` -> {"log_likelihood": [B] mean
    log-likelihood per token (natural log), "perplexity": [B],
    "num_tokens": [B] int32 tokens scored}."""

    def score(text):
        mean, counts = score_ids(
            backbone, tokenizer.tokenize(text), tokenizer.first_id, tokenizer.pad_id
        )
        return {
            "log_likelihood": mean,
            "perplexity": tf.exp(-mean),
            "num_tokens": counts,
        }

    return score


# --- encoder runs: fill-mask (mlm) and classify ---

FILL_MASK_DEFAULTS = {"top_k": 5}


def fill_mask_input_signature():
    return [
        tf.TensorSpec([None], tf.string, name="text"),
        tf.TensorSpec([None], tf.int32, name="top_k"),
    ]


def classify_input_signature():
    return [tf.TensorSpec([None], tf.string, name="text")]


def encode_masked_texts(tokenizer, texts, block_size):
    """[B] strings holding `MASK_TOKEN`s -> the encoder's inputs, as
    `tfchat.fill_mask.FillMask.encode` builds them: the text between markers
    is tokenized, each marker becomes one [MASK] id, and the row is
    `[CLS] ... [SEP]`, cut to `block_size` like a training document
    (the end is dropped, so markers past the context are not read).

    Returns (token_ids [B, T] int32, padding_mask [B, T] bool, pieces
    RaggedTensor [B, None] string: the text around the markers).
    """
    pieces = tf.strings.split(texts, sep=MASK_TOKEN)  # [B, markers + 1]
    piece_ids = tf.cast(tokenizer.tokenize(pieces.flat_values), tf.int32)  # [N, None]
    # A [MASK] after every piece, then the one after each row's last piece
    # dropped: markers and pieces interleave without a Python loop.
    masks = tf.fill([tf.shape(pieces.flat_values)[0], 1], tf.constant(tokenizer.mask_id, tf.int32))
    piece_ids = tf.concat([piece_ids, tf.RaggedTensor.from_tensor(masks)], axis=1)
    ids = tf.RaggedTensor.from_row_splits(piece_ids, pieces.row_splits).merge_dims(1, 2)
    ids = ids[:, :-1]
    token_ids, padding_mask = add_cls_and_sep(ids, block_size, tokenizer)
    return token_ids, padding_mask, pieces


def make_fill_mask_function(model, tokenizer, defaults=None):
    """The fill_mask signature of a `MaskedLM` run: strings in, strings out.

    Returns `fill_mask(text, top_k)` -> {
        "tokens": [B, M, K] string, the top-k candidate pieces for each
            [MASK] read, best first ("" where there is none),
        "probabilities": [B, M, K] float32, theirs (0.0 where none),
        "num_masks": [B] int32, the [MASK]s read in each text,
        "filled": [B] string, the text with each [MASK] read replaced by
            its best candidate}.
    Every [MASK] read is predicted (M is the most any text of the batch
    has); texts with fewer, or none, are padded, and a text without one
    comes back unchanged in `filled`. A text longer than the context is cut
    as in training (`encode_masked_texts`): a [MASK] past the cut is not
    read, not counted, and stays in `filled`. `top_k` is one value or one
    per text, clamped to [1, the number of ordinary pieces]; K is the
    largest. Special tokens are never candidates. Probabilities are the
    model's softmax over ordinary pieces, as `tfchat.fill_mask` prints them.
    """
    values = {**FILL_MASK_DEFAULTS, **(defaults or {})}
    default_top_k = tf.constant([values["top_k"]], tf.int32)
    block_size = model.backbone.block_size
    vocabulary_size = tokenizer.vocabulary_size
    num_special = tokenizer.num_special_tokens
    if vocabulary_size <= num_special:
        raise ValueError(f"The vocabulary has no ordinary pieces: {vocabulary_size} pieces.")
    mask_id = tokenizer.mask_id

    def fill_mask(text, top_k=default_top_k):
        batch = tf.shape(text)[0]
        k = tf.clip_by_value(_per_row(top_k, batch, "top_k"), 1, vocabulary_size - num_special)
        width = tf.reduce_max(tf.concat([k, [1]], axis=0))  # [1]: an empty batch's max
        token_ids, padding_mask, pieces = encode_masked_texts(tokenizer, text, block_size)
        # Row-major, as from_value_rowids needs; slots follow the text's order.
        found = tf.where(tf.equal(token_ids, mask_id))  # [n, 2] (row, position)
        positions = tf.RaggedTensor.from_value_rowids(
            tf.cast(found[:, 1], tf.int32), found[:, 0], nrows=tf.cast(batch, tf.int64)
        )
        num_masks = tf.cast(positions.row_lengths(), tf.int32)
        logits = model(
            {
                "token_ids": token_ids,
                "padding_mask": padding_mask,
                # Padding slots read [CLS]; their candidates are blanked below.
                "mask_positions": positions.to_tensor(default_value=0),
            },
            training=False,
        )  # [B, M, V]
        special = tf.range(vocabulary_size) < num_special
        logits = tf.where(special, tf.constant(-float("inf"), logits.dtype), logits)
        probabilities, candidates = tf.math.top_k(tf.nn.softmax(logits, axis=-1), k=width)
        slots = tf.shape(probabilities)[1]
        kept = tf.logical_and(
            (tf.range(slots)[None, :] < num_masks[:, None])[:, :, None],
            (tf.range(width)[None, :] < k[:, None])[:, None, :],
        )  # [B, M, K]
        vocabulary = tf.constant(tokenizer.vocabulary, tf.string)
        tokens = tf.where(kept, tf.gather(vocabulary, candidates), "")
        probabilities = tf.where(kept, probabilities, 0.0)

        # `filled`: piece, then the best candidate for a marker that was
        # read, the marker itself for one cut off, nothing after the last.
        best = tf.concat([tokens[:, :, 0], tf.fill([batch, 1], "")], axis=1)  # [B, M + 1]
        markers = pieces.row_lengths() - 1
        index = tf.ragged.range(pieces.row_lengths())  # [B, markers + 1]
        rows = tf.cast(index.value_rowids(), tf.int32)
        column = tf.cast(index.flat_values, tf.int32)
        read = column < tf.gather(num_masks, rows)
        replacement = tf.where(
            read,
            tf.gather_nd(best, tf.stack([rows, tf.minimum(column, slots)], axis=1)),
            tf.where(tf.cast(column, tf.int64) < tf.gather(markers, rows), MASK_TOKEN, ""),
        )
        joined = tf.strings.join([pieces.flat_values, replacement])
        filled = tf.strings.reduce_join(pieces.with_flat_values(joined), axis=1)
        return {
            "tokens": tokens,
            "probabilities": probabilities,
            "num_masks": num_masks,
            "filled": filled,
        }

    return fill_mask


def make_classify_function(model, tokenizer, labels):
    """The classify signature of a `TextClassifier` run.

    Returns `classify(text)` -> {
        "label": [B] string, the most probable label,
        "probabilities": [B, K] float32, softmax over the labels,
        "labels": [B, K] string, the label names in probability order}.
    Each text is read as in training: `[CLS] text [SEP]`, the end of a text
    longer than the context dropped. `labels` repeats per row because TF
    Serving's row (`instances`) form needs every output batch-major.
    """
    block_size = model.backbone.block_size
    names = tf.constant(list(labels), tf.string)

    def classify(text):
        token_ids, padding_mask = add_cls_and_sep(
            tokenizer.tokenize(text), block_size, tokenizer
        )
        logits = model({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return {
            "label": tf.gather(names, tf.argmax(probabilities, axis=-1, output_type=tf.int32)),
            "probabilities": probabilities,
            "labels": tf.tile(names[None, :], [tf.shape(text)[0], 1]),
        }

    return classify
