"""Serving many generations at once: `BatchingEngine` decodes every request
being served in one batch, and lets requests join and leave it between
compiled calls (continuous batching at the granularity of a chunk of
tokens), so 16 clients cost little more per step than one.

Each call of `Generator.advance` runs the rows' prompts and tokens so far
through the model (one parallel prefill, which builds that call's KV cache)
and then decodes up to `chunk_tokens` tokens per row with the cache. A
request that arrives mid-reply of others waits at most one chunk; a request
whose client went away is dropped at the next chunk.

Rows share a call only when they share sampling settings and stop ids (one
keras-hub sampler per call). A request with a `seed` and a temperature above
0 is decoded in calls of its own, with the sampler reseeded from its seed
and position at each chunk, so its reply does not depend on what else the
server is doing. Greedy rows need no seed: batched or alone, they give the
same text (`Generator.advance` keeps each row's window its own).

A single thread runs the model (TensorFlow uses every core for one call);
`submit` may be called from any thread, and each `Job` reports its text and
end through the callbacks it was given, from the engine's thread.
"""

import collections
import dataclasses
import threading
import time

from tfchat.errors import TfchatError
from tfchat.inference.generator import DecodingRow, TextStream


class QueueFull(TfchatError):
    """More requests are waiting than the engine's `max_waiting`."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The settings one compiled call shares (see module docs)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


@dataclasses.dataclass(eq=False)
class Job:
    """One sequence to generate. `on_text(piece)` gets its text as it is
    released (`TextStream`), `on_done(job)` once when it ends; then
    `finish_reason` is "stop" (a stop id or string), "length"
    (`max_new_tokens`), "cancelled" or "error", `completion_ids` holds the
    new ids and `text` their text (cut before a stop string)."""

    prompt_ids: list
    max_new_tokens: int
    stop_ids: tuple = ()
    stop_strings: tuple = ()
    sampling: Sampling = Sampling()
    seed: int = None
    on_text: object = None
    on_done: object = None
    finish_reason: str = None
    completion_ids: list = dataclasses.field(default_factory=list)
    text: str = ""
    cancelled: bool = False
    error: object = None  # what failed, when finish_reason is "error"
    stop_token: int = None  # the stop id that ended it (not in completion_ids)
    submitted_at: float = 0.0
    first_token_at: float = None

    def cancel(self):
        """Frees the job's place in the batch at the next chunk."""
        self.cancelled = True


class _Served:
    """A job in the batch: its decoding row and its text so far."""

    def __init__(self, job, row, stream):
        self.job, self.row, self.stream = job, row, stream

    @property
    def group(self):
        job = self.job
        seeded = job.seed is not None and job.sampling.temperature > 0
        # A seeded sampling row is a group of its own (module docs).
        return (job.sampling, tuple(sorted(job.stop_ids)), id(job) if seeded else None)


class BatchingEngine:
    """Serves `Job`s with `generator` (a `tfchat.inference.generator.
    Generator`), up to `max_batch` rows at a time, with up to
    `max_waiting` more queued (`submit` raises `QueueFull` beyond that)."""

    def __init__(self, generator, max_batch=16, max_waiting=64, chunk_tokens=8):
        if max_batch < 1 or max_waiting < 0 or chunk_tokens < 1:
            raise ValueError(f"max_batch and chunk_tokens must be >= 1 and max_waiting >= 0. "
                             f"Received: {max_batch}, {chunk_tokens}, {max_waiting}")
        self.generator = generator
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.chunk_tokens = chunk_tokens
        self._waiting = collections.deque()
        self._served = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tfchat-batching", daemon=True)
        self._thread.start()
        self.calls = 0  # compiled calls so far
        self.batch_rows = 0  # rows over all calls (batch_rows / calls: the mean batch)

    # --- any thread ---

    def submit(self, jobs):
        """Queues `jobs` (all or none: the choices of one request)."""
        with self._wake:
            if len(self._waiting) + len(jobs) > self.max_waiting + max(
                0, self.max_batch - len(self._served)
            ):
                raise QueueFull(
                    f"The server is busy: {len(self._served)} sequences are being generated "
                    f"and {len(self._waiting)} are waiting (limit {self.max_waiting}). "
                    "Try again shortly."
                )
            now = time.perf_counter()
            for job in jobs:
                job.submitted_at = now
                self._waiting.append(job)
            self._wake.notify()

    @property
    def load(self):
        """(rows being generated, jobs waiting)."""
        with self._wake:
            return len(self._served), len(self._waiting)

    def close(self):
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # --- the engine's thread ---

    def _loop(self):
        while True:
            with self._wake:
                while not (self._waiting or self._served or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    return
                self._admit()
            self._drop_cancelled()
            if self._served:
                try:
                    self._chunk()
                except Exception as error:  # noqa: BLE001
                    # A failed call fails its jobs, not the server.
                    for served in list(self._served):
                        served.job.error = error
                        self._end(served, "error")
                    self._served = []

    def _admit(self):
        first_id = self.generator.tokenizer.first_id
        while self._waiting and len(self._served) < self.max_batch:
            job = self._waiting.popleft()
            if job.cancelled:
                self._end(_Served(job, None, None), "cancelled")
                continue
            row = DecodingRow(job.prompt_ids, job.max_new_tokens, first_id)
            served = _Served(job, row, TextStream(job.stop_strings))
            self._served.append(served)
            if row.done:  # max_new_tokens 0
                self._end(served, row.finish)

    def _drop_cancelled(self):
        for served in [s for s in self._served if s.job.cancelled]:
            self._end(served, "cancelled")

    def _chunk(self):
        # The group of the longest-served row goes first: no group starves.
        group = self._served[0].group
        members = [s for s in self._served if s.group == group]
        sampling = members[0].job.sampling
        seed = None
        if group[2] is not None:
            job = members[0].job
            seed = (job.seed * 1_000_003 + len(members[0].row.new)) % (2**31 - 1)
        sampler = self.generator.sampler(sampling.temperature, sampling.top_k, sampling.top_p, seed)
        new_tokens = min(self.chunk_tokens, max(s.row.remaining for s in members))
        gained = self.generator.advance(
            [s.row for s in members], new_tokens, sampler, members[0].job.stop_ids,
            sampling.repetition_penalty,
        )
        self.calls += 1
        self.batch_rows += len(members)
        now = time.perf_counter()
        # One tokenizer call for every row's text: per-row calls took longer
        # than the model's call at 16 rows (benchmarks/RESULTS.md, Serving).
        grew = [s for s, ids in zip(members, gained) if ids or s.row.done]
        texts = self.generator.decode([s.row.new for s in grew]) if grew else []
        decoded = {id(s): t for s, t in zip(grew, texts)}
        for served, ids in zip(members, gained):
            job = served.job
            if ids and job.first_token_at is None:
                job.first_token_at = now
            piece = served.stream.update(decoded.get(id(served), served.stream.decoded))
            if served.row.done and not served.stream.stopped:
                piece += served.stream.finish()
            if piece and job.on_text:
                job.on_text(piece)
            if served.stream.stopped:
                self._end(served, "stop")
            elif served.row.done:
                self._end(served, served.row.finish)
        # Rows that ended go; the rest move to the back, so groups take turns.
        self._served = [s for s in self._served if s not in members] + [
            s for s in members if s.job.finish_reason is None
        ]

    def _end(self, served, reason):
        job = served.job
        if served.row is not None:
            job.completion_ids = list(served.row.new)
            job.stop_token = served.row.stop_token
            job.text = served.stream.text
        job.finish_reason = reason
        if served in self._served:
            self._served.remove(served)
        if job.on_done:
            job.on_done(job)
