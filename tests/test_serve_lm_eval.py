"""lm-evaluation-harness against `python -m tfchat.serve`: its
`local-completions` model, with the server's own tokenizer (vLLM-style
/tokenizer_info, /tokenize), scores a small multiple-choice task written
into tmp_path (no download) through /v1/completions echo + logprobs, and
its accuracy is the one tfchat's own model ranks the choices to in-process.

The questions are the chat run's conversations: the context is the chat
template's prompt for a question (and, for half of them, the start of the
answer); the choices are the three answers (or their ends).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import CHAT_PAIRS, write_jsonl, write_text
from served import running_server

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.slow

TASK = "tfchat_chat_pairs"


def questions(template):
    """6 multiple-choice docs from CHAT_PAIRS, rendered in `template`."""
    from tfchat.data.chat_template import Message, render_text

    answers = [a for _, a in CHAT_PAIRS]
    docs = []
    for i, (question, answer) in enumerate(CHAT_PAIRS):
        prompt = render_text([Message("user", question)], template, add_generation_prompt=True)
        # The whole answer, the choices in a different order each time.
        order = answers[i:] + answers[:i]
        docs.append({"context": prompt, "choices": order, "label": order.index(answer)})
        # The end of the answer after its start: every choice is the end of
        # an answer cut at the same place.
        cut = len(answer) // 2
        ends = [a[cut:] if len(a) > cut else a for a in answers]
        docs.append({"context": prompt + answer[:cut], "choices": ends[::-1],
                     "label": ends[::-1].index(answer[cut:])})
    return docs


def write_task(folder, docs):
    data = write_jsonl(folder / "questions.jsonl", docs)
    # target_delimiter "": the choices follow the context directly, as the
    # reply follows the chat template's assistant prefix.
    yaml = (
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(data)}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\n"
        "target_delimiter: \"\"\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    write_text(folder / f"{TASK}.yaml", yaml)
    return str(folder)


def tfchat_scores(run, docs):
    """Each doc's choices' summed log-probabilities given its context, scored by the run's model in-process: context and
    choice tokenized separately (as lm-eval's remote tokenizer does, without
    special tokens) and concatenated."""
    tokenizer = run.tokenizer

    def ids(text):
        return tokenizer.tokenize(tf.constant([text])).to_list()[0]

    every = []
    for doc in docs:
        context = ids(doc["context"])
        scores = []
        for choice in doc["choices"]:
            continuation = ids(choice)
            sequence = context + continuation
            logits = run.backbone(tf.constant([sequence], tf.int32), training=False)
            logprobs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1).numpy()[0]
            scores.append(sum(float(logprobs[p - 1, sequence[p]])
                              for p in range(len(context), len(sequence))))
        every.append(scores)
    return every


def accuracy(scores, docs):
    """The share of docs whose label is the choice scored highest."""
    return float(np.mean([int(np.argmax(s)) == d["label"] for s, d in zip(scores, docs)]))


def test_lm_eval_multiple_choice_matches_tfchat_ranking(chat_run, tmp_path, monkeypatch):
    from tfchat.run import load_run

    # `datasets` and the Hub never go online: the task's data is a local file.
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")

    run = load_run(chat_run)
    docs = questions(run.tokenizer.chat_template)
    scores = tfchat_scores(run, docs)
    expected = accuracy(scores, docs)
    # The model learnt its conversations by heart.
    assert expected >= 5 / 6, expected
    tasks = write_task(tmp_path / "tasks", docs)
    context = run.backbone.block_size

    with running_server(chat_run) as url:
        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=(f"base_url={url}/v1/completions,tokenizer_backend=remote,"
                        f"model=chat,num_concurrent=4,max_retries=1,tokenized_requests=True,"
                        f"max_length={context},timeout=120"),
            tasks=[TASK],
            task_manager=lm_eval.tasks.TaskManager(include_path=tasks),
            batch_size=1,
            log_samples=True,
        )
    metrics = results["results"][TASK]
    assert metrics["acc,none"] == pytest.approx(expected), metrics
    samples = results["samples"][TASK]
    assert len(samples) == len(docs)
    # Each choice's log-likelihood is the one tfchat computes in-process.
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        served = [float(r[0]) for r in sample["filtered_resps"]]
        np.testing.assert_allclose(served, scores[sample["doc_id"]], rtol=1e-4, atol=1e-4)
