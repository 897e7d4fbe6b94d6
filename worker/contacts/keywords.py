"""The one rule for consent keywords: which inbound text is a request to stop (or to start again).

A text matches a keyword when, both normalised, the keyword is the WHOLE message or its FIRST word,
as Twilio's Advanced Opt-Out matches them: "STOP", "Stop.", "stop all", "STOP please" and
"ＳＴＯＰ" are STOP; "please stop" and "don't stop" are not (a keyword anywhere else in the text
is ignored: "please don't stop sending" must not opt anyone out). A keyword of several words
("stop all") matches the whole message only.

Normalising (`normalise`): Unicode NFKC (full-width and presentation forms become plain letters),
invisible format characters removed (zero-width space and joiners, BOM, word joiner, the bidi
marks U+200E/U+200F/U+061C: Unicode category Cf), casefolded, the common Arabic folding (tashkeel
U+064B-U+065F and U+0670 and tatweel U+0640 removed; أ إ آ ٱ -> ا, ى -> ي, ة -> ه), and every
punctuation mark or symbol (categories P and S: ".", "!", "،", "؟", an emoji) read as a space.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

_ARABIC_LETTERS = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه"})
_ARABIC_MARKS = frozenset(chr(c) for c in (*range(0x064B, 0x0660), 0x0670, 0x0640))


def _char(ch: str) -> str:
    """One character of casefolded NFKC text as the matcher reads it."""
    if ch in _ARABIC_MARKS:
        return ""
    category = unicodedata.category(ch)
    if category == "Cf":            # invisible: zero-width space/joiners, BOM, word joiner, bidi marks
        return ""
    if category[0] in "PS":         # punctuation and symbols separate words
        return " "
    return ch


def normalise(text: str) -> str:
    """`text` as keywords are compared: NFKC, no invisible characters, casefolded, Arabic folded,
    punctuation and symbols as spaces, words separated by one space, trimmed."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_ARABIC_LETTERS)
    return " ".join("".join(_char(ch) for ch in folded).split())


@lru_cache(maxsize=32)
def _normalised(keywords: frozenset[str]) -> frozenset[str]:
    """The keywords normalised (the settings' lists: a handful of sets, each normalised once)."""
    return frozenset(n for k in keywords if (n := normalise(k)))


def match_keyword(text: str | None, keywords: frozenset[str]) -> str | None:
    """The (normalised) keyword that `text` is, as the whole message or its first word; or None."""
    words = normalise(text) if text else ""
    if not words or not keywords:
        return None
    table = _normalised(keywords)
    first = words.split(" ", 1)[0]
    return words if words in table else first if first in table else None
