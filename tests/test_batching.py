"""The serving engine (`tfchat.inference.batching`): rows that join and
leave a batch between chunks get the text they would get alone; a cancelled
row frees its place; the queue is bounded; a seeded sampled reply does not
depend on other traffic; streamed text never shows half a character."""

import threading

import pytest
import tensorflow as tf

from tfchat.data.tokenizer import CharTokenizer
from tfchat.inference.batching import BatchingEngine, Job, QueueFull, Sampling
from tfchat.inference.generator import Generator, TextStream
from test_generate import ALPHABET, random_model

PROMPTS = ["hello world", "a", "the quick brown fox jumps", "zz"]


@pytest.fixture(scope="module")
def generator():
    tokenizer = CharTokenizer.train([ALPHABET])
    # A short context, so long replies slide their windows mid-batch.
    return Generator(random_model(tokenizer.vocabulary_size, block_size=24), tokenizer)


def ids(generator, text):
    return generator.tokenizer.tokenize(tf.constant(text)).numpy().tolist()


def alone(generator, prompt, new_tokens, **sampling):
    sampler = generator.sampler(**sampling)
    return generator.generate_ids([prompt], new_tokens, sampler, stop_at_eos=False)[0]


class Collector:
    """Callbacks that record a job's pieces and its end."""

    def __init__(self):
        self.pieces = []
        self.done = threading.Event()

    def job(self, prompt, new_tokens, **fields):
        return Job(prompt_ids=prompt, max_new_tokens=new_tokens, on_text=self.pieces.append,
                   on_done=lambda job: self.done.set(), **fields)


def run_jobs(engine, specs, stagger=None):
    """Submits (prompt ids, tokens, fields) jobs, waiting for `stagger`
    jobs' first text before the rest; returns (jobs, collectors)."""
    collectors = [Collector() for _ in specs]
    jobs = [c.job(p, n, **f) for c, (p, n, f) in zip(collectors, specs)]
    first = stagger or len(jobs)
    engine.submit(jobs[:first])
    if stagger:
        # The others join while the first are mid-reply.
        while not any(c.pieces for c in collectors[:first]):
            threading.Event().wait(0.01)
        engine.submit(jobs[first:])
    for c in collectors:
        assert c.done.wait(120)
    return jobs, collectors


def test_rows_joining_a_batch_get_their_text_alone(generator):
    engine = BatchingEngine(generator, max_batch=8, chunk_tokens=3)
    try:
        prompts = [ids(generator, p) for p in PROMPTS]
        lengths = [30, 7, 12, 40]  # ends at different chunks, and past the context
        specs = [(p, n, {}) for p, n in zip(prompts, lengths)]
        jobs, collectors = run_jobs(engine, specs, stagger=2)
        for job, c, prompt, n in zip(jobs, collectors, prompts, lengths):
            expected = alone(generator, prompt, n, temperature=0.0)
            assert job.completion_ids == expected
            assert job.finish_reason == "length"
            assert "".join(c.pieces) == generator.decode([expected])[0] == job.text
        assert engine.batch_rows > engine.calls  # rows did share calls
    finally:
        engine.close()


def test_stop_ids_and_strings_end_a_row_as_the_generator_does(generator):
    engine = BatchingEngine(generator, max_batch=4, chunk_tokens=4)
    try:
        prompt = ids(generator, "hello world")
        reference = alone(generator, prompt, 20, temperature=0.0)
        text = generator.decode([reference])[0]
        stop_id = reference[5]
        stop_string = text[8:10]
        specs = [(prompt, 20, {"stop_ids": (stop_id,)}),
                 (prompt, 20, {"stop_strings": (stop_string,)})]
        (by_id, by_string), collectors = run_jobs(engine, specs)
        assert by_id.finish_reason == "stop"
        assert by_id.completion_ids == reference[: reference.index(stop_id)]
        assert by_string.finish_reason == "stop"
        assert by_string.text == text[: text.find(stop_string)]
        assert "".join(collectors[1].pieces) == by_string.text
    finally:
        engine.close()


def test_a_cancelled_row_leaves_and_the_others_finish(generator):
    engine = BatchingEngine(generator, max_batch=2, max_waiting=4, chunk_tokens=2)
    try:
        prompt = ids(generator, "abc")
        collectors = [Collector() for _ in range(3)]
        jobs = [c.job(prompt, 60) for c in collectors]
        engine.submit(jobs)
        while not collectors[0].pieces:
            threading.Event().wait(0.01)
        jobs[0].cancel()
        for c in collectors:
            assert c.done.wait(120)
        assert jobs[0].finish_reason == "cancelled"
        assert len(jobs[0].completion_ids) < 60
        # The third waited for a place; the cancelled row gave it one.
        assert [j.finish_reason for j in jobs[1:]] == ["length", "length"]
        assert engine.load == (0, 0)
    finally:
        engine.close()


def test_the_queue_is_bounded(generator):
    engine = BatchingEngine(generator, max_batch=1, max_waiting=1, chunk_tokens=1)
    try:
        prompt = ids(generator, "abc")
        engine.submit([Job(prompt_ids=prompt, max_new_tokens=200)])
        with pytest.raises(QueueFull, match="busy"):
            engine.submit([Job(prompt_ids=prompt, max_new_tokens=5) for _ in range(3)])
    finally:
        engine.close()


def test_a_seeded_sampled_reply_does_not_depend_on_other_traffic(generator):
    sampling = Sampling(temperature=1.0)
    prompt = ids(generator, "hello")
    replies = []
    for others in (0, 3):
        engine = BatchingEngine(generator, max_batch=8, chunk_tokens=3)
        try:
            specs = [(prompt, 25, {"sampling": sampling, "seed": 7})]
            specs += [(ids(generator, "zz"), 25, {"sampling": sampling})] * others
            jobs, _ = run_jobs(engine, specs)
            replies.append(jobs[0].completion_ids)
        finally:
            engine.close()
    assert replies[0] == replies[1]
    assert len(set(replies[0])) > 3


def test_text_stream_never_shows_half_a_character():
    text = "héllo wörld, 3 € and 🙂 fin"
    data = list(text.encode("utf-8"))
    stream = TextStream(["fin"])
    pieces = [stream.update(bytes(data[:n]).decode("utf-8", errors="replace"))
              for n in range(1, len(data) + 1)]
    assert all("\ufffd" not in p for p in pieces)
    assert stream.stopped
    assert "".join(pieces) == text[: text.find("fin")]
