"""Throughput of the data-hygiene stage (`tfchat.data.hygiene`), each step
alone and all together, against tokenizing the same text alone.

    python benchmarks/hygiene_speed.py --mb 100

A synthetic JSONL-like corpus of `--mb` megabytes (documents of 20-200 words
from a 5,000-word vocabulary, 5% exact and 5% near duplicates, 2% with an
e-mail address or phone number, 1% mojibake) is generated in memory; each
step runs over every document, timed with `time.perf_counter`, and the peak
memory of the whole process (`resource.getrusage`) is reported. Tokenizing
is a SentencePiece BPE of 2,000 pieces trained on the first megabyte, run
with tensorflow-text in batches of 1,024 documents, as `tfchat.prepare` runs it.
"""

import argparse
import random
import resource
import time

WORDS = 5000


def corpus(megabytes, seed=0):
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                  for _ in range(WORDS)]
    documents, size = [], 0
    while size < megabytes * 1e6:
        words = [rng.choice(vocabulary) for _ in range(rng.randint(20, 200))]
        roll = rng.random()
        if roll < 0.05 and documents:
            text = rng.choice(documents)  # exact duplicate
        elif roll < 0.10 and documents:
            near = rng.choice(documents).split()
            near[rng.randrange(len(near))] = rng.choice(vocabulary)
            text = " ".join(near)
        else:
            text = " ".join(words) + "."
            if roll < 0.12:
                text += f" write to {rng.choice(vocabulary)}@example.com or call +44 20 7946 0{rng.randint(100, 999)}."
            elif roll < 0.13:
                text = text.replace("a", "Ã©", 3)
        documents.append(text)
        size += len(text.encode())
    return documents


def timed(name, function, documents, megabytes):
    start = time.perf_counter()
    for document in documents:
        function(document)
    seconds = time.perf_counter() - start
    return name, seconds, len(documents) / seconds, megabytes / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="Corpus size in megabytes.")
    args = parser.parse_args()

    from tfchat.data import hygiene, pii

    documents = corpus(args.mb)
    megabytes = sum(len(d.encode()) for d in documents) / 1e6
    rows = []
    rows.append(timed("fix_unicode (ftfy, NFC, whitespace)", hygiene.normalize_text, documents,
                      megabytes))
    exact = hygiene.ExactDeduplicator()
    rows.append(timed("dedup exact", exact.seen, documents, megabytes))
    near = hygiene.NearDeduplicator()
    rows.append(timed("dedup near (MinHash LSH)", near.is_duplicate, documents, megabytes))
    rows.append(timed("repetition filter", hygiene.repetition_score, documents, megabytes))
    languages = hygiene.LanguageFilter(["en"])
    rows.append(timed("languages (py3langid)", languages.keep, documents, megabytes))
    rows.append(timed("scrub_pii all", pii.scrub, documents, megabytes))
    # Without the language filter: the synthetic words are no language, so
    # it would remove nearly every document and spare the later steps.
    stage = hygiene.Hygiene(fix_unicode=True, dedup="near", max_repetition=0.3, scrub_pii="all")
    rows.append(timed("all together (without languages)", stage.process, documents, megabytes))
    print(f"the stage kept {stage.report.kept:,} of {stage.report.read:,} documents: "
          f"{stage.report.to_dict()['removed']}")

    import tensorflow as tf

    from tfchat.data.tokenizer import SentencePieceTokenizer

    head, size = [], 0
    for d in documents:
        head.append(d)
        size += len(d)
        if size > 1e6:
            break
    tokenizer = SentencePieceTokenizer.train(head, 2000)
    start = time.perf_counter()
    for i in range(0, len(documents), 1024):
        tokenizer.tokenize(tf.constant(documents[i:i + 1024]))
    seconds = time.perf_counter() - start
    rows.append(("tokenizing alone (BPE 2,000, tensorflow-text)", seconds, len(documents) / seconds,
                 megabytes / seconds))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokenize_seconds = rows[-1][1]
    print(f"{len(documents):,} documents, {megabytes:.1f} MB; peak memory {peak:,.0f} MB "
          f"(the whole process, corpus included)\n")
    print("| step | seconds | documents/s | MB/s | x tokenizing's time |")
    print("| --- | --- | --- | --- | --- |")
    for name, seconds, docs, mbs in rows:
        print(f"| {name} | {seconds:.1f} | {docs:,.0f} | {mbs:.2f} | {seconds / tokenize_seconds:.1f}x |")


if __name__ == "__main__":
    main()
