"""How well a chat model answers (`tfchat.objectives.chat` evaluates a run
with it, beside the assistant-token loss):
  * BLEU (sacrebleu's corpus BLEU, 0-100), ROUGE-L (rouge-score's
    F-measure, averaged, x100) and chrF (sacrebleu's corpus chrF, 0-100) of
    greedy replies against the reference replies: every assistant turn is
    answered once, given the conversation before it; beside them METEOR
    (nltk's) and ROUGE-1, ROUGE-2 and ROUGE-Lsum (`tfchat.evaluation.
    text_metrics`), and a `"metrics"` row of each with its bootstrap
    confidence interval (`tfchat.evaluation.table`);
  * the same scores on the `unseen` replies only: those whose prompt
    (the conversation before the reply) never occurs in the training split.
    Corpora like chatterbot repeat conversations, so the scores on all
    replies partly measure recall of training data;
  * training-prompt recall: the share of the training split's
    single-exchange prompts (a conversation of one user message and its
    reply) whose greedy reply is, exactly, one of the replies training gave
    that message. It asks whether the model learnt its own conversations,
    which BLEU on validation replies mixes with how it answers new ones.

Replies are scored in any language (chatterbot-corpus has 28), each in
words that fit its script; `bleu_tokenization` picks BLEU's from the
language of a `chatterbot:<language>` data path, else from the references'
script, and `bleu_tokenize` in the results names it:
  * Latin-script languages: sacrebleu's `13a` (the WMT standard);
  * other alphabetic scripts (Cyrillic, Devanagari, Arabic, Hebrew...):
    `intl`, which also splits off non-ASCII punctuation such as the danda;
  * Chinese: `zh`, one token a Han character;
  * Japanese, Korean, Thai: `char`, one token a character (see
    `bleu_tokenization` for why).
ROUGE and METEOR use `ReplyTokenizer` whatever the language: lowercased words of
Unicode letters, combining marks and digits, and one token a character of
the scripts written without spaces (Han, kana, Hangul, Thai...). chrF needs
no word segmentation. All of them compare NFC-normalized text.

"""

import functools
import unicodedata



def reply_prompts(conversations):
    """(conversation before each assistant turn, that turn's text) pairs."""
    pairs = []
    for messages in conversations:
        for i, message in enumerate(messages):
            if message.role == "assistant":
                pairs.append((messages[:i], message.content))
    return pairs


# Names of the Unicode characters of the scripts written without spaces
# between words start with these: each character is a token of its own.
_UNSPACED_SCRIPTS = {
    "CJK UNIFIED IDEOGRAPH": "han", "CJK COMPATIBILITY IDEOGRAPH": "han",
    "IDEOGRAPHIC": "han",  # 々 (iteration mark), 〇
    "HIRAGANA": "kana", "KATAKANA": "kana", "HALFWIDTH KATAKANA": "kana",
    "HANGUL": "hangul", "HALFWIDTH HANGUL": "hangul",
    "THAI": "thai", "LAO": "thai", "KHMER": "thai", "MYANMAR": "thai",
}


@functools.lru_cache(maxsize=None)
def _script(char):
    """The script of a letter: one of _UNSPACED_SCRIPTS' values, "latin" or
    "other"; None for anything but a letter."""
    if not unicodedata.category(char).startswith("L") and char != "〇":
        return None
    name = unicodedata.name(char, "")
    for prefix, script in _UNSPACED_SCRIPTS.items():
        if name.startswith(prefix):
            return script
    return "latin" if name.startswith("LATIN") else "other"


class ReplyTokenizer:
    """ROUGE's tokens in any script (rouge-score's default tokenizer keeps
    only [a-z0-9], so it scores Chinese or Russian 0): lowercased words of
    Unicode letters, combining marks (Devanagari vowel signs, which \\w
    does not match) and digits, split at anything else; in the scripts
    written without spaces (Han, kana, Hangul, Thai, Lao, Khmer, Myanmar)
    each character is a token, with the combining marks that follow it."""

    def tokenize(self, text):
        tokens, word, unspaced = [], [], False
        for char in unicodedata.normalize("NFC", text).lower():
            category = unicodedata.category(char)
            if category.startswith("M") and unspaced:
                tokens[-1] += char
                continue
            if _script(char) in ("han", "kana", "hangul", "thai"):
                if word:
                    tokens.append("".join(word))
                    word = []
                tokens.append(char)
                unspaced = True
                continue
            unspaced = False
            if category[0] in "LMN":
                word.append(char)
            elif word:
                tokens.append("".join(word))
                word = []
        if word:
            tokens.append("".join(word))
        return tokens


# sacrebleu's tokenizer for each chatterbot-corpus language.
_BLEU_TOKENIZE = {
    **dict.fromkeys(["chinese", "traditionalchinese"], "zh"),
    **dict.fromkeys(["japanese", "korean", "thai"], "char"),
    **dict.fromkeys(["english", "dutch", "french", "german", "hinglish", "indonesian",
                     "italian", "portuguese", "spanish", "swedish", "turkish", "yoruba"], "13a"),
    **dict.fromkeys(["bengali", "hebrew", "hindi", "marathi", "oriya", "persian", "russian",
                     "tamil", "telugu", "ukrainian", "urdu"], "intl"),
}


def bleu_tokenization(references, language=None):
    """The sacrebleu tokenizer for BLEU on these references: that of
    `language` (a chatterbot-corpus language, or a data path
    `chatterbot:<language>`) where it is one, else that of the script most
    of the references' letters are written in:
      * Latin: "13a", sacrebleu's default and the WMT standard;
      * Han: "zh", each Han character a token (and 13a for the rest);
      * Han with kana (Japanese), Hangul (Korean), Thai and the like:
        "char", each character a token. sacrebleu's "ja-mecab"/"ko-mecab"
        segment into morphemes but need MeCab and its dictionaries (tens of
        MB), and the scores would then depend on what is installed; "zh"
        would leave each run of kana a single word. Korean spaces its
        words, but they carry their particles and endings (학교에, 학교는),
        so word-level BLEU scores a right stem with another ending as wrong.
      * any other script (Cyrillic, Devanagari, Arabic...): "intl", which
        also splits off non-ASCII punctuation (the danda, «»).
    """
    if language:
        name = language.split(":", 1)[1] if language.startswith("chatterbot:") else language
        name = name.strip().lower()
        if name in _BLEU_TOKENIZE:
            return _BLEU_TOKENIZE[name]
    counts = dict.fromkeys(["han", "kana", "hangul", "thai", "latin", "other"], 0)
    for text in references:
        for char in text:
            script = _script(char)
            if script:
                counts[script] += 1
    cjk = counts["han"] + counts["kana"]
    groups = {"cjk": cjk, "hangul": counts["hangul"], "thai": counts["thai"],
              "latin": counts["latin"], "other": counts["other"]}
    script = max(groups, key=groups.get)
    if not groups[script] or script == "latin":
        return "13a"
    if script == "cjk":
        # Japanese writes its grammar in kana; Chinese has none.
        return "char" if counts["kana"] >= 0.1 * cjk else "zh"
    return {"hangul": "char", "thai": "char", "other": "intl"}[script]


def score_replies(replies, references, language=None, tokenize=None):
    """Corpus BLEU, mean ROUGE-L F1 and corpus chrF, and mean METEOR and
    ROUGE-1, ROUGE-2 and ROUGE-Lsum F1 (`tfchat.evaluation.text_metrics`),
    all 0-100, on NFC-normalized text. BLEU is tokenized by `tokenize` (a
    sacrebleu tokenizer name), by default `bleu_tokenization(references,
    language)`; ROUGE and METEOR by ReplyTokenizer."""
    return _scores(replies, references, language, tokenize, intervals=False)[0]


def _scores(replies, references, language=None, tokenize=None, suffix="", intervals=True):
    """(flat scores without `meteor_matching`, `"metrics"` table rows)."""
    # Imported here: they take about a second, which every command that
    # loads a run (a one-shot chat reply) would otherwise pay.
    from tfchat.evaluation.table import generation_metrics

    replies = [unicodedata.normalize("NFC", text) for text in replies]
    references = [unicodedata.normalize("NFC", text) for text in references]
    tokenize = tokenize or bleu_tokenization(references, language)
    flat, rows = generation_metrics(replies, references, tokenize, suffix=suffix,
                                    intervals=intervals)
    flat.pop(f"meteor_matching{suffix}")
    return flat, rows


def greedy_replies(generator, prompts, max_new_tokens, batch_size):
    """Greedy replies to conversations, batched by prompt length (similar
    lengths waste less of the batch on padding)."""
    lengths = [len(e.ids) for e in generator.chat_prompts(prompts, max_new_tokens)]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    replies = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        texts = generator.chat([prompts[i] for i in rows], max_new_tokens, temperature=0.0)
        for i, text in zip(rows, texts):
            replies[i] = text
    return replies


def single_exchanges(conversations):
    """{prompt: set of its replies} over the conversations that are one
    exchange: a user message and the assistant's reply (after a system
    message, if any). The prompt is the messages before the reply, a tuple."""
    replies = {}
    for messages in conversations:
        roles = [m.role for m in messages]
        if roles[-2:] == ["user", "assistant"] and set(roles[:-2]) <= {"system"} \
                and len(roles) <= 3:
            replies.setdefault(tuple(messages[:-1]), set()).add(messages[-1].content.strip())
    return replies


def training_prompt_recall(generator, train_conversations, batch_size=32, max_new_tokens=128,
                           limit=0):
    """The share of the single-exchange prompts of `train_conversations`
    (`single_exchanges`; the first `limit` in alphabetical order of the user
    message, 0 = all) whose greedy reply, stripped, is exactly one of that
    prompt's training replies. Returns (recall, number of prompts,
    [(user message, reply, whether it was recalled)])."""
    exchanges = single_exchanges(train_conversations)
    prompts = sorted(exchanges, key=lambda p: [(m.content, m.role) for m in p[::-1]])
    prompts = prompts[: limit or None]
    replies = greedy_replies(generator, [list(p) for p in prompts], max_new_tokens, batch_size)
    outcomes = [(p[-1].content, r, r.strip() in exchanges[p]) for p, r in zip(prompts, replies)]
    recalled = sum(hit for _, _, hit in outcomes)
    return recalled / max(len(outcomes), 1), len(outcomes), outcomes


def evaluate_replies(generator, conversations, train_conversations, data_path, batch_size=32,
                     max_new_tokens=128, examples=3):
    """BLEU, ROUGE-L, chrF, METEOR and ROUGE-1/2/Lsum of `generator`'s
    greedy reply to every
    assistant turn of `conversations`, given the conversation before it; the
    same on the replies whose prompt never occurs in `train_conversations`
    (`_unseen`); the training-prompt recall on `train_conversations`
    (`training_prompt_recall`); and the first `examples` replies.
    `data_path` may name the
    language (`chatterbot:<language>`). `"metrics"` holds the table rows
    of the scores, with bootstrap intervals (`tfchat.evaluation.table`)."""
    pairs = reply_prompts(conversations)
    prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
    replies = greedy_replies(generator, prompts, max_new_tokens, batch_size)
    # One tokenization for all and unseen replies, so that they compare.
    tokenize = bleu_tokenization(references, data_path)
    results, rows = _scores(replies, references, tokenize=tokenize)
    results["bleu_tokenize"] = tokenize
    results["meteor_matching"] = rows[2]["matching"]
    results["conversations"] = len(conversations)
    results["replies"] = len(replies)
    seen = {tuple(p) for p, _ in reply_prompts(train_conversations)}
    unseen = [i for i, p in enumerate(prompts) if tuple(p) not in seen]
    results["replies_unseen"] = len(unseen)
    if unseen:
        scores, unseen_rows = _scores([replies[i] for i in unseen],
                                      [references[i] for i in unseen], tokenize=tokenize,
                                      suffix="_unseen")
        results.update(scores)
        rows += unseen_rows
    recall, recall_prompts, outcomes = training_prompt_recall(
        generator, train_conversations, batch_size, max_new_tokens
    )
    results["training_prompt_recall"] = recall
    results["training_prompts"] = recall_prompts
    if outcomes:
        from tfchat.evaluation.table import mean_entry

        rows.append(mean_entry("training_prompt_recall",
                               [float(hit) for _, _, hit in outcomes]))
    results["metrics"] = rows
    results["examples"] = [
        {"user": prompts[i][-1].content, "reference": references[i], "reply": replies[i]}
        for i in range(min(examples, len(replies)))
    ]
    return results
