"""Durations as people write them: `30s`, `15m`, `4h`, `7d`, `1w` (one number, one unit).

One parser for every option that takes a span of time: a series' `--every`, a segment's
`last_sent_within`, an experiment's `--decide-after`. A zero, a negative, a missing or an unknown
unit is refused with the field named and the forms that work.
"""

from __future__ import annotations

import re
from datetime import timedelta

from worker.errors import FieldProblem, MessageInvalid

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
#: the longest span accepted (a year): past it, a typo (`7000d`) is likelier than an intent
MAX_SECONDS = 366 * 86_400
_DURATION_RE = re.compile(r"^\s*(\d{1,7})\s*([smhdw])\s*$")
FORMS = "a whole number and a unit: 30s, 15m, 4h, 7d or 1w"


def parse_duration(text: object, field: str, *, minimum_s: int = 1) -> timedelta:
    """`7d` -> timedelta(days=7); anything else -> MessageInvalid naming `field`."""
    if not isinstance(text, str):
        raise MessageInvalid([FieldProblem(field, f"must be a duration written as {FORMS}; got {text!r}")])
    match = _DURATION_RE.match(text.lower())
    if not match:
        raise MessageInvalid([FieldProblem(field, f"{text!r} is not a duration; write {FORMS}")])
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds < minimum_s:
        raise MessageInvalid([FieldProblem(field, f"{text!r} is too short; the least is {format_duration(minimum_s)}")])
    if seconds > MAX_SECONDS:
        raise MessageInvalid([FieldProblem(field, f"{text!r} is longer than the limit of 366d")])
    return timedelta(seconds=seconds)


def format_duration(seconds: int | float | timedelta) -> str:
    """The shortest exact form: 604800 -> `1w`, 90 -> `90s`, 86400 -> `1d`."""
    total = int(seconds.total_seconds() if isinstance(seconds, timedelta) else seconds)
    for unit in ("w", "d", "h", "m"):
        if total and total % UNITS[unit] == 0:
            return f"{total // UNITS[unit]}{unit}"
    return f"{total}s"
