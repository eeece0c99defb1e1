"""The OpenAI HTTP API over a trained run, without the HTTP: request bodies
checked and turned into `Job`s for the `BatchingEngine`, and the response
bodies and stream chunks built as the OpenAI reference shapes them.
`tfchat.serving.http_server` puts it behind FastAPI.

  * `ServedRun`: a loaded run as the API uses it (prompts, token counts,
    log-probabilities, the engine);
  * `chat_request` / `completion_request`: a request body -> `Request`
    (its jobs and what the response needs), or `ApiError` (HTTP 400 with
    the OpenAI error body);
  * `chat_response`, `completion_response`, `*_chunk`: response bodies.

Sampling fields map onto tfchat's sampler: `temperature` (0 = greedy),
`top_p`, `top_k` (an extension, as vLLM's), `seed`, `stop` (string or
list), `repetition_penalty` (tfchat's CTRL penalty, as vLLM's extension),
and for completions `ignore_eos` (vLLM's: no stop id ends the text).
`presence_penalty` p > 0 is applied as repetition_penalty 1 + p: both
penalise every token already present, however often; `frequency_penalty`
(which counts occurrences) has no equivalent and must be 0.
"""

import math
import time
import uuid

import numpy as np
import tensorflow as tf

from tfchat.data.chat_template import Message, chat_stop_strings
from tfchat.errors import TfchatError
from tfchat.inference.batching import BatchingEngine, Job, Sampling
from tfchat.inference.generator import Generator

ROLES = ("system", "developer", "user", "assistant")  # OpenAI's; developer is its new system
MAX_N = 8
MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20
DEFAULT_CHAT_TOKENS = 200  # as `python -m tfchat.chat --max-new-tokens`
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


class ApiError(Exception):
    """A request the API refuses: `status` and the OpenAI error body."""

    def __init__(self, message, param=None, status=400, kind="invalid_request_error",
                 code=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ServedRun:
    """A run being served: its generator, its batching engine, and what the
    API needs to know of it."""

    def __init__(self, run, name, max_batch=16, max_waiting=64, chunk_tokens=8,
                 max_tokens_limit=None):
        self.run = run
        self.name = name
        self.tokenizer = run.tokenizer
        self.context = run.backbone.block_size
        self.generator = Generator(run.backbone, run.tokenizer)
        self.engine = BatchingEngine(self.generator, max_batch, max_waiting, chunk_tokens)
        self.chats = run.objective.chats
        # Replies may outgrow the context (windows slide), so the cap is a
        # guard on work per request, not a model limit.
        self.max_tokens_limit = max_tokens_limit or max(8 * self.context, 2048)
        self.created = int(time.time())
        self._scores = tf.function(self._log_probabilities, reduce_retracing=True)

    # --- tokens ---

    def tokenize(self, text, add_special_tokens=True):
        strings = tf.constant([text], tf.string)
        ids = self.tokenizer.tokenize_prompts(strings) if add_special_tokens else (
            self.tokenizer.tokenize(strings))
        return ids.to_list()[0]

    def detokenize(self, ids):
        return self.generator.decode([list(ids)])[0]

    def token_texts(self, ids):
        """Each token's own text (as OpenAI's `logprobs.tokens`)."""
        return self.generator.decode([[i] for i in ids]) if ids else []

    def special_token_text(self, token_id):
        names = {v: k for k, v in self.tokenizer.special_tokens().items()}
        return names.get(token_id)

    # --- log-probabilities ---

    def _log_probabilities(self, ids):
        logits = self.run.backbone(ids, training=False)
        return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)

    def score(self, ids, top=0):
        """(log-probability of each token given those before it, top-`top`
        alternatives {token text: log-prob} per position); position 0 has
        None for both, as in OpenAI's echo. A sequence longer than the
        context is scored in windows of the context, each token with as
        much before it as fits."""
        rows = []  # (the log-softmax row that predicts token p, p)
        head = ids[: self.context]
        if len(head) > 1:
            window = self._scores(tf.constant([head], tf.int32)).numpy()[0]
            rows += [(window[p - 1], p) for p in range(1, len(head))]
        for p in range(self.context, len(ids)):
            window = self._scores(tf.constant([ids[p - self.context + 1:p]], tf.int32)).numpy()[0]
            rows.append((window[-1], p))
        logprobs, tops = [None], [None]
        for row, p in rows:
            logprobs.append(float(row[ids[p]]))
            if top:
                best = [int(b) for b in np.argsort(-row)[:top]]
                tops.append({t: float(row[b]) for t, b in zip(self.token_texts(best), best)})
            else:
                tops.append(None)
        return logprobs[: len(ids)], tops[: len(ids)]

    # --- chat prompts ---

    def chat_prompt(self, messages, max_tokens):
        """The reply's prompt ids for `messages` (lists of `Message`), as
        `python -m tfchat.chat` renders them: when the conversation outgrows
        the context the oldest turns are left out (the system message
        stays); a last message that cannot fit at all is an `ApiError`."""
        try:
            prompt = self.generator.chat_prompt(messages, max_tokens)
        except TfchatError as e:  # a role the template has no place for
            raise ApiError(str(e), param="messages") from None
        if prompt.cut_tokens:
            raise ApiError(
                f"The last message is too long: it does not fit this model's context of "
                f"{self.context} tokens with room left for a reply ({prompt.cut_tokens} "
                "token(s) would be cut); shorten it.",
                param="messages", code="context_length_exceeded")
        return prompt


# --- requests ---


class Request:
    """A checked request: its jobs (one per choice), and what the response
    needs (prompt ids, echo, logprobs, stream, usage)."""

    def __init__(self, is_chat, jobs, prompt_ids, stream=False, include_usage=False, echo=False,
                 logprobs=None, dropped_messages=0):
        self.id = f"{'chatcmpl' if is_chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.is_chat = is_chat  # /v1/chat/completions, else /v1/completions
        self.jobs = jobs
        self.prompt_ids = prompt_ids
        self.stream = stream
        self.include_usage = include_usage
        self.echo = echo
        self.logprobs = logprobs
        self.dropped_messages = dropped_messages
        self.created = int(time.time())

    def usage(self):
        completion = sum(len(j.completion_ids) for j in self.jobs)
        prompt = sum(len(p) for p in self.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}


def _number(body, name, default, low=None, high=None, integer=False):
    value = body.get(name, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ApiError(f"'{name}' must be {'an integer' if integer else 'a number'}; "
                       f"received {value!r}.", param=name)
    if not math.isfinite(value):
        raise ApiError(f"'{name}' must be a finite number; received {value!r}.", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(f"'{name}' must be {bounds}; received {value!r}.", param=name)
    return value


def _flag(body, name):
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"'{name}' must be true or false; received {value!r}.", param=name)
    return value


def _stops(body):
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError("'stop' must be a string or a list of strings.", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(f"'stop' takes at most {MAX_STOP_STRINGS} strings.", param="stop")
    return tuple(s for s in stops if s)


def _sampling(body):
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise ApiError("'top_p' must be above 0.", param="top_p")
    top_k = _number(body, "top_k", 0, -1, integer=True)
    if top_k < 0:  # vLLM's "off"
        top_k = 0
    penalty = _number(body, "repetition_penalty", 1.0, 0.0)
    if penalty <= 0:
        raise ApiError("'repetition_penalty' must be above 0.", param="repetition_penalty")
    presence = _number(body, "presence_penalty", 0.0, 0.0, 2.0)
    if presence and penalty != 1.0:
        raise ApiError("Give presence_penalty or repetition_penalty, not both.",
                       param="presence_penalty")
    if _number(body, "frequency_penalty", 0.0, -2.0, 2.0):
        raise ApiError("frequency_penalty is not supported (tfchat's penalty does not count "
                       "occurrences); use presence_penalty or repetition_penalty.",
                       param="frequency_penalty")
    return Sampling(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                    repetition_penalty=float(1.0 + presence if presence else penalty))


def _max_tokens(body, served, default):
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = _number(body, name, default, 0, served.max_tokens_limit, integer=True)
    return value, name


def _common(body, served, default_tokens):
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    n = _number(body, "n", 1, 1, MAX_N, integer=True)
    seed = _number(body, "seed", None, integer=True)
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError("'stream_options' must be an object.", param="stream_options")
    if options and not stream:
        raise ApiError("'stream_options' is only allowed when 'stream' is true.",
                       param="stream_options")
    include_usage = _flag(options, "include_usage")
    max_tokens, _ = _max_tokens(body, served, default_tokens)
    return n, seed, stream, include_usage, max_tokens, _sampling(body), _stops(body)


def _jobs(n, prompt_ids, max_tokens, stop_ids, stops, sampling, seed):
    return [Job(prompt_ids=list(prompt_ids), max_new_tokens=max_tokens, stop_ids=tuple(stop_ids),
                stop_strings=tuple(stops), sampling=sampling,
                seed=None if seed is None else seed + i) for i in range(n)]


def _content(message, index):
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise ApiError("Only text content parts ({'type': 'text', 'text': ...}) are "
                               "supported.", param=f"messages[{index}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError("A message's content must be a string or a list of text parts.",
                   param=f"messages[{index}].content")


def parse_messages(raw):
    if not isinstance(raw, list) or not raw:
        raise ApiError("'messages' must be a non-empty list.", param="messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise ApiError("Each message must be an object with 'role' and 'content'.",
                           param=f"messages[{index}]")
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(f"Unknown role {role!r} in messages[{index}]; the roles are "
                           f"{', '.join(ROLES)}.", param=f"messages[{index}].role")
        messages.append(Message("system" if role == "developer" else role,
                                _content(message, index)))
    return messages


def chat_request(body, served):
    if not served.chats:
        raise ApiError(f"{served.name} is a {served.run.config.objective} run, not trained on a "
                       "chat template: it serves only /v1/completions.", status=404,
                       kind="not_found_error")
    n, seed, stream, include_usage, max_tokens, sampling, stops = _common(
        body, served, DEFAULT_CHAT_TOKENS)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ApiError("logprobs are not supported for chat completions; /v1/completions "
                       "returns them (render the conversation with the run's template).",
                       param="logprobs")
    messages = parse_messages(body.get("messages"))
    prompt = served.chat_prompt(messages, max_tokens)
    stop_strings = (*stops, *chat_stop_strings(served.tokenizer))
    jobs = _jobs(n, prompt.ids, max_tokens, served.generator.chat_stop_ids(), stop_strings,
                 sampling, seed)
    return Request(True, jobs, [prompt.ids] * n, stream=stream, include_usage=include_usage,
                   dropped_messages=prompt.dropped_messages)


def _prompts(raw, served):
    """A completion `prompt`: a string, a list of strings, a list of token
    ids, or a list of lists of ids -> lists of ids."""
    if isinstance(raw, str):
        return [served.tokenize(raw)]
    if isinstance(raw, list) and raw:
        if all(isinstance(p, str) for p in raw):
            return [served.tokenize(p) for p in raw]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
            raw = [raw]
        if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool)
                                                 for t in p) for p in raw):
            size = served.tokenizer.vocabulary_size
            if any(not 0 <= t < size for p in raw for t in p):
                raise ApiError(f"Token ids must be in 0..{size - 1}.", param="prompt")
            return [list(p) for p in raw]
    raise ApiError("'prompt' must be a string, a list of strings, a list of token ids or a "
                   "list of lists of token ids.", param="prompt")


def completion_request(body, served):
    n, seed, stream, include_usage, max_tokens, sampling, stops = _common(
        body, served, DEFAULT_COMPLETION_TOKENS)
    if "prompt" not in body:
        raise ApiError("'prompt' is required.", param="prompt")
    prompts = _prompts(body["prompt"], served)
    for ids in prompts:
        if len(ids) >= served.context:
            raise ApiError(f"The prompt is {len(ids)} tokens; this model's context is "
                           f"{served.context} tokens.", param="prompt",
                           code="context_length_exceeded")
    echo = _flag(body, "echo")
    logprobs = _number(body, "logprobs", None, 0, MAX_TOP_LOGPROBS, integer=True)
    if stream and (echo or logprobs is not None):
        raise ApiError("'echo' and 'logprobs' are not supported with 'stream'.", param="stream")
    if len(prompts) * n > MAX_N * 4:
        raise ApiError(f"At most {MAX_N * 4} choices (prompts times n) per request.", param="n")
    # A chat model ends its text where its turn ends (as vLLM stops at a
    # model's end-of-turn token).
    stop_ids = served.generator.chat_stop_ids() if served.chats else served.tokenizer.stop_ids
    if _flag(body, "ignore_eos"):  # vLLM's extension: exactly max_tokens, for benchmarks
        stop_ids = ()
    jobs, prompt_ids = [], []
    for ids in prompts:
        jobs += _jobs(n, ids, max_tokens, stop_ids, stops, sampling, seed)
        prompt_ids += [ids] * n
    return Request(False, jobs, prompt_ids, stream=stream, include_usage=include_usage,
                   echo=echo, logprobs=logprobs)


# --- responses ---


def finish_reason(job):
    return "stop" if job.finish_reason == "stop" else "length"


def trim_to_stop(job, served):
    """A job ended by a stop string keeps the tokens up to the one that
    completed it (vLLM counts them so): its usage."""
    if job.finish_reason != "stop" or not job.stop_strings:
        return
    for k in range(len(job.completion_ids) + 1):
        text = served.detokenize(job.completion_ids[:k])
        if any(s in text for s in job.stop_strings):
            job.completion_ids = job.completion_ids[:k]
            return


def chat_response(request, served):
    return {
        "id": request.id, "object": "chat.completion", "created": request.created,
        "model": served.name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": job.text},
                     "logprobs": None, "finish_reason": finish_reason(job)}
                    for i, job in enumerate(request.jobs)],
        "usage": request.usage(),
    }


def _completion_logprobs(request, served, prompt_ids, job):
    """OpenAI's `logprobs` of a choice. A stop id that ended the completion
    is scored too (as vLLM does): lm-evaluation-harness drops the last
    position of an `echo` request as the generated one."""
    completion = job.completion_ids + ([job.stop_token] if job.stop_token is not None else [])
    full = list(prompt_ids) + completion
    logprobs, tops = served.score(full, top=request.logprobs or 0)
    skip = 0 if request.echo else len(prompt_ids)
    texts = served.token_texts(full[skip:])
    # Where each token starts in the choice's text: the length of the text
    # before it, decoded whole (a token holding part of a character's bytes
    # shows as U+FFFD alone, so summing token texts would drift).
    shown = full[skip:]
    before = served.generator.decode([shown[:i] for i in range(len(shown))]) if shown else []
    offsets = [len(text.rstrip("\ufffd")) for text in before]
    return {"tokens": texts, "token_logprobs": logprobs[skip:],
            "top_logprobs": tops[skip:] if request.logprobs else None, "text_offset": offsets}


def completion_response(request, served):
    choices = []
    for i, (job, prompt_ids) in enumerate(zip(request.jobs, request.prompt_ids)):
        prefix = served.detokenize(prompt_ids) if request.echo else ""
        choice = {"index": i, "text": prefix + job.text, "logprobs": None,
                  "finish_reason": finish_reason(job)}
        if request.logprobs is not None:
            choice["logprobs"] = _completion_logprobs(request, served, prompt_ids, job)
        choices.append(choice)
    return {"id": request.id, "object": "text_completion", "created": request.created,
            "model": served.name, "choices": choices, "usage": request.usage()}


def chunk(request, served, index, text=None, finish=None, first=False):
    """One streamed chunk of choice `index`: its new text, or its end."""
    base = {"id": request.id, "created": request.created, "model": served.name}
    if request.is_chat:
        delta = {} if finish else {"content": text}
        if first:
            delta = {"role": "assistant", "content": ""}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {**base, "object": "chat.completion.chunk", "choices": [choice]}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        body = {**base, "object": "text_completion", "choices": [choice]}
    if request.include_usage:
        body["usage"] = None
    return body


def usage_chunk(request, served):
    body = {"id": request.id, "created": request.created, "model": served.name,
            "object": "chat.completion.chunk" if request.is_chat else "text_completion",
            "choices": [], "usage": request.usage()}
    return body



def feedback_record(body):
    """A judgement from the web page as a preference record, the same
    `python -m tfchat.chat --feedback` writes: `{"messages": [...], "reply":
    "...", "label": true|false}` (thumbs up or down on a reply to the
    conversation `messages`), or `{"messages", "chosen", "rejected"}` (one
    reply over another to the same conversation)."""
    from tfchat.data.preferences import labelled_record, pair_record

    if not isinstance(body, dict):
        raise ApiError("The feedback must be a JSON object.")
    messages = parse_messages(body.get("messages"))
    if "label" in body:
        if not isinstance(body["label"], bool) or not isinstance(body.get("reply"), str):
            raise ApiError("Feedback with 'label' needs 'reply' (a string) and 'label' "
                           "(true or false).", param="label")
        if not body["reply"].strip():
            raise ApiError("The reply is empty; an empty reply teaches nothing (DPO refuses "
                           "it).", param="reply")
        return labelled_record(messages, [Message("assistant", body["reply"])], body["label"])
    chosen, rejected = body.get("chosen"), body.get("rejected")
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise ApiError("Feedback needs 'reply' and 'label', or 'chosen' and 'rejected' "
                       "(strings).", param="chosen")
    if not (chosen.strip() and rejected.strip()):
        raise ApiError("A reply is empty; an empty reply teaches nothing (DPO refuses it).",
                       param="chosen")
    if chosen == rejected:
        raise ApiError("'chosen' and 'rejected' are the same reply.", param="rejected")
    return pair_record(messages, [Message("assistant", chosen)], [Message("assistant", rejected)])
