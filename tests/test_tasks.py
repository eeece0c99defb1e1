"""Task formats on chat fine-tuning (`tfchat.data.tasks`,
`tfchat.evaluation.tasks`): translation, summarisation and question
answering records read as conversations with a prompt template, their bad
input, SQuAD's normalisation and F1, and each format trained end to end and
scored by its own metrics."""

import json
import os

import pytest

from conftest import CHAT_TINY, as_cli_args, nest, write_chat_jsonl, write_jsonl, write_text
from tfchat import config as config_lib
from tfchat import evaluate, fit, objectives
from tfchat.config import DataConfig
from tfchat.data import tasks
from tfchat.data.chat_template import Message
from tfchat.data.dialogues import is_dialogue_data
from tfchat.errors import TfchatError
from tfchat.evaluation import tasks as task_scores

# A deterministic word-substitution "language": every English word has one
# translation, word for word. Validation records repeat training ones (a
# tiny char-level model memorises six sentences in well under 100 steps).
LEXICON = {"the": "lo", "cat": "mek", "dog": "rup", "sees": "vat", "eats": "nom", "a": "ka",
           "fish": "sil", "big": "gor", "red": "pim"}
SENTENCES = ["the cat sees a fish", "the dog eats a fish", "a big dog sees the cat",
             "the red cat eats", "a dog sees a red fish", "the big cat eats a fish"]


def translate(sentence):
    return " ".join(LEXICON[word] for word in sentence.split())


def translation_records(repeats=10):
    return [{"source": s, "target": translate(s), "source_lang": "en", "target_lang": "xx"}
            for _ in range(repeats) for s in SENTENCES]


SUMMARIES = [("the cat sat on the mat all day.", "cat sat"),
             ("a dog ran far in the cold park.", "dog ran"),
             ("the bird sang a song at dawn.", "bird sang")]
QA = [("who sat?", "the cat sat.", "the cat"),
      ("who ran?", "a dog ran.", ["a dog", "dog"]),
      ("what is 2+2?", None, "four")]


def summary_records(repeats=20):
    return [{"document": d, "summary": s} for _ in range(repeats) for d, s in SUMMARIES]


def qa_records(repeats=20):
    return [{"question": q, "answer": a, **({"context": c} if c else {})}
            for _ in range(repeats) for q, c, a in QA]


# --- SQuAD v1.1's normalisation, exact match and F1 -------------------------


@pytest.mark.parametrize("text,expected", [
    ("The Cat", "cat"),
    ("  an   apple, a pear!  ", "apple pear"),
    ("Theatre and the anthem", "theatre and anthem"),  # articles as words only
    ("U.S.A.", "usa"),
    ("the", ""),
    ("«Ça va»", "«ça va»"),  # string.punctuation is ASCII only, as in SQuAD v1.1
])
def test_squad_normalisation(text, expected):
    assert task_scores.normalize_answer(text) == expected


def test_squad_f1_and_exact_match_by_hand():
    # "the big red barn" -> [big, red, barn]; "a red barn door" -> [red, barn, door]:
    # 2 common, precision 2/3, recall 2/3, F1 2/3.
    assert task_scores.squad_f1("a red barn door", "the big red barn") == pytest.approx(2 / 3)
    # [cat] against [black, cat]: precision 1, recall 1/2, F1 2/3.
    assert task_scores.squad_f1("The cat.", "black cat") == pytest.approx(2 / 3)
    # A repeated token matches as often as both have it: [x, x] against [x]:
    # 1 common, precision 1/2, recall 1, F1 2/3.
    assert task_scores.squad_f1("x x", "x") == pytest.approx(2 / 3)
    assert task_scores.squad_f1("dog", "cat") == 0.0
    assert task_scores.squad_f1("the", "the") == 0.0  # both empty: 0 in v1.1
    # The best over several answers.
    assert task_scores.squad_f1("dog", ["cat", "a dog"]) == 1.0
    assert task_scores.squad_exact_match("The Dog!", ["cat", "dog"]) == 1.0
    assert task_scores.squad_exact_match("dogs", "dog") == 0.0
    scores = task_scores.score_qa(["the cat", "dog", "five"], [("cat",), ("a dog", "dog"), ("four",)])
    assert scores == {"exact_match": pytest.approx(200 / 3), "f1": pytest.approx(200 / 3)}


# --- reading task records -------------------------------------------------------


def data(path, **settings):
    return DataConfig(path=path, **settings)


def test_each_task_becomes_a_conversation_with_its_default_prompt(tmp_path):
    cases = {
        "translation": (translation_records(1)[:1],
                        "Translate from en to xx: the cat sees a fish", "lo mek vat ka sil"),
        "summarisation": (summary_records(1)[:1], "Summarise: the cat sat on the mat all day.",
                          "cat sat"),
        "qa": (qa_records(1)[:1], "Context: the cat sat. Question: who sat?", "the cat"),
    }
    for task, (records, prompt, reply) in cases.items():
        path = write_jsonl(tmp_path / f"{task}.jsonl", records * 10)
        assert tasks.corpus_task(data(path)) == task and is_dialogue_data(data(path))
        corpus = tasks.TaskCorpus.for_data(data(path))
        conversation = corpus.conversations("train")[0]
        assert list(conversation) == [Message("user", prompt), Message("assistant", reply)]
        assert conversation.record.references == (reply,)
        assert corpus.num_conversations == 10 and len(corpus.conversations("val")) == 1


def test_optional_fields_and_templates(tmp_path):
    render = tasks.render_prompt
    assert render("translation", {"source": "hi"}) == "Translate: hi"
    assert render("translation", {"source": "hi", "target_lang": "de"}) == "Translate to de: hi"
    assert render("qa", {"question": "why?"}) == "Question: why?"
    assert render("qa", {"question": "why?"}, "{context}|{question}") == "|why?"
    # Several answers: the first is trained on, all are references.
    path = write_jsonl(tmp_path / "qa.jsonl", qa_records(4))
    corpus = tasks.TaskCorpus.for_data(data(path, prompt_template="Q: {question} {{C}}: {context}"))
    conversation = corpus.conversations("train")[1]
    assert conversation[0].content == "Q: who ran? {C}: a dog ran."
    assert conversation[1].content == "a dog" and conversation.record.references == ("a dog", "dog")
    assert corpus.conversations("train")[2][0].content == "Q: what is 2+2? {C}: "
    # data.task none reads the same file as conversations: it has none.
    with pytest.raises(TfchatError, match='line 1: expected an object {"messages"'):
        objectives.get("chat").read_data(config_lib.Config(data=data(path, task="none")))


def test_objective_auto_trains_task_records_as_chat(tmp_path):
    for name, records in [("tr", translation_records(1)), ("sum", summary_records(1)),
                          ("qa", qa_records(1))]:
        path = write_jsonl(tmp_path / f"{name}.jsonl", records)
        config = config_lib.build_config(overrides={"data": {"path": path}})
        assert objectives.resolve(config).objective == "chat"
    # Explicit data.task on conversations that are not JSONL records.
    yaml = write_text(tmp_path / "c.yaml", "conversations:\n- - Hi\n  - Hello\n")
    with pytest.raises(TfchatError, match="data.task qa reads JSONL records"):
        tasks.corpus_task(data(yaml, task="qa"))
    # A template on conversations is a mistake, not ignored.
    chats = write_chat_jsonl(tmp_path / "chats.jsonl", repeats=2)
    with pytest.raises(TfchatError, match="data.prompt_template renders task records"):
        tasks.TaskCorpus.for_data(data(chats, prompt_template="{source}"))
    assert tasks.TaskCorpus.for_data(data(chats)) is None


def test_group_field_of_task_records(tmp_path):
    records = [{**r, "lang_pair": f"en-{i % 2}"} for i, r in enumerate(translation_records(2))]
    path = write_jsonl(tmp_path / "tr.jsonl", records)
    corpus = tasks.TaskCorpus.for_data(data(path, group_field="lang_pair"))
    assert corpus.groups("train")[:3] == ["en-0", "en-1", "en-0"]
    assert len(corpus.groups("val")) == len(corpus.conversations("val"))
    assert tasks.TaskCorpus.for_data(data(path)).groups("val") is None
    path = write_jsonl(tmp_path / "bad.jsonl", records[:1] + translation_records(1))
    with pytest.raises(TfchatError, match=r"bad.jsonl line 2: no field 'lang_pair' \(data.group_field\)\.$"):
        tasks.TaskCorpus.for_data(data(path, group_field="lang_pair"))


BAD_RECORDS = [
    ("translation", {"source": "a"}, "line 2: a translation record needs 'source' and 'target'; "
                                     "this one lacks 'target' (it has 'source')."),
    ("translation", {"source": "a", "target": 3}, 'line 2: "target" must be a non-empty string.'),
    ("translation", {"source": "a", "target": "b", "target_lang": 1},
     'line 2: "target_lang" must be a non-empty string.'),
    ("summarisation", {"document": "a", "summary": "  "}, '"summary" must be a non-empty string'),
    ("summarisation", {"text": "a"}, "lacks 'document', 'summary' (it has 'text')"),
    ("qa", {"question": "q", "answer": []}, '"answer" must be a non-empty string or a list'),
    ("qa", ["q", "a"], "line 2: expected an object with 'question', 'answer'"),
]
FIRST = {"translation": translation_records(1)[0], "summarisation": summary_records(1)[0],
         "qa": qa_records(1)[0]}


@pytest.mark.parametrize("task,record,message", BAD_RECORDS)
def test_bad_record_names_file_and_line(tmp_path, task, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [FIRST[task], record] + [FIRST[task]] * 10)
    with pytest.raises(TfchatError) as e:
        tasks.TaskCorpus.for_data(data(path))
    text = str(e.value)
    assert text.startswith(f"{path} line 2: ") and message in text and "\n" not in text


def test_fit_stops_on_a_bad_record_in_one_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "qa.jsonl", [qa_records(1)[0], {"question": "who?"}])
    code = fit.main(["--data.path", path, "--runs_dir", str(tmp_path / "runs"),
                     "--data.fix_unicode", "false"])
    assert code == 1
    assert capsys.readouterr().err == (
        f"error: {path} line 2: a qa record needs 'question' and 'answer'; this one lacks "
        "'answer' (it has 'question').\n")
    # The first record short of its reply: still read as the task it is.
    first = write_jsonl(tmp_path / "first.jsonl", [{"question": "who?"}, qa_records(1)[0]])
    assert fit.main(["--data.path", first, "--runs_dir", str(tmp_path / "runs")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {first} line 1: a qa record needs")


@pytest.mark.parametrize("task,template,message", [
    ("translation", "{document}", "names {document}, which task translation records"),
    ("translation", "{target_lang}", "must name {source}"),
    ("qa", "{question} {answer}", "names {answer}"),
    ("qa", "{question", "does not parse"),
])
def test_bad_templates(task, template, message):
    with pytest.raises(TfchatError, match=message.replace("{", r"\{").replace("}", r"\}")):
        tasks.check_template(task, template)


def test_config_checks_task_and_template():
    with pytest.raises(TfchatError, match="data.task must be one of auto, none, translation"):
        config_lib.validate(config_lib.build_config(overrides={"data": {"task": "poetry"}}))
    with pytest.raises(TfchatError, match="data.prompt_template must be a format string"):
        config_lib.validate(config_lib.build_config(
            overrides={"data": {"prompt_template": "{nope}"}}))
    assert config_lib.TASKS[2:] == tasks.TASKS


def test_help_shows_the_task_formats_and_default_templates():
    text = " ".join(fit.build_parser().format_help().split())
    assert "--data.task" in text and "--data.prompt_template" in text
    for template in tasks.DEFAULT_TEMPLATES.values():
        assert f"'{template}'" in text


# --- scoring ------------------------------------------------------------------


def test_translation_is_tokenised_for_its_target_language():
    assert task_scores.language_name("zh-TW") == "chinese"
    assert task_scores.language_name("German") == "german"
    scores = task_scores.score_translation(["我爱猫", "i like cats"], ["我爱狗", "i like dogs"],
                                           ["zh", "en"])
    assert scores["by_target_lang"]["zh"]["bleu_tokenize"] == "zh"
    assert scores["by_target_lang"]["en"]["bleu_tokenize"] == "13a"
    assert scores["by_target_lang"]["zh"]["replies"] == 1
    one = task_scores.score_translation(["i like my cats"], ["i like my cats"], ["de"])
    assert one["bleu"] == pytest.approx(100) and one["chrf"] == pytest.approx(100)
    assert "by_target_lang" not in one and one["bleu_tokenize"] == "13a"
    assert set(task_scores.METRICS["translation"]) <= set(one)


def test_summaries_score_rouge_1_2_lsum():
    scores = task_scores.score_summaries(["cat sat", "dog"], ["cat sat", "dog ran"])
    assert scores["rouge_1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert scores["rouge_2"] == pytest.approx(50)
    assert set(scores) == set(task_scores.METRICS["summarisation"])


def test_task_rows_of_the_evaluation_table():
    records = [tasks.TaskRecord("qa", ("cat",)), tasks.TaskRecord("qa", ("a dog", "dog")),
               tasks.TaskRecord("qa", ("four",))]
    replies = ["the cat", "dog", "five"]
    scores = task_scores.score_task("qa", replies, records)
    rows = {r["name"]: r for r in task_scores.table_rows("qa", replies, records, scores)}
    assert rows["task_exact_match"]["value"] == pytest.approx(scores["exact_match"])
    assert rows["task_f1"]["count"] == 3
    low, high = rows["task_f1"]["ci"]
    assert 0 <= low <= scores["f1"] <= high <= 100
    records = [tasks.TaskRecord("translation", (t,), "xx") for t in ["ka mek vat lo", "lo rup"]]
    scores = task_scores.score_task("translation", ["ka mek vat lo", "lo"], records)
    rows = task_scores.table_rows("translation", ["ka mek vat lo", "lo"], records, scores)
    assert [r["name"] for r in rows] == ["task_bleu", "task_chrf", "task_meteor"]
    assert rows[0]["value"] == scores["bleu"] and rows[0]["tokenize"] == "13a"


class CountingGenerator:
    def __init__(self):
        self.calls = []

    def chat(self, conversations, max_new_tokens=200, temperature=0.0, **options):
        self.calls.append(len(conversations))
        return [c[-1].content.upper() for c in conversations]


def test_reply_cache_generates_each_greedy_prompt_once():
    inner = CountingGenerator()
    cache = task_scores.ReplyCache(inner)
    a, b = [Message("user", "a")], [Message("user", "b")]
    assert cache.chat([a, b, a], 8) == ["A", "B", "A"]
    assert cache.chat([b, a], 8) == ["B", "A"] and inner.calls == [2]
    cache.chat([a], 8, temperature=0.7)  # sampled: never cached
    assert inner.calls == [2, 1]


# --- end to end -------------------------------------------------------------------


def settings(tmp_path, name, path, **overrides):
    return {**CHAT_TINY, "name": name, "runs_dir": str(tmp_path / "runs"), "data.path": path,
            "model.block_size": 64, **overrides}


@pytest.mark.slow
def test_translation_trains_and_its_bleu_rises(tmp_path):
    from tfchat.job import train
    from tfchat.run import Run, build_model, load_run

    path = write_jsonl(tmp_path / "translation.jsonl", translation_records())
    flat = settings(tmp_path, "tr", path, **{"train.max_steps": 80, "train.eval_interval": 80,
                                             "data.prompt_template": "{target_lang}: {source}"})
    train(config_lib.build_config(overrides=nest(flat)), verbose=0)
    run = load_run(str(tmp_path / "runs" / "tr"))
    assert run.config.data.task == "auto" and run.step == 80
    trained = run.objective.evaluate(run, max_new_tokens=32, jit_compile=False)["task"]
    # Step 0: the same run's model as built, before any training.
    fresh = Run(run.path, run.config, run.tokenizer,
                build_model(run.config, run.tokenizer.vocabulary_size), step=0)
    before = run.objective.evaluate(fresh, max_new_tokens=32, jit_compile=False)["task"]
    assert trained["task"] == "translation" and trained["replies"] == 6
    assert trained["bleu_tokenize"] == "13a"  # "xx" names no language: the script's
    assert trained["bleu"] > before["bleu"] + 50, (before, trained)
    assert trained["chrf"] > before["chrf"] and trained["meteor"] > before["meteor"]
    assert trained["meteor_matching"].startswith("exact+stem")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["summarisation", "qa"])
def test_summarisation_and_qa_train_and_evaluate_reports_their_metrics(tmp_path, task):
    records = summary_records() if task == "summarisation" else qa_records()
    path = write_jsonl(tmp_path / f"{task}.jsonl", records)
    flat = settings(tmp_path, task, path, **{"data.task": task, "train.max_steps": 80,
                                             "train.eval_interval": 80})
    flat.pop("objective")  # auto: task records are chat data
    assert fit.main(as_cli_args(flat)) == 0
    run_dir = os.path.join(tmp_path, "runs", task)
    assert evaluate.main(["--run", run_dir, "--no-xla", "--max-new-tokens", "16"]) == 0
    with open(os.path.join(run_dir, "evaluation.json"), encoding="utf-8") as f:
        results = json.load(f)
    assert results["objective"] == "chat" and results["task"]["task"] == task
    assert results["task"]["replies"] == 6
    rows = {row["name"]: row for row in results["metrics"]}
    for metric in task_scores.METRICS[task]:
        assert results["task"][metric] == pytest.approx(100), results["task"]
        assert rows[f"task_{metric}"]["value"] == pytest.approx(100)
        assert rows[f"task_{metric}"]["count"] == 6 and rows[f"task_{metric}"]["ci"]
