"""tfchat.evaluation.table (one evaluation table with bootstrap intervals)
and the continuation metrics of a causal run's evaluation."""

import json
import os

import numpy as np
import pytest

from tfchat.evaluation import table, text_metrics
from tfchat.evaluation.language_model import held_out_continuations

HYPS = ["the cat sat on the mat", "a dog ran", "hello there friend", "it is raining today",
        "the cat is black", "we went home early", "good morning to you", "no idea at all"]
REFS = ["the cat sat on a mat", "the dog ran away", "hi there friend", "today it rains",
        "the cat is white", "we went home late", "good morning", "i have no idea"]


def test_bootstrap_intervals_contain_the_value_and_are_seeded():
    flat, rows = table.generation_metrics(HYPS, REFS, seed=3)
    assert {r["name"] for r in rows} == {"bleu", "chrf", "meteor", "rouge_1", "rouge_2",
                                         "rouge_l", "rouge_lsum"}
    for row in rows:
        low, high = row["ci"]
        assert low <= row["value"] <= high, row
        assert low < high and row["count"] == len(HYPS)
        assert row["ci_level"] == 0.95 and row["resamples"] == 1000 and row["seed"] == 3
        assert flat[row["name"]] == row["value"]
    assert flat["bleu"] == pytest.approx(text_metrics.bleu(HYPS, REFS))
    assert flat["meteor_matching"] in ("exact+stem", "exact+stem+synonyms")
    again = table.generation_metrics(HYPS, REFS, seed=3)[1]
    assert again == rows
    other = table.generation_metrics(HYPS, REFS, seed=4)[1]
    assert [r["ci"] for r in other] != [r["ci"] for r in rows]


def test_bootstrap_mean_by_direct_resampling():
    values = np.arange(20, dtype=float) ** 2
    low, high = table.bootstrap_mean(values, resamples=500, seed=7)
    rng = np.random.default_rng(7)
    means = values[rng.integers(0, 20, size=(500, 20))].mean(axis=1)
    assert [low, high] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    assert table.bootstrap_mean([1.0]) is None


def test_bootstrap_corpus_bleu_recomputes_the_score():
    from sacrebleu import corpus_bleu

    low, high = table.bootstrap_corpus("bleu", HYPS, REFS, resamples=200, seed=1)
    rng = np.random.default_rng(1)
    scores = []
    for picks in rng.integers(0, len(HYPS), size=(200, len(HYPS))):
        scores.append(corpus_bleu([HYPS[i] for i in picks], [[REFS[i] for i in picks]]).score)
    assert [low, high] == pytest.approx(list(np.percentile(scores, [2.5, 97.5])))


def test_evaluation_table_keeps_the_flat_keys_and_counts_every_metric():
    rows = [table.mean_entry("rouge_1", [10.0, 20.0])]
    results = {"objective": "chat", "step": 5, "val_loss": 1.5, "val_tokens": 40,
               "rouge_1": 15.0, "replies": 2, "bleu_tokenize": "13a", "metrics": rows,
               "seconds": 0.5}
    out = table.evaluation_table(results)
    assert out["schema_version"] == table.SCHEMA_VERSION
    assert {k: out[k] for k in results if k != "metrics"} == \
        {k: v for k, v in results.items() if k != "metrics"}
    by_name = {r["name"]: r for r in out["metrics"]}
    assert set(by_name) == {"rouge_1", "val_loss"}
    assert by_name["val_loss"] == {"name": "val_loss", "value": 1.5, "count": 40, "ci": None}
    assert by_name["rouge_1"]["ci"] is not None
    json.dumps(out)


def test_held_out_continuations_split_documents_and_streams():
    docs = [list(range(10, 30)) + [3], [5, 6], [7]]
    pairs = held_out_continuations(docs, block_size=16, max_new_tokens=4, end_id=3)
    assert pairs == [(list(range(10, 20)), [20, 21, 22, 23]), ([5], [6])]
    stream = held_out_continuations([list(range(40))], block_size=16, max_new_tokens=8,
                                    documents=False, limit=3)
    assert stream == [(list(range(0, 8)), list(range(8, 16))),
                      (list(range(16, 24)), list(range(24, 32)))]


class _EchoGenerator:
    """Continues every prompt with its own first tokens; ids decode as letters."""

    def sampler(self, temperature):
        return None

    def generate_ids(self, prompts, new, sampler):
        return [list(p[:new]) for p in prompts]

    def decode(self, rows):
        return [" ".join(chr(ord("a") + i % 26) for i in row) for row in rows]


def test_continuations_are_scored_against_the_rest_of_the_text():
    from tfchat.evaluation.language_model import evaluate_continuations

    pairs = [([0, 1, 2], [0, 1, 2]), ([3, 4, 5], [6, 7, 8]), ([9, 10], [9, 11])]
    out = evaluate_continuations(_EchoGenerator(), pairs, batch_size=2, examples=1)
    expected, _ = table.generation_metrics(["a b c", "d e f", "j k"], ["a b c", "g h i", "j l"],
                                           prefix="continuation_")
    assert {k: out[k] for k in expected} == expected
    assert out["continuations"] == 3 and out["continuation_tokens"] == 3
    assert out["examples"] == [{"prompt": "a b c", "reference": "a b c", "continuation": "a b c"}]
    assert {r["name"] for r in out["metrics"]} == set(k for k in expected if "matching" not in k)


@pytest.mark.slow  # trains a tiny run: about 40 s on 2 busy cores
def test_a_causal_run_evaluation_reports_continuation_metrics(make_config, tmp_path, capsys):
    from tfchat import evaluate
    from tfchat.job import train

    config = make_config({"name": "continue", "objective": "causal", "train.max_steps": 30})
    train(config, verbose=0)
    run_dir = os.path.join(config.runs_dir, config.name)
    assert evaluate.main(["--run", run_dir, "--limit", "4", "--max-new-tokens", "6",
                          "--no-xla"]) == 0
    printed = capsys.readouterr().out
    assert "continuation_meteor: " in printed and "continuation:" in printed
    results = json.load(open(os.path.join(run_dir, "evaluation.json")))
    assert results["schema_version"] == table.SCHEMA_VERSION
    assert "val_perplexity" in results and results["continuations"] >= 1
    assert results["continuation_tokens"] == 6
    names = {r["name"]: r for r in results["metrics"]}
    for name in ("bleu", "chrf", "meteor", "rouge_1", "rouge_2", "rouge_l", "rouge_lsum"):
        key = f"continuation_{name}"
        assert 0 <= results[key] <= 100
        assert names[key]["value"] == results[key]
        assert names[key]["count"] == results["continuations"]
    assert names["val_perplexity"]["count"] == results["val_tokens"] > 0
    # The repetitive corpus is learnt: its continuations share characters.
    assert results["continuation_chrf"] > 0


def test_nested_results_print_one_key_a_line():
    from tfchat.evaluation.table import format_plain

    text = format_plain({"val_loss": 1.23456, "task": {"task": "qa", "f1": 50.0},
                         "groups": {"a": {"bleu": 1.0}}})
    assert text.splitlines() == ["val_loss: 1.2346", "task:", "  task: qa", "  f1: 50.0000",
                                 "groups:", "  a:", "    bleu: 1.0000"]


def test_bootstrap_of_a_statistic_resamples_examples():
    from tfchat.evaluation.table import bootstrap_statistic

    true = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
    predicted = np.array([0, 1, 0, 0, 1, 1, 1, 0, 1, 0])
    accuracy = lambda i: float((true[i] == predicted[i]).mean())  # noqa: E731
    low, high = bootstrap_statistic(accuracy, len(true), resamples=500, seed=3)
    rng = np.random.default_rng(3)
    direct = [accuracy(rng.integers(0, 10, 10)) for _ in range(500)]
    assert [low, high] == pytest.approx(list(np.percentile(direct, [2.5, 97.5])))
    assert low <= 0.7 <= high
    assert bootstrap_statistic(accuracy, 1) is None
