"""The data-hygiene stage (tfchat.data.hygiene, tfchat.data.pii) on planted
cases in several languages and scripts: real ftfy, datasketch, phonenumbers
and py3langid, no mocks."""

import json

import pytest

from tfchat.data import pii
from tfchat.data.hygiene import (
    Blocklist, ExactDeduplicator, Hygiene, LanguageFilter, NearDeduplicator, length_ok, normalize_text,
    repetition_score, too_repetitive,
)
from tfchat.errors import TfchatError

ENGLISH = ("The quick brown fox jumps over the lazy dog while the old farmer watches from the wooden porch. "
           "Later that evening the farmer walks down to the village market to sell fresh eggs, warm bread and "
           "honey to his neighbours, who always ask him about the fox, the dog and the weather on the hills, "
           "and he tells them the same long stories every single week. On Sundays he stays at home with his "
           "wife, reads the newspaper in the garden, repairs the fence that the fox broke during the night and "
           "feeds the chickens, the goats and the two old horses that live behind the barn.")
# Three words of about a hundred changed: Jaccard over 3-word shingles about 0.85.
ENGLISH_NEAR = ENGLISH.replace("quick", "fast").replace("honey", "jam").replace("single", "other")
# Shares many words with ENGLISH but is another text.
ENGLISH_OTHER = ("The farmer sells bread and honey at the village market, but this week the story is about a new "
                 "school that opened by the hills, with twelve teachers, a small library and a garden where the "
                 "children grow beans and watch the weather.")
GERMAN = ("Der schnelle braune Fuchs springt über den faulen Hund, während der alte Bauer von der hölzernen "
          "Veranda aus zusieht. Am Abend geht der Bauer auf den Markt im Dorf, um frische Eier, warmes Brot "
          "und Honig an seine Nachbarn zu verkaufen, die ihn immer nach dem Fuchs und dem Wetter fragen.")
FRENCH = ("Le renard brun rapide saute par-dessus le chien paresseux pendant que le vieux fermier regarde depuis "
          "le porche en bois. Le soir, le fermier va au marché du village pour vendre des œufs frais, du pain "
          "chaud et du miel à ses voisins, qui lui demandent toujours des nouvelles du renard et du temps.")
RUSSIAN = ("Быстрая коричневая лиса прыгает через ленивую собаку, пока старый фермер смотрит с деревянного "
           "крыльца. Вечером фермер идёт на деревенский рынок, чтобы продать соседям свежие яйца, тёплый хлеб "
           "и мёд, а они всегда спрашивают его о лисе, о собаке и о погоде в горах.")
CHINESE = ("今天天气很好，我们一起去公园散步吧。公园里有很多人在跑步、打太极拳，还有孩子们在草地上放风筝，"
           "老人们坐在长椅上聊天，湖边的柳树随风摇摆，大家看起来都非常开心，我们决定下午再去图书馆看书。")
CHINESE_NEAR = CHINESE.replace("图书馆", "博物馆")
JAPANESE = ("今日はとても良い天気なので、友達と一緒に公園へ散歩に行きました。公園では子供たちが凧を揚げていて、"
            "お年寄りはベンチに座って話をしていました。午後は図書館で本を読んで、夜は家族と晩ご飯を食べました。")
ARABIC = ("الثعلب البني السريع يقفز فوق الكلب الكسول بينما يراقب المزارع العجوز من الشرفة الخشبية. وفي المساء "
          "يذهب المزارع إلى سوق القرية ليبيع البيض الطازج والخبز الدافئ والعسل لجيرانه الذين يسألونه دائما عن "
          "الثعلب والطقس.")
ALL_LANGUAGES = {"en": ENGLISH, "de": GERMAN, "fr": FRENCH, "ru": RUSSIAN, "zh": CHINESE, "ja": JAPANESE,
                 "ar": ARABIC}


# --- normalisation ---------------------------------------------------------------

def test_mojibake_and_whitespace_are_repaired():
    assert normalize_text("cafÃ©") == "café"
    assert normalize_text("Itâ€™s here") == "It’s here"
    assert normalize_text("GrÃ¼ÃŸe aus KÃ¶ln") == "Grüße aus Köln"
    assert normalize_text("Fish &amp; chips") == "Fish & chips"
    # NFC: a decomposed é becomes the composed one.
    assert normalize_text("cafe\u0301") == "caf\u00e9"
    text = "  one   two\t\tthree  \r\n\r\n\r\n\r\n    indented   code  \nend\n\n"
    assert normalize_text(text) == "  one two three\n\n    indented code\nend"
    # Curly quotes and full-width CJK punctuation are text, not damage.
    assert normalize_text("“quoted”，好！") == "“quoted”，好！"
    assert normalize_text("cafÃ©", fix_unicode=False) == "cafÃ©"


# --- deduplication ---------------------------------------------------------------

def test_exact_duplicates_ignore_case_and_whitespace():
    dedup = ExactDeduplicator()
    assert not dedup.seen(ENGLISH)
    assert dedup.seen("  " + ENGLISH.upper().replace(" ", "   ") + "\n")
    assert not dedup.seen(ENGLISH_NEAR)
    for code, text in ALL_LANGUAGES.items():
        assert dedup.seen(text) == (code == "en")
        assert dedup.seen(text)
    assert len(dedup) == 2 + len(ALL_LANGUAGES) - 1


def test_near_duplicates_in_several_scripts():
    dedup = NearDeduplicator(threshold=0.8, seed=7)
    for text in [ENGLISH, ENGLISH_OTHER, GERMAN, FRENCH, RUSSIAN, CHINESE, JAPANESE, ARABIC]:
        assert not dedup.is_duplicate(text), text[:30]
    assert dedup.is_duplicate(ENGLISH_NEAR)
    assert dedup.is_duplicate(CHINESE_NEAR)
    assert dedup.is_duplicate(GERMAN.replace("frische", "gute"))
    assert dedup.is_duplicate(RUSSIAN.replace("свежие", "вкусные"))
    # Below the threshold: the same opening, a different second half.
    other_half = ENGLISH.split(". ")[0] + (". Nobody in the town has ever seen a fox that fast, the children say, "
                                           "and the teachers at the new school now use it in their lessons.")
    assert not dedup.is_duplicate(other_half)
    assert len(dedup) == 9


def test_near_dedup_is_deterministic_for_a_seed():
    docs = [ENGLISH, ENGLISH_NEAR, ENGLISH_OTHER, CHINESE, CHINESE_NEAR, JAPANESE]
    docs += [ENGLISH.replace(w, "x") for w in ("fox", "dog", "farmer", "eggs", "weather", "porch", "week")]

    def decisions(seed):
        dedup = NearDeduplicator(seed=seed)
        return [dedup.is_duplicate(d) for d in docs], [dedup.signature(d).hashvalues.tolist() for d in docs[:2]]

    assert decisions(3) == decisions(3)
    assert decisions(3)[1] != decisions(4)[1]


# --- filters ---------------------------------------------------------------------

def test_length_and_repetition_filters():
    assert length_ok("hello", 5, 10) and not length_ok("hi", 5, 10) and not length_ok("x" * 11, 5, 10)
    assert length_ok("x" * 1000, 1, 0)
    for text in ALL_LANGUAGES.values():
        assert repetition_score(text) < 0.1
        assert not too_repetitive(text, 0.3)
    spam = "Buy now!\nBuy now!\nBuy now!\nBuy now!\nBest prices here"
    assert repetition_score(spam) > 0.5 and too_repetitive(spam, 0.3)
    phrase = "click here to win a free prize " * 10
    assert too_repetitive(phrase, 0.3)
    assert too_repetitive("我们一起去公园散步吧" * 8, 0.3)
    assert not too_repetitive(spam, 0)


def test_language_filter_keeps_and_drops():
    keep = LanguageFilter(["en", "de"])
    kept = {code for code, text in ALL_LANGUAGES.items() if keep.keep(text)}
    assert kept == {"en", "de"}
    for code, text in ALL_LANGUAGES.items():
        assert LanguageFilter(code).detect(text)[0] == code
    assert LanguageFilter("zh,ja").keep(JAPANESE) and not LanguageFilter("zh,ja").keep(ARABIC)
    assert LanguageFilter("EN, De").keep(ALL_LANGUAGES["de"])  # codes in any case
    # Too short to tell: kept.
    assert keep.keep("Merci !")
    with pytest.raises(TfchatError, match=r"unknown language code 'english'.*\ben\b"):
        LanguageFilter(["english"])


# --- blocklist -------------------------------------------------------------------

@pytest.fixture
def blocklist_file(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_text("# words nobody should train on\n\nbad\nass\nbad word\nre:f[u*]ck\\w*\n色情\nStraße\n"
                    "Дурак\n", encoding="utf-8")
    return path


def test_blocklist_word_boundaries_case_and_width(blocklist_file):
    blocklist = Blocklist.from_file(blocklist_file)
    # No Scunthorpe: a term inside a word does not match.
    for clean in ["a classy class act", "BADLY drawn", "the badge", "Assistant", "Scunthorpe", "passage"]:
        assert blocklist.find(clean) == [], clean
    assert blocklist.mask("ＢＡＤ idea, so Bad!") == ("<BLOCKED> idea, so <BLOCKED>!", 2)
    assert blocklist.mask("what the f*ck, fucking hell") == ("what the <BLOCKED>, <BLOCKED> hell", 2)
    assert blocklist.mask("that bad  word") == ("that <BLOCKED>", 1)
    assert blocklist.mask("die STRASSE hier") == ("die <BLOCKED> hier", 1)
    assert blocklist.mask("Ты ДУРАК, а не дураки") == ("Ты <BLOCKED>, а не дураки", 1)
    # Chinese has no word boundaries: terms match inside text.
    assert blocklist.mask("不要看色情片") == ("不要看<BLOCKED>片", 1)
    assert blocklist.mask("我觉得bad东西") == ("我觉得<BLOCKED>东西", 1)
    assert [m.text for m in blocklist.find("Ｂａｄ and ass.")] == ["Ｂａｄ", "ass"]


def test_blocklist_bad_files(tmp_path):
    bad_regex = tmp_path / "regex.txt"
    bad_regex.write_text("# comment\nfine\nre:(unclosed\n", encoding="utf-8")
    # The position is the term's own.
    with pytest.raises(TfchatError, match=r"regex\.txt, line 3: invalid regular expression "
                                          r"'\(unclosed': .* at position 0$"):
        Blocklist.from_file(bad_regex)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(TfchatError, match="holds no terms"):
        Blocklist.from_file(empty)
    with pytest.raises(TfchatError, match="cannot read the blocklist"):
        Blocklist.from_file(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("Stra\xdfe\n".encode("latin-1"))
    with pytest.raises(TfchatError, match="cannot read the blocklist"):
        Blocklist.from_file(tmp_path / "latin1.txt")
    (tmp_path / "star.txt").write_text("re:x*\n", encoding="utf-8")
    with pytest.raises(TfchatError, match="line 1: .* matches the empty string"):
        Blocklist.from_file(tmp_path / "star.txt")


# --- PII -------------------------------------------------------------------------

POSITIVES = {
    "EMAIL": ["john.doe+news@example.co.uk", "marie@exemple.fr", "анна@пример.рф", "li.wei@example.cn"],
    "PHONE": ["+1 415-555-2671", "(415) 555-2671", "+44 20 7946 0958", "030 12345678", "+49 30 12345678",
              "01 23 45 67 89", "+91 98765 43210", "138 0013 8000", "090-1234-5678", "(11) 98765-4321",
              "+7 495 123-45-67"],
    "CREDIT_CARD": ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011000990139424"],
    "IP": ["192.168.1.20", "8.8.8.8", "2001:db8::8a2e:370:7334", "fe80::1"],
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB29NWBK60161331926819", "FR14 2004 1010 0505 0001 3M02 606"],
    "SSN": ["123-45-6789"],
}
NEGATIVES = ["2024-05-01", "01/05/2024", "05.01.2024", "1.2.3", "v10.0.19041", "version 1.2.3.4", "Order #123456789",
             "ISBN 978-3-16-148410-0", "12:30:45", "10:45", "$1,299.99", "€49,90", "the year 2023", "1999-2024",
             "4111111111111112", "1234567890123456", "3.14159265358979", "DE89 3704 0044 0532 0130 01",
             "000-12-3456", "std::vector", "https://example.com/a@b", "invoice INV-2023-000123",
             "ISBN 0-306-40615-2", "the book 0-306-40615-2", "Order no. 2023-000123", "ticket #030 12345678"]


@pytest.mark.parametrize("kind", sorted(POSITIVES))
def test_each_pii_type_is_replaced(kind):
    for value in POSITIVES[kind]:
        for template in ("Contact: {} today.", "Kontakt: {}, danke", "Écrivez-moi à {}.", "Пишите: {}",
                         "请联系{}。", "連絡先：{}です", "اتصل {} شكرا"):
            text, counts = pii.scrub(template.format(value))
            assert text == template.format(f"<{kind}>"), (kind, template.format(value), text)
            assert counts[kind] == 1 and sum(counts.values()) == 1


def test_url_credentials_keep_the_url():
    text, counts = pii.scrub("clone https://admin:s3cr3t@git.example.com/repo.git now")
    assert text == "clone https://<URL_CREDENTIALS>@git.example.com/repo.git now"
    assert counts["URL_CREDENTIALS"] == 1 and counts["EMAIL"] == 0


def test_realistic_negatives_are_untouched():
    for value in NEGATIVES:
        text = f"See {value} for details."
        assert pii.scrub(text) == (text, dict.fromkeys(pii.TYPES, 0)), value


def test_pii_types_and_placeholders():
    assert pii.PLACEHOLDERS == tuple(f"<{t}>" for t in pii.TYPES)
    text, counts = pii.scrub("mail a@b.org or call +1 415-555-2671", types="email")
    assert text == "mail <EMAIL> or call +1 415-555-2671" and counts == {"EMAIL": 1}
    with pytest.raises(TfchatError, match="unknown PII type 'passport'; the types are: email, phone"):
        pii.scrub("x", types=["email", "passport"])


# --- the whole stage -------------------------------------------------------------

def test_hygiene_stage_and_report(blocklist_file):
    stage = Hygiene(dedup="near", seed=1, min_chars=10, max_chars=2000, max_repetition=0.3,
                    scrub_pii="all", blocklist=str(blocklist_file), blocklist_action="drop")
    docs = list(ALL_LANGUAGES.values()) + [
        ENGLISH_NEAR, CHINESE_NEAR, "cafÃ© " + ENGLISH_OTHER, "short", "   ", "x" * 2001,
        "Buy now!\n" * 6, f"That was a bad idea. {FRENCH}", f"{GERMAN} Mail: hans.mueller@example.de",
        f"{GERMAN} Mail: otto@example.de",
    ]
    results = [stage.clean(d) for d in docs]
    reasons = [reason for _, reason, _ in results]
    assert reasons == [None] * 7 + ["duplicate_near", "duplicate_near", None, "too_short", "empty", "too_long",
                                    "repetition", "blocklist", "duplicate_near", "duplicate_near"]
    assert results[9][0].startswith("café The farmer")
    report = json.loads(json.dumps(stage.report.to_dict()))
    assert report["documents_read"] == 17 and report["documents_kept"] == 8
    assert report["removed"]["duplicate_near"] == 4 and report["removed"]["blocklist"] == 1
    assert report["pii_found"]["EMAIL"] == 2
    assert len(report["examples"]["duplicate_near"]) == 3
    examples = [e for group in report["examples"].values() for e in group]
    assert all(len(e) <= 80 for e in examples)
    assert not any("@example.de" in e or "bad idea" in e for e in examples)
    assert "<BLOCKED> idea" in report["examples"]["blocklist"][0]
    assert "17 documents read, 8 kept" in stage.report.summary()


def test_hygiene_scrubs_and_masks_conversations(blocklist_file):
    stage = Hygiene(dedup="exact", scrub_pii=["email", "phone"], blocklist=Blocklist.from_file(blocklist_file),
                    blocklist_action="mask", languages="en")
    chat = ["Hi, my e-mail is jane@example.com and my phone +1 415-555-2671.", "Thanks! That is not a bad number."]
    texts, reason, counts = stage.clean(chat)
    assert reason is None and counts == {"EMAIL": 1, "PHONE": 1}
    assert texts == ["Hi, my e-mail is <EMAIL> and my phone <PHONE>.", "Thanks! That is not a <BLOCKED> number."]
    # The same conversation with other personal data is a duplicate after scrubbing.
    again = [chat[0].replace("jane", "joe"), chat[1]]
    assert stage.clean(again)[1] == "duplicate_exact"
    assert stage.clean([GERMAN])[1] == "language"
    assert stage.report.to_dict()["blocked_terms_masked"] == 1
    with pytest.raises(TfchatError, match="unknown dedup mode"):
        Hygiene(dedup="fuzzy")
