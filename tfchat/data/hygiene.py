"""The data-hygiene stage: repair, filter, deduplicate and scrub documents.

Pure Python (no TensorFlow), one document at a time, so the same code serves
`tfchat.prepare` and training on raw data. The pieces:

  * `normalize_text`: ftfy (mojibake, HTML entities, control characters),
    NFC and whitespace.
  * `ExactDeduplicator` (a hash of the normalised, casefolded document) and
    `NearDeduplicator` (MinHash LSH over word shingles, `datasketch`):
    streaming, deterministic for a seed, memory bounded by one digest or
    signature per kept document.
  * Filters: `length_ok`, `repetition_score` / `too_repetitive` (Gopher's
    duplicated lines and n-grams), `LanguageFilter` (py3langid, whose model
    ships in its wheel).
  * `Blocklist`: terms and regular expressions, case- and
    Unicode-insensitive, with word boundaries in every script.
  * `Hygiene`: the configured sequence applied to one document, counted in a
    `Report` (the contents of data_report.json).

Scripts written without spaces between words (Chinese, Japanese, Thai, Lao,
Khmer, Myanmar, Tibetan) have no word boundaries: their characters count as
one token each for shingles and n-grams, and blocklist terms in them match
as substrings.
"""

import collections
import hashlib
import re
import unicodedata

from tfchat.data import pii
from tfchat.errors import TfchatError

# Letters of scripts written without spaces between words (Chinese, Japanese,
# Thai...).
_UNSPACED_RANGES = pii.UNSPACED_RANGES
_UNSPACED = f"[{_UNSPACED_RANGES}]"
# Tokens for shingles and n-grams: a word of a spaced script, or one character
# of an unspaced one.
_TOKEN = re.compile(f"{_UNSPACED}|[^\\W{_UNSPACED_RANGES}]+")


def tokens(text):
    """Word tokens of `text` in any script (see the module's docstring)."""
    return _TOKEN.findall(text)


# --- Normalisation -------------------------------------------------------------

_FTFY_CONFIG = None
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]+")
_TRAILING_SPACES = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def _ftfy_config():
    global _FTFY_CONFIG
    if _FTFY_CONFIG is None:
        import ftfy
        # Curly quotes, full-width forms and ligatures are kept as written:
        # they are the text, not damage to it (ftfy's defaults would straighten
        # "’" to "'" and turn Chinese "，" into ",").
        _FTFY_CONFIG = ftfy.TextFixerConfig(uncurl_quotes=False, fix_character_width=False,
                                            fix_latin_ligatures=False, normalization="NFC")
    return _FTFY_CONFIG


def normalize_text(text, fix_unicode=True):
    """`text` repaired and with tidy whitespace.

    With `fix_unicode`, ftfy repairs mojibake ("cafÃ©" -> "café", "â€™" ->
    "’"), HTML entities in text that has no tags, terminal escapes, control
    characters and line breaks (CRLF, CR, U+2028 -> LF). Always: NFC; inside
    a line, runs of spaces and tabs become one space (a line's leading
    indentation is kept, so code keeps its shape); trailing spaces are
    stripped from every line; at most two newlines in a row (one blank
    line); no blank lines or spaces at the start or end.
    """
    if fix_unicode:
        import ftfy
        text = ftfy.fix_text(text, config=_ftfy_config())
    else:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _INNER_SPACES.sub(" ", text)
    text = _TRAILING_SPACES.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip("\n").rstrip()


def _dedup_form(text):
    """The form two documents must share to be exact duplicates."""
    return " ".join(normalize_text(text, fix_unicode=False).casefold().split())


# --- Deduplication -------------------------------------------------------------


class ExactDeduplicator:
    """Exact duplicates: a 16-byte BLAKE2b digest of the normalised,
    casefolded, whitespace-collapsed document per document seen."""

    def __init__(self):
        self._digests = set()

    def seen(self, doc):
        """True when an equal document was seen before; else remember it."""
        digest = hashlib.blake2b(_dedup_form(doc).encode("utf-8"), digest_size=16).digest()
        if digest in self._digests:
            return True
        self._digests.add(digest)
        return False

    is_duplicate = seen

    def __len__(self):
        return len(self._digests)


class NearDeduplicator:
    """Near duplicates: documents whose word-shingle Jaccard similarity with a
    kept one reaches `threshold`, found by MinHash LSH (`datasketch`).

    Shingles are `shingle` consecutive tokens (`tokens`: words, or characters
    of unspaced scripts). 3, not the 5 of web-scale pipelines: with k-token
    shingles, m scattered substitutions in an N-token document give a
    Jaccard of about (N - m k) / (N + m k), so at 0.8 a document may differ
    by one word in 9 k: one in 27 with 3-token shingles (3 words of a
    100-word document, "reworded by a few words"), only one in 45 with 5.
    A document shorter than a shingle is one shingle.

    LSH proposes candidates; each is confirmed against its stored signature
    (`num_perm` 32-bit values, 512 bytes at 128), so only documents whose
    estimated similarity reaches the threshold count. Memory is one
    signature and its LSH band keys per kept document. The same `seed`
    gives the same permutations and so the same decisions, in any process.
    """

    def __init__(self, threshold=0.8, num_perm=128, shingle=3, seed=1):
        from datasketch import MinHash, MinHashLSH
        if not 0.0 < threshold <= 1.0:
            raise TfchatError(f"the near-duplicate threshold must be in (0, 1], not {threshold}")
        if shingle < 1 or num_perm < 2:
            raise TfchatError("the shingle size must be at least 1 and num_perm at least 2")
        self.threshold, self.num_perm, self.shingle, self.seed = threshold, num_perm, shingle, seed
        self._minhash = MinHash
        # Permutations made once (MinHash would draw them again for every document).
        proto = MinHash(num_perm=num_perm, seed=seed)
        self._minhash_args = {"num_perm": num_perm, "seed": seed, "permutations": proto.permutations}
        if hasattr(proto, "scheme"):  # datasketch 2 names its hashing scheme
            self._minhash_args["scheme"] = proto.scheme
        # Bands tuned for recall (false negatives weigh 0.9, false positives
        # 0.1): every candidate is checked against its signature, so a false
        # candidate costs one comparison. At 0.8 and 128 permutations: 14
        # bands of 9 rows, proposing a pair of Jaccard 0.85 with probability
        # 0.975 (datasketch's even weights: 0.69).
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        self._signatures = []

    def shingles(self, doc):
        """The set of shingles of `doc` (UTF-8 bytes), after normalisation."""
        words = tokens(normalize_text(doc, fix_unicode=False).casefold())
        k = self.shingle
        if len(words) <= k:
            return {" ".join(words).encode("utf-8")}
        return {" ".join(words[i:i + k]).encode("utf-8") for i in range(len(words) - k + 1)}

    def signature(self, doc):
        minhash = self._minhash(**self._minhash_args)
        minhash.update_batch(sorted(self.shingles(doc)))
        return minhash

    def is_duplicate(self, doc):
        """True when `doc` is a near duplicate of a document kept before;
        else keep it (its signature) and return False."""
        import numpy as np
        minhash = self.signature(doc)
        values = minhash.hashvalues.astype(np.uint32)
        for key in sorted(self._lsh.query(minhash)):
            kept = np.frombuffer(self._signatures[key], dtype=np.uint32)
            if float(np.mean(kept == values)) >= self.threshold:
                return True
        key = len(self._signatures)
        self._signatures.append(values.tobytes())
        self._lsh.insert(key, minhash, check_duplication=False)
        return False

    def __len__(self):
        return len(self._signatures)


# --- Filters -------------------------------------------------------------------


def length_ok(text, min_chars=0, max_chars=0):
    """Whether `text` has at least `min_chars` and at most `max_chars`
    characters (code points; 0 = no limit)."""
    n = len(text)
    return n >= min_chars and (max_chars <= 0 or n <= max_chars)


def _duplicate_ngram_chars(words, n):
    """Characters of the tokens covered by repeated occurrences (after the
    first) of word n-grams, as Gopher counts them."""
    if len(words) < n:
        return 0
    seen, covered = set(), [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            for j in range(i, i + n):
                covered[j] = True
        else:
            seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered) if c)


def repetition_scores(text, ngram=5):
    """Gopher's repetition measures (Rae et al. 2021, appendix A): the share
    of lines that repeat an earlier line, the share of characters in them,
    and the share of word characters in repeated `ngram`-token n-grams."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    seen, dup_lines, dup_line_chars = set(), 0, 0
    for line in lines:
        if line in seen:
            dup_lines += 1
            dup_line_chars += len(line)
        else:
            seen.add(line)
    line_chars = sum(len(line) for line in lines)
    words = tokens(text.casefold())
    word_chars = sum(len(w) for w in words)
    return {
        "duplicate_lines": dup_lines / len(lines) if lines else 0.0,
        "duplicate_line_chars": dup_line_chars / line_chars if line_chars else 0.0,
        "duplicate_ngram_chars": _duplicate_ngram_chars(words, ngram) / word_chars if word_chars else 0.0,
    }


def repetition_score(text):
    """The largest of `repetition_scores`: 0 for text that repeats nothing,
    near 1 for text that is one line or phrase over and over."""
    return max(repetition_scores(text).values())


def too_repetitive(text, limit=0.3):
    """Whether `repetition_score(text)` exceeds `limit` (0 = never)."""
    return limit > 0 and repetition_score(text) > limit


_IDENTIFIER = None


def _language_identifier():
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def known_languages():
    """The ISO 639 codes py3langid tells apart."""
    return tuple(_language_identifier().labels)


class LanguageFilter:
    """Keep documents in `languages` (ISO 639 codes as py3langid names them,
    a list or a comma-separated string), as detected by py3langid: a naive
    Bayes model over byte n-grams, 97 languages, its model inside the wheel
    and numpy its only dependency (no download, no native build, fast).

    Detection over all its languages, then the top one is checked: restricting
    the model to `languages` would force every document into one of them.
    Texts with fewer than `min_letters` letters are kept: a greeting or an
    "ok" says too little to tell its language.
    """

    def __init__(self, languages, min_confidence=0.0, min_letters=20):
        if isinstance(languages, str):
            languages = languages.split(",")
        languages = [part.strip().lower() for part in languages if part.strip()]
        known = known_languages()
        common = [c for c in ("en", "de", "fr", "es", "it", "pt", "nl", "ru", "uk", "pl", "tr", "ar", "hi",
                              "zh", "ja", "ko") if c in known]
        unknown = [code for code in languages if code not in known]
        if unknown:
            raise TfchatError(
                f"unknown language code {unknown[0]!r}; py3langid knows {len(known)} ISO 639 codes, e.g. "
                f"{', '.join(common)} (all: python -c \"import py3langid.langid as l; "
                f"print(l.LanguageIdentifier.from_model_file(l.MODEL_FILE).labels)\")")
        if not languages:
            raise TfchatError("the language filter needs at least one language code")
        self.languages = frozenset(languages)
        self.min_confidence, self.min_letters = min_confidence, min_letters

    def detect(self, text):
        """(language code, confidence) of `text`."""
        return _language_identifier().classify(text)

    def keep(self, text):
        if sum(ch.isalpha() for ch in text) < self.min_letters:
            return True
        language, confidence = self.detect(text)
        return language in self.languages and confidence >= self.min_confidence


# --- Blocklist -----------------------------------------------------------------

_MARKS = None


def _marks_class():
    """The combining marks of the BMP and the SMP, for a character class:
    inside a word they belong to it (Devanagari vowel signs are not \\w)."""
    global _MARKS
    if _MARKS is None:
        ranges, start, prev = [], None, None
        for cp in range(0x300, 0x20000):
            if unicodedata.category(chr(cp)).startswith("M"):
                if start is None:
                    start = cp
                elif cp != prev + 1:
                    ranges.append((start, prev))
                    start = cp
                prev = cp
        ranges.append((start, prev))
        _MARKS = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)
    return _MARKS


def fold(text):
    """NFKC casefold (NFKC, casefold, NFKC): "ＢＡＤ", "Bad" and "bad" alike."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _fold_with_offsets(text):
    """(fold(text), offsets): offsets[i] is where the character of the
    original that produced folded character i starts, plus a final entry
    for the end. Characters are folded with their combining marks."""
    if text.isascii():
        return text.lower(), list(range(len(text) + 1))
    out, offsets, i = [], [], 0
    while i < len(text):
        j = i + 1
        while j < len(text) and unicodedata.combining(text[j]):
            j += 1
        piece = fold(text[i:j])
        out.append(piece)
        offsets.extend([i] * len(piece))
        i = j
    offsets.append(len(text))
    return "".join(out), offsets


def _fold_pattern(pattern):
    """Casefold a regular expression's literal characters, not its escapes
    (casefolding "\\S" would make it "\\s")."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(pattern[i:i + 2])
            i += 2
        else:
            out.append(pattern[i].casefold())
            i += 1
    return "".join(out)


BlockMatch = collections.namedtuple("BlockMatch", "start end text term")


class Blocklist:
    """Terms and regular expressions that mark a document to drop or mask.

    A file holds one a line: a term (matched literally; spaces inside match
    any whitespace), or `re:` and a Python regular expression. `#` starts a
    comment line; blank lines are skipped. Matching is on NFKC-casefolded
    text, so case, full-width forms and compatibility characters do not
    matter, and a match must start and end at word boundaries ("class" does
    not match "ass"), except next to a character of an unspaced script
    (Chinese, Japanese, Thai...), where there are none.
    """

    def __init__(self, entries, source="blocklist"):
        """`entries`: (line number, line) pairs or lines, as in a file."""
        word = f"[\\w{_marks_class()}]"
        start = f"(?:(?<!{word})|(?<={_UNSPACED})|(?={_UNSPACED}))"
        end = f"(?:(?!{word})|(?={_UNSPACED})|(?<={_UNSPACED}))"
        self.terms, self._regexes, literals = [], [], []
        for number, line in (e if isinstance(e, tuple) else (i, e) for i, e in enumerate(entries, 1)):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            self.terms.append(line)
            if line.startswith("re:"):
                pattern = unicodedata.normalize("NFKC", line[3:].strip())
                try:
                    re.compile(pattern)  # first alone: the error's position is in the term
                    compiled = re.compile(f"{start}(?:{_fold_pattern(pattern)}){end}", re.IGNORECASE)
                except re.error as e:
                    raise TfchatError(f"{source}, line {number}: invalid regular expression {pattern!r}: {e}")
                if compiled.fullmatch(""):
                    raise TfchatError(f"{source}, line {number}: {pattern!r} matches the empty string")
                self._regexes.append((compiled, line))
            else:
                literals.append(fold(line))
        if not self.terms:
            raise TfchatError(f"{source} holds no terms (only blank or # comment lines)")
        self._literals = None
        if literals:
            # One alternation, longest first, so "bad word" wins over "bad".
            alternatives = "|".join(r"\s+".join(re.escape(part) for part in term.split())
                                    for term in sorted(set(literals), key=lambda t: (-len(t), t)))
            self._literals = re.compile(f"{start}(?:{alternatives}){end}")

    @classmethod
    def from_file(cls, path):
        """A blocklist read from a UTF-8 file (see the class docstring)."""
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise TfchatError(f"cannot read the blocklist {path}: {e}")
        return cls(list(enumerate(lines, 1)), source=str(path))

    def find(self, text):
        """The matches in `text`, in order, overlaps removed (the earlier and
        longer one kept), with offsets into `text` itself."""
        folded, offsets = _fold_with_offsets(text)
        found = []
        if self._literals is not None:
            found += [(m.start(), m.end(), None) for m in self._literals.finditer(folded)]
        for compiled, term in self._regexes:
            found += [(m.start(), m.end(), term) for m in compiled.finditer(folded) if m.end() > m.start()]
        matches, last = [], 0
        for s, e, term in sorted(found, key=lambda f: (f[0], -f[1])):
            start, end = offsets[s], offsets[e]
            if start < last:
                continue
            matches.append(BlockMatch(start, end, text[start:end], term or folded[s:e]))
            last = end
        return matches

    def search(self, text):
        """Whether `text` holds a blocked term."""
        return bool(self.find(text))

    def mask(self, text, placeholder="<BLOCKED>"):
        """(`text` with each blocked term replaced by `placeholder`, how many)."""
        matches = self.find(text)
        parts, pos = [], 0
        for m in matches:
            parts += [text[pos:m.start], placeholder]
            pos = m.end
        parts.append(text[pos:])
        return "".join(parts), len(matches)


# --- The stage and its report --------------------------------------------------

DEDUP_MODES = ("none", "exact", "near")
BLOCKLIST_ACTIONS = ("drop", "mask")
# Why a document is removed, in the order the checks run.
REASONS = ("empty", "too_short", "too_long", "language", "repetition", "blocklist",
           "duplicate_exact", "duplicate_near")
BLOCKED = "<BLOCKED>"
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 80


def _example(text, blocklist):
    """A removed document as the report shows it: personal data and blocked
    terms replaced, whitespace collapsed, cut to EXAMPLE_CHARS."""
    text, _ = pii.scrub(text)
    if blocklist is not None:
        text, _ = blocklist.mask(text, BLOCKED)
    text = " ".join(text.split())
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"


class Report:
    """What the stage did: documents read, kept and removed per reason, PII
    found (and replaced) per type, blocked terms masked, and the first few removed
    documents of each reason (anonymised)."""

    def __init__(self):
        self.read = 0
        self.kept = 0
        self.removed = dict.fromkeys(REASONS, 0)
        self.pii = {}
        self.masked_terms = 0
        self.repaired = 0  # documents whose text Unicode repair or tidying changed
        self.examples = {}

    def add(self, result, original=None, blocklist=None):
        self.read += 1
        for name, n in result.pii.items():
            self.pii[name] = self.pii.get(name, 0) + n
        self.masked_terms += result.masked
        if result.reason is None:
            self.kept += 1
            return
        self.removed[result.reason] += 1
        examples = self.examples.setdefault(result.reason, [])
        if original is not None and len(examples) < EXAMPLES_PER_REASON:
            examples.append(_example(original, blocklist))

    def merge(self, other):
        """Add another report's counts (another worker's, another split's)."""
        self.read += other.read
        self.kept += other.kept
        self.masked_terms += other.masked_terms
        self.repaired += other.repaired
        for reason, n in other.removed.items():
            self.removed[reason] = self.removed.get(reason, 0) + n
        for name, n in other.pii.items():
            self.pii[name] = self.pii.get(name, 0) + n
        for reason, examples in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine += examples[:EXAMPLES_PER_REASON - len(mine)]
        return self

    def to_dict(self):
        return {
            "documents_read": self.read,
            "documents_kept": self.kept,
            "documents_removed": sum(self.removed.values()),
            "documents_repaired": self.repaired,
            "removed": dict(self.removed),
            "pii_found": dict(sorted(self.pii.items())),
            "blocked_terms_masked": self.masked_terms,
            "examples": {r: list(self.examples[r]) for r in REASONS if self.examples.get(r)},
        }

    def summary(self):
        """One line for a banner."""
        removed = ", ".join(f"{n} {r}" for r, n in self.removed.items() if n) or "none"
        line = f"data: {self.read} documents read, {self.kept} kept; removed: {removed}"
        found = ", ".join(f"{n} {name.lower()}" for name, n in sorted(self.pii.items()) if n)
        if found:
            line += f"; PII found: {found}"
        if self.masked_terms:
            line += f"; {self.masked_terms} blocked terms masked"
        return line


Result = collections.namedtuple("Result", "texts reason pii masked")
Result.__doc__ = """One document after the stage: its cleaned parts (None when
removed), why it was removed (a REASONS entry, or None), PII replaced per
type, and how many blocked terms were masked."""


class Hygiene:
    """The configured stage, applied to one document at a time in order:

      1. normalise each part (`normalize_text`; ftfy with `fix_unicode`)
      2. removed when empty, shorter than `min_chars` or longer than
         `max_chars` (characters of all parts together; 0 = no limit)
      3. removed when not in `languages` (a `LanguageFilter`; empty = any)
      4. removed when `repetition_score` exceeds `max_repetition` (0 = off)
      5. a `blocklist` term: removed (`blocklist_action` drop) or masked
         with "<BLOCKED>" (mask, after PII scrubbing)
      6. PII replaced by placeholders (`scrub_pii`: a list of types, "all",
         or empty/None for off)
      7. removed when a duplicate (`dedup`: none | exact | near, with
         `dedup_threshold`, `seed`) of a document kept before; compared
         after scrubbing, so documents differing only in personal data are
         duplicates.

    A document is a string, or a sequence of strings (a conversation's
    message contents, a preference pair's prompt and replies) filtered and
    deduplicated as a whole. `process(doc)` returns a `Result` and counts it
    in `report`. Dedup keeps state: use one `Hygiene` per corpus, before
    the train/validation split.
    """

    def __init__(self, fix_unicode=True, dedup="none", dedup_threshold=0.8, seed=1, min_chars=0,
                 max_chars=0, languages=(), max_repetition=0.0, scrub_pii=None, blocklist=None,
                 blocklist_action="drop", num_perm=128, shingle=3):
        if dedup not in DEDUP_MODES:
            raise TfchatError(f"unknown dedup mode {dedup!r}; choose one of {', '.join(DEDUP_MODES)}")
        if blocklist_action not in BLOCKLIST_ACTIONS:
            raise TfchatError(f"unknown blocklist action {blocklist_action!r}; choose drop or mask")
        if min_chars < 0 or max_chars < 0 or (max_chars and max_chars < min_chars):
            raise TfchatError(f"min_chars {min_chars} and max_chars {max_chars}: need 0 <= min_chars <= "
                              "max_chars (max_chars 0 = no limit)")
        self.fix_unicode = fix_unicode
        self.min_chars, self.max_chars, self.max_repetition = min_chars, max_chars, max_repetition
        if isinstance(languages, str):
            languages = [p.strip() for p in languages.split(",") if p.strip()]
        self.language_filter = LanguageFilter(languages) if languages else None
        self.pii_types = pii.parse_types(scrub_pii) if scrub_pii else ()
        if isinstance(blocklist, str):
            blocklist = Blocklist.from_file(blocklist)
        self.blocklist, self.blocklist_action = blocklist, blocklist_action
        self.dedup = dedup
        self._exact = ExactDeduplicator() if dedup == "exact" else None
        self._near = NearDeduplicator(dedup_threshold, num_perm, shingle, seed) if dedup == "near" else None
        self.report = Report()

    def clean(self, doc):
        """(cleaned parts or None, reason or None, {PII type: count}) for
        one document; see `process`."""
        result = self.process(doc)
        texts = result.texts
        if texts is not None and isinstance(doc, str):
            texts = texts[0]
        return texts, result.reason, result.pii

    def _removed(self, reason, doc, counts):
        result = Result(None, reason, counts, 0)
        self.report.add(result, "\n".join(doc), self.blocklist)
        return result

    def process(self, doc):
        parts = [doc] if isinstance(doc, str) else list(doc)
        normalized = [normalize_text(p, self.fix_unicode) for p in parts]
        self.report.repaired += normalized != parts
        parts = normalized
        joined = "\n".join(parts)
        counts = dict.fromkeys(self.pii_types, 0)
        chars = sum(len(p) for p in parts)
        if chars == 0:
            return self._removed("empty", parts, counts)
        if chars < self.min_chars:
            return self._removed("too_short", parts, counts)
        if self.max_chars and chars > self.max_chars:
            return self._removed("too_long", parts, counts)
        if self.language_filter is not None and not self.language_filter.keep(joined):
            return self._removed("language", parts, counts)
        if too_repetitive(joined, self.max_repetition):
            return self._removed("repetition", parts, counts)
        if self.blocklist is not None and self.blocklist_action == "drop" \
                and any(self.blocklist.search(p) for p in parts):
            return self._removed("blocklist", parts, counts)
        if self.pii_types:
            scrubbed = []
            for p in parts:
                p, found = pii.scrub(p, self.pii_types)
                scrubbed.append(p)
                for name, n in found.items():
                    counts[name] += n
            parts = scrubbed
        masked = 0
        if self.blocklist is not None and self.blocklist_action == "mask":
            masked_parts = []
            for p in parts:
                p, n = self.blocklist.mask(p, BLOCKED)
                masked_parts.append(p)
                masked += n
            parts = masked_parts
        key = "\x1e".join(parts)
        if self._exact is not None and self._exact.seen(key):
            return self._removed("duplicate_exact", parts, counts)
        if self._near is not None and self._near.is_duplicate(key):
            return self._removed("duplicate_near", parts, counts)
        result = Result(parts, None, counts, masked)
        self.report.add(result)
        return result
