"""Telugu text normalisation: the one place text is made ready to be spoken.

Every transcript in Maata (synthetic sentences, imported corpora, the LM's text stream) goes
through :func:`normalize_text`, so the same sentence always reads the same way:

1. Unicode NFC (this also composes the two-part vowel sign ె + ౖ into ై).
2. Invisible characters: BOM, word joiner and soft hyphen are removed; zero-width and
   no-break spaces become spaces; other control characters become spaces.
3. Joiners: ZWNJ/ZWJ are kept only where they change how a word is written (right after a
   virama, before a Telugu letter, e.g. ``ఫీడ్‌బ్యాక్``); stray ones at word edges or
   around non-Telugu characters are dropped, and runs collapse to one.
4. Numbers: any Unicode decimal digits (Telugu ౦–౯ included) become ASCII, then times,
   decimals, percentages, rupee amounts and integers are spoken as Telugu words.
5. Punctuation and whitespace: danda becomes a full stop, quotes and brackets go, ``:`` and
   ``;`` become commas, repeated marks collapse, spaces are single.

We do not use indic-nlp's normaliser: it deletes every ZWNJ/ZWJ (losing the meaningful ones)
and rewrites an ASCII ``:`` after a Telugu letter into the visarga ``ః``, which changes the
pronunciation of ordinary text such as ``సమయం: 10:30``.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "TextError",
    "normalize_text",
    "number_to_words",
    "digits_to_ascii",
    "clean_joiners",
    "expand_numbers",
    "clean_punctuation",
]

ZWNJ = "\u200c"
ZWJ = "\u200d"
VIRAMA = "\u0c4d"

_REMOVE = dict.fromkeys(map(ord, "\ufeff\ufffe\u2060\u00ad"), None)  # BOM, word joiner, soft hyphen
_TO_SPACE = dict.fromkeys(map(ord, "\u200b\u00a0\u202f\u2009\u2002\u2003\t\r\n\x0b\x0c"), " ")

# Spoken forms used around numbers (colloquial Telugu; English loanwords where that is what
# people say).
_POINT = "పాయింట్"
_MINUS = "మైనస్"
_PERCENT = "శాతం"
_RUPEES = "రూపాయలు"
_HOURS = "గంటలు"
_HOURS_OBLIQUE = "గంటల"
_MINUTES = "నిమిషాలు"
_MINUTES_OBLIQUE = "నిమిషాల"

# Symbols that are read aloud; everything else outside letters and sentence punctuation
# becomes a space.
_SPOKEN_SYMBOLS = {"&": "అండ్", "+": "ప్లస్", "@": "ఎట్", "=": "ఈక్వల్స్"}


class TextError(ValueError):
    """Text that cannot be normalised or spoken (not a string, empty where text is required)."""


def _is_telugu_letter(ch: str) -> bool:
    """Telugu consonants and independent vowels (U+0C05–U+0C39, U+0C58–U+0C61)."""
    return "\u0c05" <= ch <= "\u0c39" or "\u0c58" <= ch <= "\u0c61"


def clean_joiners(text: str) -> str:
    """Keep a ZWNJ/ZWJ only between a virama and a Telugu letter; drop the rest.

    After a virama the joiner decides whether a conjunct forms (``ఇన్‌స్టాల్`` vs
    ``ఇన్స్టాల్``), so it is part of the spelling. Anywhere else (word edges, next to
    spaces, Latin or punctuation, or doubled) it is invisible noise from copy-paste.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch not in (ZWNJ, ZWJ):
            out.append(ch)
            i += 1
            continue
        j = i
        while j < n and text[j] in (ZWNJ, ZWJ):
            j += 1
        prev_ok = bool(out) and out[-1] == VIRAMA
        next_ok = j < n and _is_telugu_letter(text[j])
        if prev_ok and next_ok:
            out.append(ch)  # the first joiner of a run decides; the rest are duplicates
        i = j
    return "".join(out)


def digits_to_ascii(text: str) -> str:
    """Map every Unicode decimal digit (Telugu ౦–౯, Devanagari, ...) to ASCII 0–9."""
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() and not c.isascii() else c
                   for c in text)


def _digit_words(digits: str) -> str:
    """Read a digit string one digit at a time (phone numbers, decimals, leading zeros)."""
    return " ".join(number_to_words(int(d)) for d in digits)


# A round number before a noun takes the oblique form: ఐదు వందలు → ఐదు వందల రూపాయలు.
_OBLIQUE = {"వందలు": "వందల", "వేలు": "వేల", "లక్షలు": "లక్షల", "కోట్లు": "కోట్ల"}


def number_to_words(number: int | str, *, attributive: bool = False) -> str:
    """A non-negative integer as spoken Telugu words (``250`` → ``రెండు వందల యాభై``).

    ``attributive=True`` gives the form used before a noun (``500`` → ``ఐదు వందల`` as in
    ``ఐదు వందల రూపాయలు``). Strings with a leading zero or more than nine digits (phone and
    account numbers) are read digit by digit, which is how people say them.
    """
    from indic_numtowords import num2words

    s = str(number).strip()
    if not s.isdigit() or not s.isascii():
        raise TextError(f"number_to_words expects a non-negative integer, got {number!r}")
    if len(s) > 1 and (s[0] == "0" or len(s) > 9):
        return _digit_words(s)
    words = unicodedata.normalize("NFC", num2words(int(s), lang="te"))  # it emits ె+ౖ for ై
    if attributive:
        head, _, last = words.rpartition(" ")
        words = f"{head} {_OBLIQUE.get(last, last)}".strip()
    return words


def _time_words(m: re.Match[str]) -> str:
    """``10:30`` → పది గంటల ముప్పై నిమిషాలు; oblique (…నిమిషాల) before a glued suffix."""
    hours, minutes = number_to_words(int(m.group(1))), int(m.group(2))
    glued = m.string[m.end():m.end() + 1].isalpha()
    if minutes == 0:
        return f"{hours} {_HOURS_OBLIQUE if glued else _HOURS}"
    unit = _MINUTES_OBLIQUE if glued else _MINUTES
    return f"{hours} {_HOURS_OBLIQUE} {number_to_words(minutes)} {unit}"


def _decimal_words(m: re.Match[str]) -> str:
    return f"{number_to_words(m.group(1))} {_POINT} {_digit_words(m.group(2))}"


_LETTER_DIGIT = re.compile(r"(?<=[\u0c00-\u0c7fA-Za-z])(?=\d)")  # "abc123" → "abc 123"
_GROUPED = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{2,3})+(?![\d,])")  # 1,00,000 / 1,000,000
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])")
_NEGATIVE = re.compile(r"(?<!\S)-(?=\d)")
_RUPEE = re.compile(r"(?:₹|\bRs\.?|రూ\.)\s*(\d+)")
_PERCENT_RE = re.compile(r"(\d+)\s*%")
_INTEGER = re.compile(r"\d+(?=(\s+\S+)?)")

# Words that a number counts (prefixes, so inflected forms match); a number before one of
# them takes the attributive form (రెండు వందల రూపాయలు, not రెండు వందలు రూపాయలు).
_COUNTED = ("రూపాయ", "పైస", "కిలో", "గ్రామ", "లీటర", "మీటర", "కిలోమీటర", "గంట", "నిమిష",
            "సెకన", "రోజు", "రోజుల", "వార", "నెల", "సంవత్సర", "ఏళ్ల", "ఏళ్", "మంది", "సార్ల",
            "డిగ్రీ", "పేజీ", "శాతం", "కోట్ల", "లక్షల")


def _integer_words(m: re.Match[str]) -> str:
    """An integer token in words; oblique before a counted noun or a glued suffix (500కి)."""
    following = (m.group(1) or "").strip()
    glued = m.string[m.end():m.end() + 1].isalpha()
    return number_to_words(m.group(0), attributive=glued or following.startswith(_COUNTED))


def expand_numbers(text: str) -> str:
    """Replace numbers in ``text`` (ASCII digits) with spoken Telugu words.

    Handles, in this order: digit grouping commas, clock times ``HH:MM``, decimals, a minus
    sign at a word start, rupee amounts (``₹500``, ``Rs 500``, ``రూ. 500``), percentages and
    plain integers. A number glued to a Telugu suffix keeps the suffix (``5కి`` → ``ఐదుకి``).
    """
    text = _LETTER_DIGIT.sub(" ", text)
    text = _GROUPED.sub(lambda m: m.group(0).replace(",", ""), text)
    text = _TIME.sub(_time_words, text)
    text = _DECIMAL.sub(_decimal_words, text)
    text = _NEGATIVE.sub(f"{_MINUS} ", text)
    text = _RUPEE.sub(lambda m: f"{number_to_words(m.group(1), attributive=True)} {_RUPEES}", text)
    text = _PERCENT_RE.sub(lambda m: f"{number_to_words(m.group(1), attributive=True)} {_PERCENT}",
                           text)
    return _INTEGER.sub(_integer_words, text)


_PUNCT_MAP = str.maketrans({
    "\u0964": ".", "\u0965": ".", "\u0c64": ".", "\u0c65": ".",  # dandas
    ":": ",", ";": ",", "…": ",", "،": ",",
    "¿": None, "¡": None,
})
_DROP = re.compile(r"[\"'`“”‘’„‚«»‹›()\[\]{}<>]")
_SPACE_SYMBOLS = re.compile(r"[-–—_/\\|*#~^$%₹]")
_REPEATED = re.compile(r"([.,?!])[.,?!]*")
_SPACE_BEFORE = re.compile(r"\s+([.,?!])")
_NO_SPACE_AFTER = re.compile(r"([.,?!])(?=[^\s.,?!])")
_LEADING_PUNCT = re.compile(r"^[\s.,?!]+")
_TRAILING_COMMA = re.compile(r"[\s,]+$")


def clean_punctuation(text: str) -> str:
    """Keep only ``. , ? !`` as punctuation, spaced the usual way; never create a visarga.

    Dandas become full stops; ``:``/``;`` become commas (a colon is a pause, not ``ః``);
    quotes and brackets vanish; a few symbols are read aloud (``&`` → అండ్); other symbols
    become spaces. Repeated marks collapse to the first (``?!`` → ``?``); a trailing comma
    (e.g. from a final ``...``) is dropped.
    """
    text = text.translate(_PUNCT_MAP)
    text = text.replace("...", ",")
    text = _DROP.sub("", text)
    for sym, word in _SPOKEN_SYMBOLS.items():
        text = text.replace(sym, f" {word} ")
    text = _SPACE_SYMBOLS.sub(" ", text)
    text = _REPEATED.sub(r"\1", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _NO_SPACE_AFTER.sub(r"\1 ", text)
    text = _LEADING_PUNCT.sub("", text)
    text = _TRAILING_COMMA.sub("", text)
    return " ".join(text.split())


def _strip_invisible(text: str) -> str:
    """Remove invisible format characters and turn odd spaces/control characters into spaces."""
    text = text.translate(_REMOVE).translate(_TO_SPACE)
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)


def normalize_text(text: str, *, numbers: bool = True) -> str:
    """Normalise Telugu (or code-mixed) text for speech; see the module docstring for steps.

    Returns ``""`` for blank input; callers that need text check for that. Raises
    :class:`TextError` if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFC", text)
    text = _strip_invisible(text)
    text = clean_joiners(text)
    text = digits_to_ascii(text)
    if numbers:
        text = expand_numbers(text)
    return clean_punctuation(text)
