"""Generation metrics of hypotheses (generated texts) against references,
in any language, with the multilingual words of `ReplyTokenizer`
(`tfchat.evaluation.chat`): lowercased words of Unicode letters, marks
and digits, one token a character in the scripts written without spaces.

  * `meteor`: METEOR (Lavie and Agarwal 2007) with nltk's
    `nltk.translate.meteor_score.meteor_score` (alpha 0.9, beta 3,
    gamma 0.5), the mean over examples, 0-100. Words align by exact form,
    then by Porter stem, then, when a WordNet is available on this machine
    (nltk's data, or a folder given), by WordNet synonym. Nothing is ever
    downloaded: without a WordNet, synonyms are not matched, and the
    matching string returned says which stages ran ("exact+stem" or
    "exact+stem+synonyms"). Stems and synonyms are English; other
    languages align by exact form (and whatever Porter's suffix rules do to
    Latin-script words).
  * `rouge`: ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures with
    Google's `rouge-score`, averaged over examples, 0-100. ROUGE-Lsum is
    the union-LCS over the summary's lines (split on newlines).
  * `bleu` and `chrf`: sacrebleu's corpus BLEU and chrF, 0-100.

Every function takes parallel lists of strings (one reference per
hypothesis), compares NFC-normalized text and returns per-example values
where the score is a mean of them, so that `tfchat.evaluation.table` can
bootstrap a confidence interval.
"""

import functools
import os
import statistics
import unicodedata

from tfchat.errors import TfchatError
from tfchat.evaluation.chat import ReplyTokenizer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _nfc(texts):
    return [unicodedata.normalize("NFC", t) for t in texts]


def _check(hypotheses, references):
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")


class NoSynonyms:
    """A stand-in for nltk's WordNet reader with no synsets: nltk's METEOR
    asks `wordnet.synsets(word)` of every word left unmatched, and would
    otherwise load (and, missing, fail on) nltk's WordNet."""

    def synsets(self, word, *args, **kwargs):
        return []


def _is_wordnet_folder(path):
    return os.path.isfile(os.path.join(path, "lexnames"))


# The files nltk's reader opens, at load or at a synonym lookup.
_WORDNET_FILES = ("lexnames", "index.sense") + tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv"))


@functools.lru_cache(maxsize=None)
def _read_wordnet(root):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if os.path.isdir(root):
        missing = [f for f in _WORDNET_FILES if not os.path.isfile(os.path.join(root, f))]
        if missing:
            raise TfchatError(f"WordNet at {root} lacks {', '.join(missing)}: METEOR's synonym "
                              "lookups read them.")
    # nltk reads corpora only under its data paths (nltk.pathsec): a folder
    # the user names becomes one.
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    return WordNetCorpusReader(root, None)


def load_wordnet(folder=None):
    """A WordNet reader, or None where there is none, never downloading.

    `folder` names a WordNet database (the folder holding `lexnames`,
    `index.noun`, `data.noun`...) or an nltk data folder holding
    `corpora/wordnet` or `corpora/wordnet.zip`; a folder that holds neither
    is an error. Without `folder`, nltk's own data paths are searched
    (`nltk.data.path`, `NLTK_DATA`) and None is returned when none has it."""
    import nltk

    if folder:
        folder = os.path.expanduser(folder)
        if _is_wordnet_folder(folder):
            return _read_wordnet(os.path.abspath(folder))
        if not os.path.isdir(folder):
            raise TfchatError(f"--wordnet {folder}: no such folder.")
        paths = [folder]
    else:
        paths = None
    try:
        root = nltk.data.find("corpora/wordnet", paths=paths)
    except LookupError:
        try:
            root = nltk.data.find("corpora/wordnet.zip/wordnet/", paths=paths)
        except LookupError:
            if folder:
                raise TfchatError(
                    f"--wordnet {folder}: no WordNet there (neither a WordNet database "
                    "with lexnames, index.noun, data.noun..., nor an nltk data folder "
                    "with corpora/wordnet or corpora/wordnet.zip)."
                ) from None
            return None
    return _read_wordnet(root)


# The folder `wordnet=None` reads (`python -m tfchat.evaluate --wordnet DIR`).
_default_wordnet = None


def use_wordnet(folder):
    """Makes `folder` (see `load_wordnet`; None: nltk's data paths) the
    WordNet every later `meteor(..., wordnet=None)` uses. Loads it now, so
    a folder without one fails before any evaluation. Returns the matching
    string it gives."""
    global _default_wordnet
    reader = load_wordnet(folder)
    _default_wordnet = folder
    return "exact+stem" if reader is None else "exact+stem+synonyms"


def resolve_wordnet(wordnet=None):
    """(reader for nltk's METEOR, matching string): `wordnet` a reader
    (anything with nltk's `synsets(word)`), a folder for `load_wordnet`, or
    None for the `use_wordnet` folder, else nltk's data on this machine if
    any; False: no synonyms."""
    if wordnet is None:
        wordnet = _default_wordnet
    if wordnet is not False and (wordnet is None or isinstance(wordnet, (str, os.PathLike))):
        wordnet = load_wordnet(wordnet)
    if wordnet is None or wordnet is False or isinstance(wordnet, NoSynonyms):
        return NoSynonyms(), "exact+stem"
    return wordnet, "exact+stem+synonyms"


def meteor(hypotheses, references, wordnet=None):
    """(METEOR 0-100, the mean of the per-example scores; per-example
    scores 0-100; matching) with nltk's meteor_score on ReplyTokenizer's
    words. `wordnet`: see `resolve_wordnet`; `matching` is "exact+stem" or
    "exact+stem+synonyms"."""
    from nltk.stem.porter import PorterStemmer
    from nltk.translate.meteor_score import meteor_score

    _check(hypotheses, references)
    reader, matching = resolve_wordnet(wordnet)
    tokenizer, stemmer = ReplyTokenizer(), PorterStemmer()
    scores = [
        100 * meteor_score([tokenizer.tokenize(ref)], tokenizer.tokenize(hyp),
                           stemmer=stemmer, wordnet=reader)
        for hyp, ref in zip(_nfc(hypotheses), _nfc(references))
    ]
    return (statistics.fmean(scores) if scores else 0.0), scores, matching


def rouge(hypotheses, references, types=ROUGE_TYPES):
    """{"rouge1", "rouge2", "rougeL", "rougeLsum": (mean F-measure 0-100,
    per-example F-measures 0-100)} with rouge-score on ReplyTokenizer's
    words; ROUGE-Lsum splits each text into summary lines at newlines."""
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=ReplyTokenizer())
    per = {t: [] for t in types}
    for hyp, ref in zip(_nfc(hypotheses), _nfc(references)):
        scores = scorer.score(ref, hyp)
        for t in types:
            per[t].append(100 * scores[t].fmeasure)
    return {t: ((statistics.fmean(v) if v else 0.0), v) for t, v in per.items()}


def bleu(hypotheses, references, tokenize="13a"):
    """sacrebleu's corpus BLEU, 0-100 (`tokenize`: a sacrebleu tokenizer,
    see `tfchat.evaluation.chat.bleu_tokenization`)."""
    import sacrebleu

    _check(hypotheses, references)
    return sacrebleu.corpus_bleu(_nfc(hypotheses), [_nfc(references)], tokenize=tokenize).score


def chrf(hypotheses, references):
    """sacrebleu's corpus chrF, 0-100."""
    import sacrebleu

    _check(hypotheses, references)
    return sacrebleu.corpus_chrf(_nfc(hypotheses), [_nfc(references)]).score
