"""Find personal data in text and replace it with typed placeholders.

`scrub(text, types)` returns the text with every match replaced by its
type's placeholder (`<EMAIL>`, `<PHONE>`, ...) and how many of each it
replaced. Pure Python (no TensorFlow): the data-hygiene stage
(`tfchat.data.hygiene`) runs it on every document before tokenizing, and the
placeholders are meant to be the tokenizer's user symbols, so each stays one
token.

What each type finds, in the order they are applied (earlier types take their
characters first, so `user:pass@host` is never read as an e-mail address):

  URL_CREDENTIALS  the `user:password` of a URL (`https://<URL_CREDENTIALS>@host`)
  EMAIL            local@domain.tld (Unicode letters allowed)
  IBAN             country code, check digits and account, spaces allowed,
                   with the country's length and the mod-97 check
  CREDIT_CARD      13-19 digits (one separator kind: none, spaces or dashes)
                   with a card network's prefix and length and the Luhn check
  SSN              US social security numbers, ddd-dd-dddd, without the
                   numbers never issued (000, 666, 9xx; 00 group; 0000 serial)
  IP               IPv4 (dotted quad, not after "version"/"v") and IPv6
                   (validated by `ipaddress`)
  PHONE            `phonenumbers.PhoneNumberMatcher` at leniency VALID (the
                   number must be a valid one), run for each of `PHONE_REGIONS`;
                   international +CC numbers are found in any of them

Realistic look-alikes are left alone: dates (2024-05-01, 01/05/2024), times,
version numbers (1.2.3, v10.0.19041), order and invoice numbers (Order no.
2023-000123, INV-2023-000123: a number after a word that names an
identifier, or glued to a code, is no phone), ISBNs (also hyphenated ISBN-10s),
prices, years and long numbers that fail the Luhn check. A bare 10-digit
number that is a valid mobile number of a listed region (9876543210 in
India) is replaced: without formatting it cannot be told from one.
"""

import ipaddress
import re

import phonenumbers

from tfchat.errors import TfchatError

TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "IP", "IBAN", "URL_CREDENTIALS", "SSN")
ALL = TYPES
PLACEHOLDERS = tuple(f"<{name}>" for name in TYPES)
# Regions whose national formats are recognised (international +CC numbers are
# recognised whatever the region): the largest languages' home regions.
# More regions find more national formats and also take more plain numbers
# for phone numbers.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "CN", "JP", "BR")

# Letters of scripts written without spaces between words (Chinese, Japanese,
# Thai, Lao, Khmer, Myanmar, Tibetan): personal data written in such text
# touches letters, so they do not count as part of a neighbouring token.
UNSPACED_RANGES = (
    "\u0e00-\u0e7f"          # Thai
    "\u0e80-\u0eff"          # Lao
    "\u0f00-\u0fff"          # Tibetan
    "\u1000-\u109f"          # Myanmar
    "\u1780-\u17ff"          # Khmer
    "\u2e80-\u2fdf"          # CJK radicals
    "\u3005-\u3007\u3021-\u3029\u3038-\u303c"  # CJK iteration marks, Hangzhou numerals
    "\u3040-\u30ff"          # Hiragana, Katakana
    "\u31f0-\u31ff"          # Katakana extensions
    "\u3400-\u4dbf"          # CJK extension A
    "\u4e00-\u9fff"          # CJK unified ideographs
    "\uf900-\ufaff"          # CJK compatibility ideographs
    "\uff66-\uff9f"          # half-width Katakana
    "\U00020000-\U0003134f"  # CJK extensions B-G
)
# A letter, digit or underscore of a spaced script.
_W = f"[^\\W{UNSPACED_RANGES}]"

# Application order: a type's matches are replaced before the next type looks.
_ORDER = ("URL_CREDENTIALS", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP", "PHONE")


def parse_types(spec):
    """The PII type names of `spec`: "all", a comma-separated string or an
    iterable of names (any case); an unknown name raises TfchatError."""
    if spec is None:
        return ALL
    if isinstance(spec, str):
        spec = [part for part in spec.split(",") if part.strip()]
    names = []
    for part in spec:
        name = part.strip().upper()
        if name == "ALL":
            return ALL
        if name not in TYPES:
            raise TfchatError(
                f"unknown PII type {part.strip()!r}; the types are: {', '.join(t.lower() for t in TYPES)} (or all)")
        if name not in names:
            names.append(name)
    return tuple(names)


# --- URL credentials and e-mail ------------------------------------------------

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/?#@:]+:[^\s/?#@]+)@")
_LOCAL = f"(?:{_W}|[.%+-])"
_LABEL = f"[^\\W_{UNSPACED_RANGES}](?:(?:{_W}|-)*[^\\W_{UNSPACED_RANGES}])?"
_EMAIL = re.compile(f"(?<!{_LOCAL}){_LOCAL}+@(?:{_LABEL}\\.)+[^\\W\\d_{UNSPACED_RANGES}]{{2,}}(?!{_W}|-)")


# --- IBAN ----------------------------------------------------------------------

# The IBAN length of each country in the SWIFT registry.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
# Candidates: country, check digits, then alphanumerics in groups of up to 4,
# optionally separated by single spaces.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![A-Za-z0-9])")


def iban_valid(compact):
    """The ISO 13616 check: country length and mod 97 == 1."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    digits = "".join(str(int(c, 36)) for c in compact[4:] + compact[:4])
    return int(digits) % 97 == 1


def _iban_spans(text):
    for m in _IBAN.finditer(text):
        length = _IBAN_LENGTHS.get(m.group()[:2])
        if length is None:
            continue
        # The first `length` alphanumerics of the candidate (a following group
        # of capitals or digits may have joined it).
        taken, end = 0, m.start()
        for end in range(m.start(), m.end()):
            if text[end] != " ":
                taken += 1
                if taken == length:
                    break
        if taken != length or (end + 1 < m.end() and text[end + 1] != " "):
            continue
        compact = text[m.start():end + 1].replace(" ", "")
        if iban_valid(compact):
            yield m.start(), end + 1


# --- Credit cards and SSNs -----------------------------------------------------

# Candidates: 13-19 digits written together, or in groups of 2-6 digits (the
# first of 4) all separated by spaces or all by dashes.
_CARD = re.compile(r"(?<!\d)(?<!\d[.,/-])(?:\d{13,19}|\d{4}(?: \d{2,6}){2,4}|\d{4}(?:-\d{2,6}){2,4})(?!\d|[.,/-]\d)")


def luhn_valid(digits):
    """The Luhn checksum of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_network(digits):
    """Whether `digits` have a card network's prefix and length."""
    n = len(digits)
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)                      # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16                                # Mastercard
    if two in (34, 37):
        return n == 15                                # American Express
    if four == 6011 or 644 <= three <= 649 or two == 65:
        return 16 <= n <= 19                          # Discover
    if 3528 <= four <= 3589:
        return 16 <= n <= 19                          # JCB
    if 300 <= three <= 305 or two in (36, 38):
        return 14 <= n <= 19                          # Diners Club
    if two == 62:
        return 16 <= n <= 19                          # UnionPay
    if two == 50 or 56 <= two <= 69:
        return 13 <= n <= 19                          # Maestro
    return False


def _card_spans(text):
    for m in _CARD.finditer(text):
        groups = re.split(r"[ -]", m.group())
        # A number written in groups may be followed by another group that is
        # not part of it: try the longest run of groups first.
        for k in range(len(groups), 0 if len(groups) == 1 else 2, -1):
            digits = "".join(groups[:k])
            if 13 <= len(digits) <= 19 and _card_network(digits) and luhn_valid(digits):
                yield m.start(), m.start() + len(" ".join(groups[:k]))
                break


_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")


# --- IP addresses --------------------------------------------------------------

_IPV4 = re.compile(f"(?<!{_W})(?<!\\.)(?:\\d{{1,3}}\\.){{3}}\\d{{1,3}}(?!{_W}|\\.\\d)")
_VERSION_BEFORE = re.compile(r"(?i)(?:\b(?:version|ver|release|build|v)\.?\s*)$")
_IPV6 = re.compile(f"(?<!{_W})(?<![:.])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}"
                   f"(?:[0-9A-Fa-f]{{1,4}}|(?:\\d{{1,3}}\\.){{3}}\\d{{1,3}})?(?:%[\\w.]+)?(?!{_W}|:)")


def _ip_spans(text):
    for m in _IPV4.finditer(text):
        if _VERSION_BEFORE.search(text[max(0, m.start() - 16):m.start()]):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield m.start(), m.end()
    for m in _IPV6.finditer(text):
        candidate = m.group().split("%")[0]
        # Hex words alone ("dead::beef", C++'s "a::b") are not taken.
        if not re.search(r"\d", candidate) or candidate.count(":") < 2:
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield m.start(), m.end()


# --- Phone numbers -------------------------------------------------------------

# Text without seven digits close together holds no phone number: skip the
# (slow) matcher.
_MAYBE_PHONE = re.compile(r"\d(?:[\s().\-/]{0,3}\d){6}")


# What names an identifier, not a phone, just before a number: "Order no.",
# "invoice", "ISBN", "#"...
_IDENTIFIER_CUE = re.compile(
    r"(?:\b(?:no|nr|num|number|order|invoice|inv|ref|reference|id|isbn|issn|doi|ticket|case|"
    r"account|acct|serial|sku|item|part|po)\b\.?|#)[\s:#.]*$", re.IGNORECASE)
_ISBN10_SHAPE = re.compile(r"\d{1,5}-\d{1,7}-\d{1,7}-[\dX]")


def _isbn10_valid(candidate):
    chars = candidate.replace("-", "")
    if len(chars) != 10 or not chars[:9].isdigit() or not (chars[9].isdigit() or chars[9] == "X"):
        return False
    values = [int(c) for c in chars[:9]] + [10 if chars[9] == "X" else int(chars[9])]
    return sum((10 - i) * v for i, v in enumerate(values)) % 11 == 0


def _identifier(text, start, end):
    """Whether the phone-like `text[start:end]` is part of an identifier: glued
    to a code before it (INV-2023-000123), after a word that names one
    (Order no. 2023-000123, ISBN ...), or a hyphenated ISBN-10."""
    before = text[max(0, start - 24):start]
    if before[-1:] in ("-", "/", "_") and re.search(rf"{_W}[-/_]$", before):
        return True
    if before[-1:] and re.match(_W, before[-1]):
        return True
    if _IDENTIFIER_CUE.search(before):
        return True
    candidate = text[start:end]
    return bool(_ISBN10_SHAPE.fullmatch(candidate)) and _isbn10_valid(candidate)


def _phone_spans(text, regions):
    if not _MAYBE_PHONE.search(text):
        return []
    spans = set()
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            if not _identifier(text, m.start, m.end):
                spans.add((m.start, m.end))
    return spans


# --- scrub ---------------------------------------------------------------------


def _replace(text, spans, placeholder):
    """Replace the non-overlapping `spans` (longest first where they overlap)."""
    chosen, last_end = [], -1
    for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
        if start >= last_end:
            chosen.append((start, end))
            last_end = end
    if not chosen:
        return text, 0
    parts, pos = [], 0
    for start, end in chosen:
        parts.append(text[pos:start])
        parts.append(placeholder)
        pos = end
    parts.append(text[pos:])
    return "".join(parts), len(chosen)


def scrub(text, types=ALL, regions=PHONE_REGIONS):
    """(text with personal data replaced by placeholders, {type: count}).

    `types`: the PII types to look for (names of `TYPES`, any case, or a
    comma-separated string; "all" for all); `regions`: the phone regions
    whose national formats are recognised. The counts hold every requested
    type, 0 included.
    """
    wanted = parse_types(types)
    counts = dict.fromkeys(wanted, 0)
    for name in _ORDER:
        if name not in counts:
            continue
        placeholder = f"<{name}>"
        if name == "URL_CREDENTIALS":
            text, n = _URL_CREDENTIALS.subn(lambda m: m.group(1) + placeholder + "@", text)
        elif name == "EMAIL":
            text, n = _EMAIL.subn(placeholder, text)
        elif name == "SSN":
            text, n = _SSN.subn(placeholder, text)
        else:
            finder = {"IBAN": _iban_spans, "CREDIT_CARD": _card_spans, "IP": _ip_spans}.get(name)
            spans = finder(text) if finder else _phone_spans(text, regions)
            text, n = _replace(text, spans, placeholder)
        counts[name] += n
    return text, counts
