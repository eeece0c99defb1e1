"""Concurrent streaming clients against `python -m tfchat.serve`.

    python benchmarks/serve_throughput.py                      # trains a small chat run
    python benchmarks/serve_throughput.py --run runs/default --chunk-tokens 4 8 16
    python benchmarks/serve_throughput.py --profile-only       # only the in-process profile

The same set of requests (`--requests`, default 16: streamed /v1/completions
with a chat-template prompt, `max_tokens` 64, temperature 0, `ignore_eos`
so every reply is 64 tokens; the served
usage chunk counts the tokens) is sent by 1 client one request after
another (the one-at-a-time baseline) and by N concurrent clients (threads
with their own connection, each taking the next request from a shared
list). Reported per N: completion tokens/s over all clients (all tokens
over the wall time from the first request sent to the last token), p50 and
p95 time to first token (request sent to the first non-empty text piece),
each the median of `--repeats` repetitions after one warm-up pass, and the
throughput as a multiple of the one-at-a-time throughput.

Without --run a small chat run is trained first in a temporary folder
(char tokenizer, 2 layers, width 64, context 128, on the test suite's three
conversations); speed does not depend on what it learnt.

`--profile` (or `--profile-only`) also times `Generator.advance` in-process
(the call the server's engine makes once per chunk) at batch 1 and 16, for
1 new token (about one prefill over the window plus one decoding step) and
for `chunk` new tokens, so the per-call and per-token costs and how they
scale with the batch are measured.
"""

import argparse
import contextlib
import http.client
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

PAIRS = [
    ("ping", "pong"),
    ("how are you?", "i am fine, thank you."),
    ("what is your name?", "my name is tiny bot."),
]
QUESTIONS = [q for q, _ in PAIRS] + [
    "hello", "tell me a story", "what time is it?", "where do you live?", "ping ping",
]

RUN_SETTINGS = {
    "objective": "chat",
    "tokenizer": {"kind": "char", "vocab_size": 1000},
    "model": {"num_layers": 2, "num_heads": 2, "hidden_dim": 64, "intermediate_dim": 0,
              "block_size": 128, "dropout": 0.0},
    "train": {"batch_size": 8, "max_steps": 60, "learning_rate": 1e-2,
              "min_learning_rate": 1e-3, "warmup_steps": 5, "eval_interval": 60,
              "log_interval": 30, "eval_batches": 2, "sample_tokens": 0, "jit_compile": False,
              "strategy": "default", "precision": "float32", "seed": 1234},
    "data": {"val_fraction": 0.1, "packing": True},
}


def train_run(folder, steps):
    from tfchat import config as config_lib
    from tfchat.job import train

    data = os.path.join(folder, "chats.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for _ in range(20):
            for question, answer in PAIRS:
                f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                                 {"role": "assistant", "content": answer}]}))
                f.write("\n")
    settings = json.loads(json.dumps(RUN_SETTINGS))
    settings["train"]["max_steps"] = steps
    settings["train"]["eval_interval"] = steps
    settings.update(name="bench", runs_dir=os.path.join(folder, "runs"))
    settings["data"]["path"] = data
    train(config_lib.build_config(overrides=settings), verbose=0)
    return os.path.join(folder, "runs", "bench")


# The server with its engine's time accounted (--profile): the same command,
# with Generator.advance (the compiled call), Generator.decode (the rows'
# text after each chunk, one call for all of them) and BatchingEngine._chunk (one chunk: the call, the text,
# the callbacks) timed, the totals written to $SERVE_PROFILE every 0.2 s.
PROFILED_SERVER = """
import json, os, sys, threading, time
from tfchat.inference import batching, generator
totals = {}
def timed(owner, name, key, count_rows=False):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            entry = totals.setdefault(key, [0, 0.0, 0])
            entry[0] += 1
            entry[1] += time.perf_counter() - start
            if count_rows:
                entry[2] += len(args[1])
    setattr(owner, name, wrapper)
timed(generator.Generator, "advance", "advance", count_rows=True)
timed(generator.Generator, "decode", "text")
timed(batching.BatchingEngine, "_chunk", "chunk")
def dump():
    while True:
        time.sleep(0.2)
        with open(os.environ["SERVE_PROFILE"] + ".tmp", "w") as f:
            json.dump({**totals, "cpu": time.process_time()}, f)
        os.replace(os.environ["SERVE_PROFILE"] + ".tmp", os.environ["SERVE_PROFILE"])
threading.Thread(target=dump, daemon=True).start()
from tfchat import serve
sys.exit(serve.main(sys.argv[1:]))
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(run_path, *args, timeout=240, profile_file=None):
    """(host, port) while `python -m tfchat.serve --run run_path *args` runs
    (with its engine timed into `profile_file` when given)."""
    port = free_port()
    log = tempfile.TemporaryFile("w+")
    command = ["-c", PROFILED_SERVER] if profile_file else ["-m", "tfchat.serve"]
    env = {**os.environ, "SERVE_PROFILE": profile_file or ""}
    process = subprocess.Popen(
        [sys.executable, *command, "--run", run_path, "--port", str(port), *args],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"tfchat.serve exited with {process.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"tfchat.serve did not answer in {timeout} s:\n{log.read()}")
            time.sleep(0.3)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def prompts(count):
    """Chat-template prompts (tfchat's template, as the run is trained)."""
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    return [f"<|user|>{q}<|end|><|assistant|>" for q in questions]


def stream_one(address, prompt, max_tokens):
    """(time to first text, completion tokens, end time) of one streamed
    /v1/completions request."""
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})
    connection = http.client.HTTPConnection(*address, timeout=600)
    try:
        sent = time.perf_counter()
        connection.request("POST", "/v1/completions", body,
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
        first, tokens, done, seen = None, None, False, []
        for line in response:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            seen.append(data)
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if first is None and any(c.get("text") for c in chunk["choices"]):
                first = time.perf_counter() - sent
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        if tokens is None or first is None:
            raise RuntimeError(f"a stream without {'usage' if tokens is None else 'text'} "
                               f"({'with' if done else 'without'} [DONE]); prompt {prompt!r}, "
                               f"its events: {b' | '.join(seen)[-1500:]!r}")
        return first, tokens, time.perf_counter()
    finally:
        connection.close()


def percentile(values, q):
    values = sorted(values)
    position = (len(values) - 1) * q
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def one_pass(address, requests, clients, max_tokens):
    """Serves `requests` with `clients` threads; (tokens/s, p50, p95 TTFT)."""
    todo = queue.Queue()
    for prompt in requests:
        todo.put(prompt)
    results, errors = [], []

    def client():
        while True:
            try:
                prompt = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results.append(stream_one(address, prompt, max_tokens))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    tokens = sum(r[1] for r in results)
    wall = max(r[2] for r in results) - start
    firsts = [r[0] for r in results]
    return tokens / wall, percentile(firsts, 0.5), percentile(firsts, 0.95), tokens


def measure(run_path, chunk, clients_list, requests, max_tokens, repeats, max_batch):
    rows = {}
    with running_server(run_path, "--chunk-tokens", str(chunk), "--max-batch",
                        str(max_batch)) as address:
        for clients in clients_list:
            one_pass(address, requests, clients, max_tokens)  # warm-up: traces, shapes
        # The levels take turns, so a change in the machine's load falls on
        # every level alike.
        passes = {clients: [] for clients in clients_list}
        for _ in range(repeats):
            for clients in clients_list:
                passes[clients].append(one_pass(address, requests, clients, max_tokens))
        for clients in clients_list:
            rows[clients] = tuple(statistics.median(p[i] for p in passes[clients])
                                  for i in range(4))
            print(f"  chunk {chunk}, {clients} client(s): {rows[clients][0]:.1f} tokens/s, "
                  f"TTFT p50 {rows[clients][1] * 1000:.0f} ms, p95 {rows[clients][2] * 1000:.0f}"
                  f" ms ({[round(p[0], 1) for p in passes[clients]]} tokens/s)", flush=True)
    return rows


def table(results, clients_list):
    lines = ["| --chunk-tokens | clients | completion tokens/s | × one at a time | "
             "TTFT p50 | TTFT p95 |", "| --- | --- | --- | --- | --- | --- |"]
    for chunk, rows in results.items():
        base = rows[1][0] if 1 in rows else rows[min(rows)][0]
        for clients in clients_list:
            rate, p50, p95, _ = rows[clients]
            name = "1 (one at a time)" if clients == 1 else str(clients)
            lines.append(f"| {chunk} | {name} | {rate:.1f} | {rate / base:.2f}x | "
                         f"{p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms |")
    return "\n".join(lines)


def profile(run_path, chunk, repeats, prompt_text, grown):
    """Medians of `Generator.advance` at batch 1 and 16 over the window of
    `prompt_text` and `grown` tokens after it (the middle of a reply), for 1
    and `chunk` new tokens."""
    import tensorflow as tf

    from tfchat.inference.generator import DecodingRow, Generator
    from tfchat.run import load_run

    run = load_run(run_path, forward_pass=False)
    generator = Generator(run.backbone, run.tokenizer)
    sampler = generator.sampler(0.0)
    prompt = run.tokenizer.tokenize(tf.constant([prompt_text])).to_list()[0]
    prompt += [prompt[-1]] * grown  # any ids: the time does not depend on them
    window = len(prompt)
    lines = ["| batch | new tokens | advance (ms, median) | per row-token (ms) |",
             "| --- | --- | --- | --- |"]
    figures = {}
    for batch in (1, 16):
        for new in (1, chunk):
            times = []
            for i in range(repeats + 1):
                rows = [DecodingRow(prompt, new, run.tokenizer.first_id) for _ in range(batch)]
                start = time.perf_counter()
                generator.advance(rows, new, sampler, ())
                if i:  # the first traces
                    times.append(time.perf_counter() - start)
            figures[batch, new] = statistics.median(times)
            lines.append(f"| {batch} | {new} | {figures[batch, new] * 1000:.1f} | "
                         f"{figures[batch, new] * 1000 / (batch * new):.2f} |")
    for batch in (1, 16):
        step = (figures[batch, chunk] - figures[batch, 1]) / (chunk - 1)
        call = figures[batch, 1] - step
        lines.append(f"\nbatch {batch}: per call (prefill over {window} tokens and overhead) "
                     f"{call * 1000:.1f} ms, per decoding step {step * 1000:.1f} ms")
    return "\n".join(lines)


def read_profile(path):
    with open(path) as f:
        return json.load(f)


def profile_server(run_path, chunk, requests, clients, max_tokens, max_batch):
    """Where the server's time goes in one pass of `clients` clients (after
    a warm-up pass), from its engine's own timers."""
    path = os.path.join(tempfile.mkdtemp(prefix="serve-profile-"), "profile.json")
    with running_server(run_path, "--chunk-tokens", str(chunk), "--max-batch", str(max_batch),
                        profile_file=path) as address:
        one_pass(address, requests, clients, max_tokens)
        time.sleep(0.5)
        before = read_profile(path)
        client_cpu = time.process_time()
        start = time.perf_counter()
        rate, p50, p95, tokens = one_pass(address, requests, clients, max_tokens)
        wall = time.perf_counter() - start
        client_cpu = time.process_time() - client_cpu
        time.sleep(0.5)
        after = read_profile(path)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def delta(key, i):
        return after.get(key, [0, 0, 0])[i] - before.get(key, [0, 0, 0])[i]

    calls, advance, rows = delta("advance", 0), delta("advance", 1), delta("advance", 2)
    chunks, text = delta("chunk", 1), delta("text", 1)
    server_cpu = after["cpu"] - before["cpu"]
    return "\n".join([
        f"{clients} clients, --chunk-tokens {chunk}: {tokens} tokens in {wall:.2f} s "
        f"({rate:.1f} tokens/s)",
        f"  Generator.advance: {calls} calls, mean batch {rows / max(calls, 1):.1f} rows, "
        f"{advance:.2f} s ({100 * advance / wall:.0f}% of the wall time), "
        f"{1000 * advance / max(calls, 1):.1f} ms a call",
        f"  the rest of the engine's chunks (TextStream.add {text:.2f} s, callbacks): "
        f"{chunks - advance:.2f} s ({100 * (chunks - advance) / wall:.0f}%)",
        f"  engine outside chunks (waiting for requests, admitting): {wall - chunks:.2f} s "
        f"({100 * (wall - chunks) / wall:.0f}%)",
        f"  CPU time: server process {server_cpu:.2f} s, benchmark clients {client_cpu:.2f} s "
        f"(of {wall * os.cpu_count():.2f} core-seconds)",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="Run folder (default: train a small one).")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-tokens", type=int, nargs="+", default=[8])
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--profile", action="store_true",
                        help="Also time Generator.advance in-process.")
    parser.add_argument("--profile-only", action="store_true")
    args = parser.parse_args(argv)
    if 1 not in args.clients:
        args.clients = [1, *args.clients]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    folder = None
    run_path = args.run
    if run_path is None:
        folder = tempfile.mkdtemp(prefix="serve-bench-")
        start = time.perf_counter()
        run_path = train_run(folder, args.train_steps)
        print(f"trained {run_path} in {time.perf_counter() - start:.0f} s", flush=True)
    try:
        print(f"{args.requests} requests, max_tokens {args.max_tokens}, temperature 0, "
              f"{args.repeats} repetitions (medians), {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        if not args.profile_only:
            results = {}
            for chunk in args.chunk_tokens:
                results[chunk] = measure(run_path, chunk, sorted(args.clients),
                                         prompts(args.requests), args.max_tokens, args.repeats,
                                         args.max_batch)
            print(f"\nload average now {os.getloadavg()[0]:.1f}\n")
            print(table(results, sorted(args.clients)))
            if len(results) > 1:
                best = max(results, key=lambda c: results[c][max(args.clients)][0])
                print(f"\nbest at {max(args.clients)} clients: --chunk-tokens {best}")
        if args.profile or args.profile_only:
            for chunk in args.chunk_tokens:
                for clients in sorted(args.clients):
                    print()
                    print(profile_server(run_path, chunk, prompts(args.requests), clients,
                                         args.max_tokens, args.max_batch), flush=True)
            print()
            print(profile(run_path, args.chunk_tokens[0], max(args.repeats, 5), prompts(1)[0],
                          args.max_tokens // 2))
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
