"""Scores of a task run's greedy replies (`tfchat.data.tasks`: each record a
one-exchange conversation), the task's own metrics:

    translation     BLEU and chrF (sacrebleu, corpus level) and METEOR (nltk,
                    `tfchat.evaluation.text_metrics`), 0-100. BLEU is tokenized
                    for the target language: `target_lang` (an ISO 639-1 code
                    or a language name) where the records give it, else the
                    references' script (`tfchat.evaluation.chat.bleu_tokenization`).
                    Records of several target languages are also scored per
                    language (`by_target_lang`), each with its own tokenization.
    summarisation   ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures (rouge-score on
                    multilingual words, `text_metrics.rouge`), 0-100.
    qa              exact match and token F1 with SQuAD v1.1's answer
                    normalisation, the best over a record's acceptable answers,
                    0-100 (`squad_exact_match`, `squad_f1`).

`ReplyCache` lets the chat evaluation and these scores share one greedy
generation of the validation replies. `evaluate_task` also gives the
evaluation table's rows of these metrics (`task_bleu`, `task_f1`, ...:
`tfchat.evaluation.table`), with bootstrap intervals.
"""

import collections
import re
import statistics
import string

from tfchat.evaluation import table, text_metrics
from tfchat.evaluation.chat import bleu_tokenization, greedy_replies

METRICS = {
    "translation": ("bleu", "chrf", "meteor"),
    "summarisation": ("rouge_1", "rouge_2", "rouge_lsum"),
    "qa": ("exact_match", "f1"),
}

# ISO 639-1 codes of the languages `bleu_tokenization` knows by name (its
# chatterbot-corpus names); other codes fall back to the script.
_LANGUAGE_NAMES = {
    "zh": "chinese", "ja": "japanese", "ko": "korean", "th": "thai",
    "en": "english", "nl": "dutch", "fr": "french", "de": "german", "id": "indonesian",
    "it": "italian", "pt": "portuguese", "es": "spanish", "sv": "swedish", "tr": "turkish",
    "yo": "yoruba", "bn": "bengali", "he": "hebrew", "hi": "hindi", "mr": "marathi",
    "or": "oriya", "fa": "persian", "ru": "russian", "ta": "tamil", "te": "telugu",
    "uk": "ukrainian", "ur": "urdu",
}


def language_name(code):
    """`bleu_tokenization`'s name for a `target_lang`: "de", "de-AT" and
    "zh_Hant" become "german" and "chinese"; a name stays as it is."""
    code = (code or "").strip().lower()
    return _LANGUAGE_NAMES.get(re.split(r"[-_]", code)[0], code)


# --- SQuAD v1.1 ---------------------------------------------------------
# Written after the official evaluation script of SQuAD v1.1
# (evaluate-v1.1.py: normalize_answer, f1_score, exact_match_score,
# metric_max_over_ground_truths), which these follow line for line: ASCII
# punctuation (string.punctuation) only, and an empty answer scores F1 0
# against anything (v1.1's rule; v2.0 scores two empty answers 1).


def normalize_answer(text):
    """Lowercase, strip punctuation, remove the articles a/an/the, and
    fix whitespace (SQuAD v1.1's order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction, truth):
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction, truths):
    """Token F1 (0-1) of `prediction` against the best of `truths` (a
    string or several)."""
    truths = [truths] if isinstance(truths, str) else truths
    return max(_f1(prediction, truth) for truth in truths)


def squad_exact_match(prediction, truths):
    """1.0 when `prediction` normalises to one of `truths`, else 0.0."""
    truths = [truths] if isinstance(truths, str) else truths
    return float(any(normalize_answer(prediction) == normalize_answer(t) for t in truths))


def score_qa(replies, references):
    """{"exact_match", "f1"}: SQuAD's means over the replies, 0-100;
    `references` a list of each reply's acceptable answers."""
    if not replies:
        return {"exact_match": 0.0, "f1": 0.0}
    return {
        "exact_match": 100 * statistics.fmean(
            squad_exact_match(r, t) for r, t in zip(replies, references)),
        "f1": 100 * statistics.fmean(squad_f1(r, t) for r, t in zip(replies, references)),
    }


# --- translation and summarisation -----------------------------------------


def score_translation(replies, references, target_langs=None, wordnet=None):
    """{"bleu", "chrf", "meteor", "bleu_tokenize", "meteor_matching"} and,
    with more than one target language, "by_target_lang": the same for each
    ({language: {..., "replies"}}). BLEU's tokenization: that of the one
    target language where all records give the same, else the script's."""
    target_langs = list(target_langs or [""] * len(replies))
    languages = sorted(set(target_langs))

    def scores(hyps, refs, language):
        tokenize = bleu_tokenization(refs, language_name(language) or None)
        meteor, _, matching = text_metrics.meteor(hyps, refs, wordnet=wordnet)
        return {"bleu": text_metrics.bleu(hyps, refs, tokenize=tokenize),
                "chrf": text_metrics.chrf(hyps, refs), "meteor": meteor,
                "bleu_tokenize": tokenize, "meteor_matching": matching}

    results = scores(replies, references, languages[0] if len(languages) == 1 else "")
    if len(languages) > 1:
        results["by_target_lang"] = {}
        for language in languages:
            rows = [i for i, lang in enumerate(target_langs) if lang == language]
            results["by_target_lang"][language or "unknown"] = {
                **scores([replies[i] for i in rows], [references[i] for i in rows], language),
                "replies": len(rows),
            }
    return results


def score_summaries(replies, references):
    """{"rouge_1", "rouge_2", "rouge_lsum"}, 0-100."""
    scores = text_metrics.rouge(replies, references, types=("rouge1", "rouge2", "rougeLsum"))
    return {"rouge_1": scores["rouge1"][0], "rouge_2": scores["rouge2"][0],
            "rouge_lsum": scores["rougeLsum"][0]}


def score_task(task, replies, records, wordnet=None):
    """The task's metrics (`METRICS`) of `replies` to the conversations of
    `records` (`tfchat.data.tasks.TaskRecord`s)."""
    if task == "qa":
        return score_qa(replies, [r.references for r in records])
    references = [r.references[0] for r in records]
    if task == "translation":
        return score_translation(replies, references, [r.target_lang for r in records], wordnet)
    return score_summaries(replies, references)


def table_rows(task, replies, records, scores, wordnet=None):
    """The evaluation table's rows (`tfchat.evaluation.table`) of the task's
    metrics, named task_<metric>, with bootstrap intervals: sentences
    resampled for BLEU and chrF, per-example values for the means."""
    n = len(replies)
    if task == "qa":
        truths = [r.references for r in records]
        return [
            table.mean_entry("task_exact_match", [100 * squad_exact_match(p, t)
                                                  for p, t in zip(replies, truths)],
                             implementation="SQuAD v1.1 exact match"),
            table.mean_entry("task_f1", [100 * squad_f1(p, t) for p, t in zip(replies, truths)],
                             implementation="SQuAD v1.1 token F1"),
        ]
    references = [r.references[0] for r in records]
    if task == "translation":
        tokenize = scores["bleu_tokenize"]
        _, meteor_each, matching = text_metrics.meteor(replies, references, wordnet=wordnet)
        return [
            table.entry("task_bleu", scores["bleu"], n,
                        table.bootstrap_corpus("bleu", replies, references, tokenize),
                        implementation="sacrebleu corpus_bleu", tokenize=tokenize),
            table.entry("task_chrf", scores["chrf"], n,
                        table.bootstrap_corpus("chrf", replies, references),
                        implementation="sacrebleu corpus_chrf"),
            table.mean_entry("task_meteor", meteor_each, implementation="nltk meteor_score",
                             matching=matching),
        ]
    rouge = text_metrics.rouge(replies, references, types=("rouge1", "rouge2", "rougeLsum"))
    return [table.mean_entry(f"task_{key}", rouge[kind][1],
                             implementation=f"rouge-score {kind} F-measure")
            for kind, key in (("rouge1", "rouge_1"), ("rouge2", "rouge_2"),
                              ("rougeLsum", "rouge_lsum"))]


class ReplyCache:
    """A `Generator` that remembers its greedy chat replies by prompt, so
    that scoring the same validation prompts twice generates them once.
    Sampled replies (temperature above 0) are never cached."""

    def __init__(self, generator):
        self.generator = generator
        self._replies = {}

    def __getattr__(self, name):
        return getattr(self.generator, name)

    def chat(self, conversations, max_new_tokens=200, temperature=0.0, **options):
        if temperature != 0.0 or options:
            return self.generator.chat(conversations, max_new_tokens, temperature=temperature,
                                       **options)
        keys = [(tuple(c), max_new_tokens) for c in conversations]
        todo = [key for key in dict.fromkeys(keys) if key not in self._replies]
        if todo:
            texts = self.generator.chat([list(key[0]) for key in todo], max_new_tokens,
                                        temperature=0.0)
            self._replies.update(zip(todo, texts))
        return [self._replies[key] for key in keys]


def evaluate_task(generator, task, conversations, batch_size=32, max_new_tokens=128,
                  wordnet=None):
    """({"task", the task's metrics, "replies"}, their evaluation-table rows
    `table_rows`): greedy replies to the user message of each of
    `conversations` (`TaskConversation`s, one exchange each) scored against
    its record's references."""
    prompts = [list(c[:-1]) for c in conversations]
    replies = greedy_replies(generator, prompts, max_new_tokens, batch_size)
    records = [c.record for c in conversations]
    scores = score_task(task, replies, records, wordnet)
    rows = table_rows(task, replies, records, scores, wordnet)
    return {"task": task, **scores, "replies": len(replies)}, rows
