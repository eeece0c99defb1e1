"""BLEU, ROUGE-L and chrF of chat replies in languages other than English
(tfchat.evaluation.chat.score_replies): each script is tokenized so that an
identical reply scores 100 and a partly right one scores in between."""

import unicodedata

import pytest

from tfchat.evaluation.chat import ReplyTokenizer, bleu_tokenization, score_replies


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (table[i][j] + 1 if x == y
                                   else max(table[i][j + 1], table[i + 1][j]))
    return table[-1][-1]


def rouge_l(reference_tokens, reply_tokens):
    """ROUGE-L F1 (x100) of one pair, from the token lists written out below."""
    lcs = lcs_length(reference_tokens, reply_tokens)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(reply_tokens), lcs / len(reference_tokens)
    return 100 * 2 * precision * recall / (precision + recall)


# language -> (reference, its ROUGE tokens, partly right reply, its ROUGE
# tokens, the sacrebleu tokenizer BLEU should use). The tokens are written
# out by hand: the independent reference for ROUGE-L.
PAIRS = {
    "english": (
        "I really like learning Chinese in the evening.",
        ["i", "really", "like", "learning", "chinese", "in", "the", "evening"],
        "I really like learning English in the morning.",
        ["i", "really", "like", "learning", "english", "in", "the", "morning"],
        "13a",
    ),
    "chinese": (
        "我喜欢学习中文。",
        ["我", "喜", "欢", "学", "习", "中", "文"],
        "我喜欢学习英文。",
        ["我", "喜", "欢", "学", "习", "英", "文"],
        "zh",
    ),
    "japanese": (
        "私は毎日日本語を勉強しています。",
        ["私", "は", "毎", "日", "日", "本", "語", "を", "勉", "強", "し", "て", "い", "ま", "す"],
        "私は英語を勉強しています。",
        ["私", "は", "英", "語", "を", "勉", "強", "し", "て", "い", "ま", "す"],
        "char",
    ),
    "russian": (
        "Я очень люблю читать интересные книги по вечерам.",
        ["я", "очень", "люблю", "читать", "интересные", "книги", "по", "вечерам"],
        "Я очень люблю писать интересные письма по вечерам.",
        ["я", "очень", "люблю", "писать", "интересные", "письма", "по", "вечерам"],
        "intl",
    ),
    # Devanagari vowel signs (ि ी े ु) and the anusvara (ं) are combining
    # marks (Mc/Mn), which Python's \w does not match: each word must stay
    # whole. The danda (।) is punctuation.
    "hindi": (
        "मुझे हिंदी सीखना बहुत पसंद है।",
        ["मुझे", "हिंदी", "सीखना", "बहुत", "पसंद", "है"],
        "मुझे अंग्रेजी सीखना बहुत पसंद है।",
        ["मुझे", "अंग्रेजी", "सीखना", "बहुत", "पसंद", "है"],
        "intl",
    ),
}
LANGUAGES = sorted(PAIRS)


@pytest.mark.parametrize("language", LANGUAGES)
def test_identical_replies_score_100(language):
    reference, _, reply, _, _ = PAIRS[language]
    for hint in (None, f"chatterbot:{language}"):
        scores = score_replies([reference, reply], [reference, reply], language=hint)
        for metric in ("bleu", "rouge_l", "chrf"):
            assert scores[metric] == pytest.approx(100, abs=1e-6), (metric, hint)


@pytest.mark.parametrize("language", LANGUAGES)
def test_partly_right_replies_score_between_0_and_100(language):
    reference, reference_tokens, reply, reply_tokens, _ = PAIRS[language]
    tokenizer = ReplyTokenizer()
    assert tokenizer.tokenize(reference) == reference_tokens
    assert tokenizer.tokenize(reply) == reply_tokens
    scores = score_replies([reply], [reference])
    for metric in ("bleu", "rouge_l", "chrf"):
        assert 0 < scores[metric] < 100, metric
    assert scores["rouge_l"] == pytest.approx(rouge_l(reference_tokens, reply_tokens), abs=1e-9)


@pytest.mark.parametrize("language", LANGUAGES)
def test_language_hint_and_detection_agree(language):
    reference, _, reply, _, tokenize = PAIRS[language]
    assert bleu_tokenization([reference]) == tokenize
    assert bleu_tokenization([reference], f"chatterbot:{language}") == tokenize
    assert bleu_tokenization([reference], language) == tokenize
    detected = score_replies([reply, reference], [reference, reference])
    hinted = score_replies([reply, reference], [reference, reference],
                           language=f"chatterbot:{language}")
    assert detected == hinted
    assert score_replies([reply, reference], [reference, reference], tokenize=tokenize) == detected


def test_a_hint_picks_the_tokenization_the_text_alone_cannot():
    # Three kanji and no kana would pass for Chinese; the hint says Japanese.
    assert bleu_tokenization(["日本語"]) == "zh"
    assert bleu_tokenization(["日本語"], "chatterbot:japanese") == "char"
    assert bleu_tokenization(["日本語"], "chatterbot:traditionalchinese") == "zh"
    # Not a chatterbot language (a file path): the text decides.
    assert bleu_tokenization(["日本語です"], "data/chats.jsonl") == "char"
    assert bleu_tokenization([""]) == "13a"


@pytest.mark.parametrize("reference, reply", [
    ("Good morning, how are you?", "Thanks a lot, see them later."),
    ("你好吗", "谢谢您"),
    ("おはようございます", "元気"),
    ("Доброе утро", "Спасибо большое"),
    ("नमस्ते दोस्त", "धन्यवाद"),
])
def test_disjoint_replies_score_0_on_rouge_l(reference, reply):
    assert score_replies([reply], [reference])["rouge_l"] == 0.0


def test_cjk_text_splits_into_characters_and_other_words_stay_whole():
    tokenizer = ReplyTokenizer()
    assert tokenizer.tokenize("我喜欢Python 3！") == ["我", "喜", "欢", "python", "3"]
    assert tokenizer.tokenize("안녕하세요, 반가워요") == ["안", "녕", "하", "세", "요", "반", "가", "워", "요"]
    # Thai has no spaces between words: one token a character, its vowel
    # and tone marks kept with it.
    assert tokenizer.tokenize("ที่นี่") == ["ที่", "นี่"]
    assert tokenizer.tokenize("Café CRÈME") == ["café", "crème"]


def test_canonically_equivalent_text_scores_as_identical():
    composed = "मुझे अंग्रेज़ी पसंद है और café भी"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    scores = score_replies([decomposed], [composed])
    for metric in ("bleu", "rouge_l", "chrf"):
        assert scores[metric] == pytest.approx(100, abs=1e-6), metric
