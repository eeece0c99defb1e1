"""tfchat.evaluation.text_metrics: METEOR against nltk's own and by hand,
ROUGE against rouge-score's on English and on Chinese and Hindi."""

import pytest

from tfchat.errors import TfchatError
from tfchat.evaluation import text_metrics
from tfchat.evaluation.chat import ReplyTokenizer

PAIRS = [
    ("The cats sat on the mat.", "A cat sat on the mat."),
    ("It is a guide to action which ensures that the military always obeys the commands "
     "of the party", "It is a guide to action that ensures that the military will forever "
     "heed Party commands"),
    ("running dogs were barking loudly", "the dog barked"),
    ("nothing in common", "completely different words"),
    ("", "an empty reply"),
    ("sat the cat", "the cat sat"),
]


def test_meteor_equals_nltk_on_the_same_tokens():
    from nltk.translate.meteor_score import meteor_score

    hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    score, per_example, matching = text_metrics.meteor(hyps, refs, wordnet=False)
    assert matching == "exact+stem"
    tok = ReplyTokenizer()
    expected = [100 * meteor_score([tok.tokenize(r)], tok.tokenize(h),
                                   wordnet=text_metrics.NoSynonyms()) for h, r in PAIRS]
    assert per_example == pytest.approx(expected)
    assert score == pytest.approx(sum(expected) / len(expected))
    assert per_example[3] == 0.0 and per_example[4] == 0.0
    assert per_example[0] > 50  # cats ~ cat by stem


def test_meteor_by_hand():
    # "the cats sat" against "the cat sat on a mat": 3 matches (cats~cat
    # by stem), P = 1, R = 1/2, Fmean = PR / (0.9 P + 0.1 R) = 0.5 / 0.95;
    # one chunk of 3: penalty 0.5 (1/3)^3.
    fmean = 0.5 / 0.95
    assert text_metrics.meteor(["the cats sat"], ["the cat sat on a mat"])[1][0] == \
        pytest.approx(100 * fmean * (1 - 0.5 / 27))
    # Against "the cat sat on the mat", nltk aligns "the" with the last
    # "the" (exact matches take the latest reference word): 2 chunks.
    assert text_metrics.meteor(["the cats sat"], ["the cat sat on the mat"])[0] == \
        pytest.approx(100 * fmean * (1 - 0.5 * 8 / 27))
    # "sat the cat" against "the cat sat": all 3 match, in 2 chunks:
    # 1 - 0.5 (2/3)^3.
    assert text_metrics.meteor(["sat the cat"], ["the cat sat"])[0] == \
        pytest.approx(100 * (1 - 0.5 * 8 / 27))


class _Lemma:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


class _Synset:
    def __init__(self, *names):
        self._lemmas = [_Lemma(n) for n in names]

    def lemmas(self):
        return self._lemmas


class _TinyWordNet:
    def synsets(self, word):
        return [_Synset("big", "huge")] if word in ("big", "huge") else []


def test_meteor_synonyms_only_with_a_wordnet():
    # (nltk matches synonyms against the stems left after stemming: a
    # synonym whose stem differs, large -> larg, would not match.)
    hyp, ref = ["the big dog"], ["the huge dog"]
    # Without synonyms: 2 of 3 match, in 2 chunks: (2/3)(1 - 0.5).
    assert text_metrics.meteor(hyp, ref, wordnet=False)[0] == pytest.approx(100 / 3)
    score, _, matching = text_metrics.meteor(hyp, ref, wordnet=_TinyWordNet())
    assert matching == "exact+stem+synonyms"
    assert score == pytest.approx(100 * (1 - 0.5 / 27))


def test_wordnet_folder_that_has_none_is_an_error(tmp_path):
    with pytest.raises(TfchatError, match="no WordNet there"):
        text_metrics.load_wordnet(str(tmp_path))
    with pytest.raises(TfchatError, match="no such folder"):
        text_metrics.load_wordnet(str(tmp_path / "missing"))
    # A database without the files synonym lookups read fails now, by name,
    # not in the middle of an evaluation.
    (tmp_path / "wn").mkdir()
    for name in ("lexnames", "index.noun", "data.noun"):
        (tmp_path / "wn" / name).write_text("")
    with pytest.raises(TfchatError, match=r"lacks index\.sense, index\.verb"):
        text_metrics.load_wordnet(str(tmp_path / "wn"))
    # The machine's own nltk data, if any, decides the default; never a download.
    _, matching = text_metrics.resolve_wordnet(None)
    assert matching in ("exact+stem", "exact+stem+synonyms")


def test_rouge_equals_rouge_score_on_english():
    from rouge_score import rouge_scorer

    pairs = PAIRS + [("The cat sat.\nThe dog ran away.", "A dog ran.\nThe cat sat down.")]
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    ours = text_metrics.rouge(hyps, refs)
    scorer = rouge_scorer.RougeScorer(list(text_metrics.ROUGE_TYPES))  # its own tokenizer
    for kind in text_metrics.ROUGE_TYPES:
        expected = [100 * scorer.score(r, h)[kind].fmeasure for h, r in pairs]
        assert ours[kind][1] == pytest.approx(expected), kind
        assert ours[kind][0] == pytest.approx(sum(expected) / len(expected))
    # Lsum reads lines: the two-line pair's lines in swapped order still match.
    assert ours["rougeLsum"][1][-1] > ours["rougeL"][1][-1]


@pytest.mark.parametrize("reference, close, unrelated", [
    ("我喜欢学习中文", "我喜欢中文", "今天天气很好"),
    ("मुझे हिंदी सीखना पसंद है", "मुझे हिंदी पसंद है", "आज मौसम अच्छा था"),
])
def test_rouge_and_meteor_in_chinese_and_hindi(reference, close, unrelated):
    scores = text_metrics.rouge([close, unrelated], [reference, reference])
    for kind in text_metrics.ROUGE_TYPES:
        (_, (near, far)) = scores[kind]
        assert near > far, kind
        assert near > 0, kind
    assert scores["rouge1"][1][0] > 50
    _, (near, far), _ = text_metrics.meteor([close, unrelated], [reference, reference])
    assert near > far and near > 0
    assert text_metrics.rouge([reference], [reference])["rouge2"][0] == pytest.approx(100)


def test_lengths_must_agree():
    with pytest.raises(ValueError):
        text_metrics.rouge(["a"], [])
