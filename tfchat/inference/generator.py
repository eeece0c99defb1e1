"""KV-cached sampling from a GPT backbone: `Generator`.

Sampling is keras-hub's: its samplers own the `while_loop` and the
greedy/temperature/top-k/top-p choice; tfchat supplies the `next` step, which
runs one token through `GPT.call_with_cache` instead of recomputing the prefix.
That step is also where tfchat adds what keras-hub's samplers lack: a
repetition penalty (keras-hub samplers only see this step's probabilities, not
the tokens so far), applied to the logits before the sampler's temperature.
Stopping on end-of-turn (or any token ids) is the sampler's own
`stop_token_ids`; stop strings are text, so they are checked on the decoded
text as it grows.

`greedy_uncached` is the same greedy decoding without a cache (the whole
sequence runs through the model for every new token): the reference the cache
is tested against and the baseline of `benchmarks/generation_speed.py`.
"""

import keras_hub
import numpy as np
import tensorflow as tf

from tfchat.data.chat_template import chat_stop_ids, chat_stop_strings, encode_conversations


# Generation lengths under XLA are rounded up to a multiple of this, so a
# session compiles a few shapes, not one per prompt length.
_XLA_LENGTH_STEP = 32


def make_sampler(temperature=1.0, top_k=0, top_p=1.0, seed=None):
    """The keras-hub sampler for these settings (temperature 0 = greedy)."""
    samplers = keras_hub.samplers
    if temperature <= 0:
        return samplers.GreedySampler()
    if top_p < 1.0:
        return samplers.TopPSampler(p=top_p, k=top_k or None, seed=seed, temperature=temperature)
    if top_k > 0:
        return samplers.TopKSampler(k=top_k, seed=seed, temperature=temperature)
    return samplers.RandomSampler(seed=seed, temperature=temperature)


def _reseed(sampler, seed):
    """Restarts a keras-hub sampler's random stream, so a reused sampler (one
    compiled step, no retracing) samples as a fresh one seeded `seed` would;
    `seed=None` draws a new random stream."""
    generator = getattr(sampler, "seed_generator", None)
    if generator is None:
        return
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    generator.state.assign(tf.constant([seed, 0], generator.state.dtype))


def penalize_repetition(logits, seen, penalty):
    """CTRL's repetition penalty (Keskar et al., 2019), as in Hugging Face's
    generate: the logit of every token already in the sequence is divided by
    `penalty` when positive and multiplied by it when negative.
    logits [B, V] float32, seen [B, V] bool."""
    penalized = tf.where(logits > 0, logits / penalty, logits * penalty)
    return tf.where(seen, penalized, logits)


class Generator:
    """Generates continuations of token-id prompts with a GPT backbone.

    Prompts of different lengths batch together (right-padded; each row's
    prompt tokens are kept, the rest sampled). Output beyond the model's
    context continues in windows of the row's last half context.

    Example:
    ```python
    generator = Generator(run.backbone, run.tokenizer)
    generator.generate(["ROMEO:"], 100, temperature=0.8, top_k=40, seed=1)
    generator.chat([[Message("user", "Hi!")]], temperature=0)  # replies
    for piece in generator.stream_chat([Message("user", "Hi!")]):
        print(piece, end="", flush=True)
    ```
    """

    def __init__(self, backbone, tokenizer, jit_compile=False):
        self.backbone = backbone
        self.tokenizer = tokenizer
        # XLA fuses the ~250 small ops of each decoding step, which dominate
        # a small model's time on CPU (benchmarks/generation_speed.py: 256
        # tokens of the default shape, 0.09 s instead of 0.7-1.5 s on a busy
        # 2-core machine). But each new (batch, length) shape compiles for
        # seconds, so lengths are rounded up to multiples of
        # _XLA_LENGTH_STEP, and streaming (a new length per chunk) is best
        # left uncompiled.
        self.jit_compile = jit_compile
        # One compiled step per (sampler, stop ids, penalty), traced once
        # for any batch and length, and one sampler per setting, reseeded
        # per call: a new sampler would mean a new trace (seconds per call).
        self._steps = {}
        self._samplers = {}

    def _step(self, token_ids, padding_mask, needed, sampler, stop_ids, repetition_penalty):
        key = (id(sampler), stop_ids, repetition_penalty)
        if key not in self._steps:
            spec = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.bool),
                    tf.TensorSpec([], tf.int32)]
            # No AutoGraph: the step's loop is the sampler's own `while_loop`
            # and every Python `if` in it is on Python values, so there is
            # nothing to convert, and converting the model and sampler code
            # was half of the first call's tracing (0.7-0.9 s of ~1.6 s).
            step = tf.function(
                lambda ids, mask, needed: self._generate_step(
                    ids, mask, needed, sampler, stop_ids, repetition_penalty
                ),
                input_signature=spec,
                jit_compile=self.jit_compile,
                autograph=False,
            )
            # The sampler is kept with its step, so its id is never reused.
            self._steps[key] = (step, sampler)
        return self._steps[key][0](token_ids, padding_mask, tf.constant(needed, tf.int32))

    # --- the compiled step ---

    def _generate_step(self, token_ids, padding_mask, needed, sampler, stop_ids,
                       repetition_penalty):
        """Fills positions from the shortest prompt's end up to `needed` (the
        rest of the buffer, there to keep XLA's shapes few, stays as it was)."""
        batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        cache = self.backbone.build_cache(batch, length)
        # Prefill: one pass over the whole (padded) prompt seeds the cache.
        _, cache = self.backbone.call_with_cache(token_ids, cache, 0)
        start = tf.reduce_min(tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1))
        penalize = repetition_penalty != 1.0
        vocabulary = self.backbone.vocabulary_size
        state = cache
        if penalize:
            # Which ids each row has seen, [B, V]: every row's first `start`
            # tokens are prompt; later ones are added as they are fed.
            rows = tf.repeat(tf.range(batch), start)
            seen_ids = tf.reshape(token_ids[:, :start], [-1])
            seen = tf.scatter_nd(
                tf.stack([rows, seen_ids], axis=1),
                tf.ones_like(seen_ids),
                [batch, vocabulary],
            ) > 0
            state = (cache, seen)

        def next_token(prompt, state, index):
            token = tf.slice(prompt, [0, index - 1], [batch, 1])
            cache = state[0] if penalize else state
            logits, cache = self.backbone.call_with_cache(token, cache, index - 1)
            logits = logits[:, 0, :]
            if not penalize:
                return logits, None, cache
            seen = tf.logical_or(state[1], tf.one_hot(token[:, 0], vocabulary) > 0)
            seen = tf.ensure_shape(seen, state[1].shape)  # a loop-invariant shape
            logits = penalize_repetition(logits, seen, repetition_penalty)
            return logits, None, (cache, seen)

        # keras-hub's sampler loops to the end of the buffer; under XLA that is
        # the length rounded up to _XLA_LENGTH_STEP, and decoding the padding
        # cost up to half the steps (benchmarks/RESULTS.md, "Starting from a
        # pretrained Llama-family model": 48 steps for 32 tokens). Its loop
        # is capped at `needed` instead (keras-hub has no argument for it).
        run_loop = sampler.run_loop

        def capped_loop(cond, body, model=None, loop_vars=None, maximum_iterations=None):
            index = loop_vars[2]
            return run_loop(cond, body, model=model, loop_vars=loop_vars,
                            maximum_iterations=tf.minimum(maximum_iterations, needed - index))

        sampler.run_loop = capped_loop
        try:
            return sampler(
                next_token,
                token_ids,
                cache=state,
                index=start,
                mask=padding_mask,
                stop_token_ids=stop_ids,
            )
        finally:
            del sampler.run_loop

    # --- token ids ---

    def sampler(self, temperature=1.0, top_k=0, top_p=1.0, seed=None):
        """The cached sampler for these settings, reseeded with `seed`."""
        # top-k cannot exceed the vocabulary (a char model may have < 40 ids).
        top_k = min(top_k, self.backbone.vocabulary_size)
        key = (temperature, top_k, top_p) if temperature > 0 else ("greedy",)
        if key not in self._samplers:
            self._samplers[key] = make_sampler(temperature, top_k, top_p, seed)
        sampler = self._samplers[key]
        _reseed(sampler, seed)
        return sampler

    def iter_generate_ids(self, prompts, max_new_tokens, sampler, stop_token_ids=(),
                          repetition_penalty=1.0, chunk_tokens=None):
        """Yields, after each compiled call, the ids each row gained in it
        (a list per row), until every row hit a stop id or max_new_tokens.

        `chunk_tokens` caps the tokens per call, for streaming; each call
        runs the prompt and the tokens so far through the model again
        (one parallel prefill), so chunks cost little extra."""
        rows = [DecodingRow(p, max_new_tokens, self.tokenizer.first_id) for p in prompts]
        while not all(row.done for row in rows):
            remaining = max(row.remaining for row in rows if not row.done)
            gained = self.advance(rows, min(remaining, chunk_tokens or remaining), sampler,
                                  stop_token_ids, repetition_penalty)
            yield gained

    def advance(self, rows, new_tokens, sampler, stop_token_ids=(), repetition_penalty=1.0):
        """One compiled call: every unfinished `DecodingRow` in `rows` gains
        up to `new_tokens` tokens (more for rows shorter than the longest,
        which decode while it is read), and stops at a stop id or at its
        `max_new_tokens`. Returns the ids each row gained (a list per row,
        empty for finished ones). `tfchat.inference.batching` calls it with
        whichever rows are being served at the moment."""
        context = self.backbone.block_size
        stops = set(stop_token_ids)
        stop_ids = tuple(sorted(stops)) or None
        filler = next(i for i in range(len(stops) + 1) if i not in stops)
        active = [row for row in rows if not row.done]
        if not active:
            return [[] for _ in rows]
        # A row is read whole while it fits with room for a new token; once
        # its window is full, the window moves on to its last half context
        # and grows from there. A window moves only when full, and each
        # row's is its own, so the text is the same in one call or in
        # streamed chunks, alone or in a batch (and the same as the exported
        # graphs').
        for row in active:
            if len(row.ids) - row.start >= context:
                row.start = len(row.ids) - context // 2
        window = [row.ids[row.start:] for row in active]
        longest = max(len(w) for w in window)
        needed = longest + min(new_tokens, context - longest)
        length = needed
        if self.jit_compile:
            # A few buffer shapes, so a few compilations; only the first
            # `needed` positions are decoded.
            length = min(-(-length // _XLA_LENGTH_STEP) * _XLA_LENGTH_STEP, context)
        # keras-hub's sampler counts a stop id anywhere outside the mask as a
        # finished row, the unsampled buffer included, so the buffer is
        # filled with an id that is no stop: with zeros, a vocabulary whose
        # id 0 ends text (GPT-2's `<|endoftext|>` in keras-hub's conventions)
        # finished every row before its first token. Only generated tokens
        # may end a row.
        ids = np.full((len(active), length), filler, np.int32)
        mask = np.zeros((len(active), length), bool)
        for i, w in enumerate(window):
            ids[i, : len(w)] = w
            mask[i, : len(w)] = True
        out = self._step(
            tf.constant(ids), tf.constant(mask), needed, sampler, stop_ids,
            float(repetition_penalty),
        ).numpy()
        gained = {}
        for i, (row, w) in enumerate(zip(active, window)):
            gained[id(row)] = row.take(out[i, len(w):needed], stops)
        return [gained.get(id(row), []) for row in rows]

    def generate_ids(self, prompts, max_new_tokens, sampler, stop_at_eos=True,
                     stop_token_ids=(), repetition_penalty=1.0):
        """prompts: list of lists of ids. Returns the new ids of each row,
        without the stop token that ended it."""
        stops = tuple(stop_token_ids) + (self.tokenizer.stop_ids if stop_at_eos else ())
        new = [[] for _ in prompts]
        for gained in self.iter_generate_ids(
            prompts, max_new_tokens, sampler, stops, repetition_penalty
        ):
            for row, ids in zip(new, gained):
                row += ids
        return new

    def decode(self, rows):
        """Lists of ids -> strings (pad, bos and eos render as nothing)."""
        flat = tf.constant([t for row in rows for t in row], tf.int32)
        lengths = tf.constant([len(row) for row in rows], tf.int64)
        texts = self.tokenizer.detokenize(tf.RaggedTensor.from_row_lengths(flat, lengths))
        return [t.decode("utf-8", errors="replace") for t in texts.numpy()]

    # --- text ---

    def generate(self, prompts, max_new_tokens=200, temperature=1.0, top_k=0,
                 top_p=1.0, seed=None, stop_at_eos=True, repetition_penalty=1.0,
                 stop_token_ids=(), stop_strings=()):
        """Strings in, generated continuations (without the prompt) out, each
        cut before the first of `stop_strings` it contains."""
        sampler = self.sampler(temperature, top_k, top_p, seed)
        ids = self.tokenizer.tokenize_prompts(tf.constant(prompts, tf.string)).to_list()
        new = self.generate_ids(
            ids, max_new_tokens, sampler, stop_at_eos, stop_token_ids, repetition_penalty
        )
        return [cut_at_stop_strings(t, stop_strings)[0] for t in self.decode(new)]

    def stream(self, prompt_ids, max_new_tokens=200, temperature=1.0, top_k=0,
               top_p=1.0, seed=None, stop_at_eos=True, repetition_penalty=1.0,
               stop_token_ids=(), stop_strings=(), chunk_tokens=8):
        """Yields one prompt's continuation as pieces of text, as it is
        generated; the pieces join to what `generate` returns. Text that may
        begin a stop string is held back until it is known not to."""
        sampler = self.sampler(temperature, top_k, top_p, seed)
        stops = tuple(stop_token_ids) + (self.tokenizer.stop_ids if stop_at_eos else ())
        text, ids = TextStream(stop_strings), []
        for gained in self.iter_generate_ids(
            [prompt_ids], max_new_tokens, sampler, stops, repetition_penalty, chunk_tokens
        ):
            ids += gained[0]
            piece = text.update(self.decode([ids])[0])
            if piece:
                yield piece
            if text.stopped:
                return
        piece = text.finish()
        if piece:
            yield piece

    # --- chat ---

    def chat_stop_ids(self):
        return chat_stop_ids(self.tokenizer)

    def chat_prompts(self, conversations, max_new_tokens=200):
        """The prompts for the replies to `conversations` (`Encoded`s; their
        `truncated` says if old turns had to go to leave room to reply)."""
        context = self.backbone.block_size
        # Room for the reply: half the context, taken from the oldest turns
        # first. A last message too long for the other half may use three
        # quarters instead of losing its start (a 40-token trivia question in
        # a 64-token context was answered wrongly, cut); a longer reply
        # continues in windows.
        encoded = encode_conversations(
            self.tokenizer, conversations, context - min(max_new_tokens, context // 2),
            add_generation_prompt=True,
        )
        cut = [i for i, e in enumerate(encoded) if e.cut_tokens]
        if cut:
            longer = encode_conversations(
                self.tokenizer, [conversations[i] for i in cut],
                context - min(max_new_tokens, context // 4), add_generation_prompt=True,
            )
            for i, e in zip(cut, longer):
                encoded[i] = e
        return encoded

    def chat_prompt(self, messages, max_new_tokens=200):
        return self.chat_prompts([messages], max_new_tokens)[0]

    def chat(self, conversations, max_new_tokens=200, temperature=0.0, top_k=0,
             top_p=1.0, seed=None, repetition_penalty=1.0, stop_strings=()):
        """The assistant's next reply to each conversation (lists of
        `Message`), in one batch; replies end at the end-of-turn token."""
        sampler = self.sampler(temperature, top_k, top_p, seed)
        prompts = [e.ids for e in self.chat_prompts(conversations, max_new_tokens)]
        new = self.generate_ids(
            prompts, max_new_tokens, sampler, stop_at_eos=False,
            stop_token_ids=self.chat_stop_ids(), repetition_penalty=repetition_penalty,
        )
        # The end-of-turn text too: in a pretrained vocabulary it may be
        # several tokens.
        stop_strings = (*stop_strings, *chat_stop_strings(self.tokenizer))
        return [cut_at_stop_strings(t, stop_strings)[0] for t in self.decode(new)]

    def stream_chat(self, messages, max_new_tokens=200, prompt=None, **sampling):
        """Yields the reply to one conversation as it is generated; pass
        `prompt` (from `chat_prompt`) when it was already rendered."""
        prompt = prompt or self.chat_prompt(messages, max_new_tokens)
        sampling["stop_strings"] = (*sampling.get("stop_strings", ()),
                                    *chat_stop_strings(self.tokenizer))
        yield from self.stream(
            prompt.ids, max_new_tokens, stop_at_eos=False,
            stop_token_ids=self.chat_stop_ids(), **sampling,
        )


def cut_at_stop_strings(text, stop_strings):
    """(text before the first stop string, whether one was found)."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class DecodingRow:
    """One sequence being generated: its ids so far (prompt and new), the
    start of its window into the context, and why it ended (`finish`:
    "stop" at a stop id, "length" at `max_new_tokens`, None while going)."""

    def __init__(self, prompt_ids, max_new_tokens, first_id):
        self.ids = list(prompt_ids) or [first_id]
        self.new = []
        self.max_new_tokens = max_new_tokens
        self.start = 0
        self.finish = "length" if max_new_tokens <= 0 else None
        self.stop_token = None  # the stop id that ended it, if one did

    @property
    def done(self):
        return self.finish is not None

    @property
    def remaining(self):
        return self.max_new_tokens - len(self.new)

    def take(self, tokens, stops):
        """Adds sampled `tokens` up to the first stop id or the length
        limit; returns those added."""
        added = []
        for token in tokens:
            token = int(token)
            if token in stops:
                self.finish, self.stop_token = "stop", token
                break
            added.append(token)
            self.new.append(token)
            self.ids.append(token)
            if len(self.new) >= self.max_new_tokens:
                self.finish = "length"
                break
        return added


class TextStream:
    """A row's text released in pieces as it grows: a character whose UTF-8
    bytes are split across tokens waits for the rest, and text that may
    begin a stop string waits until it is known not to. The pieces join to
    the whole text cut before the first stop string. The caller decodes
    (`update` takes the whole text so far), so a batch of rows decodes in
    one tokenizer call."""

    def __init__(self, stop_strings=()):
        self.stop_strings = tuple(stop_strings)
        self.decoded = ""
        self.shown = 0
        self.stopped = False  # a stop string was found

    def update(self, decoded):
        """The next piece ("" if none is ready), given the text of all the
        row's new ids so far."""
        self.decoded = decoded
        text, self.stopped = cut_at_stop_strings(decoded, self.stop_strings)
        if self.stopped:
            ready = len(text)
        else:
            stable = text.rstrip("\ufffd")
            ready = len(stable) - _held_back(stable, self.stop_strings)
        return self._release(text, ready)

    def finish(self):
        """The rest, once no more ids come (a stop string can no longer
        begin; a character still incomplete is shown as U+FFFD)."""
        if self.stopped:
            return ""
        return self._release(self.text, len(self.text))

    @property
    def text(self):
        return cut_at_stop_strings(self.decoded, self.stop_strings)[0]

    def _release(self, text, ready):
        if ready <= self.shown:
            return ""
        piece, self.shown = text[self.shown:ready], ready
        return piece


def _held_back(text, stop_strings):
    """How many trailing characters of `text` could begin a stop string."""
    longest = 0
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def greedy_uncached(backbone, prompt_ids, max_new_tokens, jit_compile=False):
    """Greedy decoding with no KV cache: every step runs the whole sequence
    so far through the model. prompt_ids: [B, T] int32, equal lengths;
    T + max_new_tokens must fit the context. Returns the new ids,
    [B, max_new_tokens].

    Without XLA it is one compiled loop, like the cached one. With XLA
    (whose shapes must be static) a Python loop calls a compiled forward
    pass on the sequence right-padded to a multiple of _XLA_LENGTH_STEP
    (padding after the last token cannot change it, the mask is causal)."""
    prompt_ids = tf.convert_to_tensor(prompt_ids, tf.int32)
    length = prompt_ids.shape[1]
    if length + max_new_tokens > backbone.block_size:
        raise ValueError(
            "greedy_uncached does not slide a window; the prompt and the new "
            f"tokens must fit the context of {backbone.block_size}. "
            f"Received: {length} + {max_new_tokens}"
        )
    if not jit_compile:
        return _uncached_loop(backbone, prompt_ids, tf.constant(max_new_tokens))[:, length:]
    ids = prompt_ids.numpy()
    for _ in range(max_new_tokens):
        t = ids.shape[1]
        padded = min(-(-t // _XLA_LENGTH_STEP) * _XLA_LENGTH_STEP, backbone.block_size)
        buffer = np.zeros((ids.shape[0], padded), np.int32)
        buffer[:, :t] = ids
        token = _compiled_logits(backbone, tf.constant(buffer), tf.constant(t - 1))
        ids = np.concatenate([ids, token.numpy()[:, None]], axis=1)
    return tf.constant(ids[:, length:])


@tf.function(jit_compile=True, reduce_retracing=True)
def _compiled_logits(backbone, ids, position):
    logits = backbone(ids, training=False)
    return tf.argmax(logits[:, position, :], axis=-1, output_type=tf.int32)


@tf.function(reduce_retracing=True)
def _uncached_loop(backbone, ids, steps):
    for _ in tf.range(steps):
        tf.autograph.experimental.set_loop_options(
            shape_invariants=[(ids, tf.TensorShape([None, None]))]
        )
        logits = backbone(ids, training=False)
        token = tf.argmax(logits[:, -1, :], axis=-1, output_type=tf.int32)
        ids = tf.concat([ids, token[:, None]], axis=1)
    return ids
