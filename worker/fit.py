"""Fit outside text to the column it is written to, so a value too long never fails the write.

A vendor string longer than its column makes Postgres raise DataError (SQLite does not check);
if that write records an accepted send, the send is erased. Every string the send path stores
from outside passes through `fit` first: the length comes from the model's own column, a cut
value ends with CUT_MARKER so a reader sees it was cut, and what Postgres text cannot hold at all
(NUL, lone surrogates that are not UTF-8) is replaced.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

CUT_MARKER = "…"
REPLACEMENT = "\ufffd"
#: a Text column (no length) still keeps no more than this of one vendor string
TEXT_MAX_CHARS = 1000


def column_length(column: InstrumentedAttribute | sa.Column) -> int:
    """The column's VARCHAR length, or TEXT_MAX_CHARS for an unbounded Text column."""
    length = getattr(getattr(column, "type", None), "length", None)
    return length or TEXT_MAX_CHARS


def fit(column: InstrumentedAttribute | sa.Column, value: object) -> str | None:
    """`value` as text that `column` accepts: None stays None; too long is cut to the column's
    length, the last character being CUT_MARKER."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")   # a lone surrogate becomes "?"
    limit = column_length(column)
    return text if len(text) <= limit else text[: limit - 1] + CUT_MARKER
