"""Input at scale (issue 19): reading prepared token shards against
tokenizing on the fly, and `python -m tfchat.prepare`'s time and memory.

    python benchmarks/input_scale.py throughput --mb 100 --rounds 3
    python benchmarks/input_scale.py prepare --mb 1000

Both write a synthetic corpus first (into --work, default /tmp/tfchat_input):
lines of 4 to 20 words drawn from a Zipf-like 20,000-word vocabulary, made
of letters a-z, so it tokenizes like English text of that size. The
tokenizer is SentencePiece BPE 8,000 (tokenizer.kind bpe) learnt from the
corpus' first 5 MB, the same in every arm.

throughput: the causal-LM training pipeline (`tfchat.objectives.causal`
datasets: a text stream cut into 256-token blocks, shuffled, batch 64), read
as fast as it goes for --seconds, once from the raw text (tokenized on the
fly) and once from a prepared folder of the same corpus (`tfchat.prepare`);
tokens/s of each, per round, alternating, each in a fresh process; the
median and the ratio.

prepare: `python -m tfchat.prepare` on the corpus in a fresh process whose
RSS is read every half second; its wall time, tokens/s and peak RSS, and the
RSS when 10%, 50% and 100% of the tokens were written (flat memory: the
same at each). Also the same on a tenth of the corpus, for the peak RSS
against the size.
"""

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time

WORK = "/tmp/tfchat_input"
WORDS = 20_000
BLOCK, BATCH = 256, 64


def write_corpus(path, megabytes, seed=0):
    if os.path.exists(path) and os.path.getsize(path) >= megabytes * 1_000_000:
        return path
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(WORDS)]
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(WORDS)))
    target = megabytes * 1_000_000
    written = 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        while written < target:
            words = rng.choices(vocab, cum_weights=cumulative, k=12_000)
            lines, start = [], 0
            while start < len(words) - 20:
                n = rng.randint(4, 20)
                lines.append(" ".join(words[start:start + n]).capitalize() + ".\n")
                start += n
            chunk = "".join(lines)
            f.write(chunk)
            written += len(chunk)
    os.replace(path + ".tmp", path)
    return path


def tokenizer_run(work, corpus):
    """A prepared folder of the corpus' first 5 MB: its tokenizer is the
    one every arm uses (`--tokenizer-from` needs a run, so the tokenizer
    is read from the folder by path)."""
    sample = os.path.join(work, "sample.txt")
    if not os.path.exists(sample):
        with open(corpus, encoding="utf-8") as f, open(sample, "w", encoding="utf-8") as out:
            out.write(f.read(5_000_000))
    folder = os.path.join(work, "sample_prepared")
    if not os.path.exists(os.path.join(folder, "index.json")):
        subprocess.run([sys.executable, "-m", "tfchat.prepare", "--data.path", sample,
                        "--tokenizer.kind", "bpe", "--tokenizer.vocab_size", "8000",
                        "--out", folder], check=True)
    return os.path.join(folder, "tokenizer")


READ_SCRIPT = """
import json, sys, time
from tfchat import config as config_lib
from tfchat.data.tokenizer import load_tokenizer
from tfchat.objectives import causal
from tfchat.objectives.base import read_corpus
path, tokenizer_dir, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
config = config_lib.build_config(overrides={
    "data": {"path": path}, "tokenizer": {"kind": "bpe", "vocab_size": 8000},
    "model": {"block_size": %d}, "train": {"batch_size": %d, "shuffle_buffer": 1000}})
tokenizer = load_tokenizer(tokenizer_dir)
ds = causal.datasets(config, read_corpus(config), tokenizer, splits=["train"])["train"]
it = iter(ds)
for _ in range(5):  # warm up: tracing, the shuffle buffer's first fill
    next(it)
start, batches = time.perf_counter(), 0
while time.perf_counter() - start < seconds:
    next(it)
    batches += 1
elapsed = time.perf_counter() - start
print("RESULT " + json.dumps({"tokens_per_s": batches * %d * %d / elapsed}))
""" % (BLOCK, BATCH, BLOCK, BATCH)


def read_speed(path, tokenizer_dir, seconds):
    proc = subprocess.run([sys.executable, "-c", READ_SCRIPT, path, tokenizer_dir, str(seconds)],
                          capture_output=True, text=True, env={**os.environ,
                                                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    line = next(row for row in proc.stdout.splitlines() if row.startswith("RESULT "))
    return json.loads(line[7:])["tokens_per_s"]


def prepare_with_rss(corpus, tokenizer_dir, out):
    """Runs tfchat.prepare on `corpus` with the tokenizer of the folder
    holding `tokenizer_dir` (copied as a run's), sampling its RSS."""
    run = os.path.join(os.path.dirname(out), "tokenizer_run")
    if not os.path.exists(os.path.join(run, "config.json")):
        os.makedirs(run, exist_ok=True)
        subprocess.run(["cp", "-r", tokenizer_dir, os.path.join(run, "tokenizer")], check=True)
        with open(os.path.join(run, "config.json"), "w") as f:
            json.dump({"tokenizer": {"kind": "bpe", "vocab_size": 8000}}, f)
    subprocess.run(["rm", "-rf", out])
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tfchat.prepare", "--data.path", corpus,
                             "--tokenizer-from", run, "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []  # (seconds, rss MiB, tokens written so far)
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(row.split()[1]) for row in f if row.startswith("VmHWM")) / 1024
        except (OSError, StopIteration):
            break
        tokens = 0
        try:
            with open(os.path.join(out, "index.json")) as f:
                index = json.load(f)
            tokens = sum(s["tokens"] for s in index["splits"].values())
        except (OSError, ValueError):
            pass
        samples.append((time.perf_counter() - start, rss, tokens))
        time.sleep(0.5)
    out_text, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(err[-3000:])
    wall = time.perf_counter() - start
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
    tokens = sum(s["tokens"] for s in index["splits"].values())
    peak = max(s[1] for s in samples)
    at = {}
    for share in (0.1, 0.5, 1.0):
        reached = [s for s in samples if s[2] >= share * tokens]
        at[share] = reached[0][1] if reached else peak
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "peak_rss_mib": peak, "peak_rss_at_share_mib": at,
            "shards": sum(len(s["shards"]) for s in index["splits"].values())}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "prepare"])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--work", default=WORK)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    corpus = write_corpus(os.path.join(args.work, f"corpus_{args.mb}mb.txt"), args.mb)
    tokenizer_dir = tokenizer_run(args.work, corpus)
    if args.what == "throughput":
        folder = os.path.join(args.work, f"prepared_{args.mb}mb")
        result = prepare_with_rss(corpus, tokenizer_dir, folder)
        print(f"prepare {args.mb} MB: {json.dumps(result)}", flush=True)
        raw, prepared = [], []
        for r in range(args.rounds):
            raw.append(read_speed(corpus, tokenizer_dir, args.seconds))
            prepared.append(read_speed(folder, tokenizer_dir, args.seconds))
            print(f"round {r}: on the fly {raw[-1]:,.0f} tokens/s, prepared "
                  f"{prepared[-1]:,.0f} tokens/s", flush=True)
        a, b = statistics.median(raw), statistics.median(prepared)
        print(f"median: on the fly {a:,.0f}, prepared {b:,.0f} tokens/s: {b / a:.1f}x")
    else:
        for mb in (args.mb // 10, args.mb):
            path = write_corpus(os.path.join(args.work, f"corpus_{mb}mb.txt"), mb)
            result = prepare_with_rss(path, tokenizer_dir, os.path.join(args.work, f"p{mb}"))
            print(f"prepare {mb} MB: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
