"""A campaign's daily send window: "HH:MM"-"HH:MM" in a named (IANA) time zone.

Nothing is dispatched outside the window. The window may cross midnight (22:00-06:00). The
dispatcher imports `in_window`; the CLI builds a `Window` with `parse_window`, whose errors name
the option (--window, --tz) and the value, so the operator knows what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.errors import ButtoncastError

_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class WindowInvalid(ButtoncastError):
    """A --window or --tz value that cannot be used; the message names the option and the value."""


@dataclass(frozen=True)
class Window:
    """A validated daily window; `start`/`end` are zero-padded "HH:MM", `tz` an IANA zone name."""

    start: str
    end: str
    tz: str

    def contains(self, now: datetime) -> bool:
        return in_window(self.start, self.end, self.tz, now)

    def __str__(self) -> str:
        return f"{self.start}-{self.end} {self.tz}"


def _clock(hours: str, minutes: str, text: str) -> str:
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise WindowInvalid(f"--window {text!r}: {hours}:{minutes} is not a time of day (00:00 to 23:59)")
    return f"{h:02d}:{m:02d}"


@lru_cache(maxsize=64)
def zone(tz: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name, or WindowInvalid naming --tz."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise WindowInvalid(f"--tz {tz!r} is not a known IANA time zone (e.g. Asia/Riyadh, Europe/Berlin, UTC)") from None


def parse_window(text: str | None, tz: str | None) -> Window | None:
    """`09:00-21:00` + `Asia/Riyadh` -> Window; (None, None) -> None (always open).

    A window without a zone is refused rather than guessed: "09:00" means nothing without one.
    """
    if text is None and tz is None:
        return None
    if text is None:
        raise WindowInvalid(f"--tz {tz!r} given without --window; add e.g. --window 09:00-21:00")
    if tz is None:
        raise WindowInvalid(f"--window {text!r} needs --tz, the time zone it is in (e.g. --tz Asia/Riyadh)")
    match = _WINDOW_RE.match(text)
    if not match:
        raise WindowInvalid(f"--window {text!r} must be written HH:MM-HH:MM, e.g. 09:00-21:00 (or 22:00-06:00 overnight)")
    start = _clock(match.group(1), match.group(2), text)
    end = _clock(match.group(3), match.group(4), text)
    if start == end:
        raise WindowInvalid(f"--window {text!r} starts and ends at the same time; leave --window out to send at any hour")
    zone(tz)
    return Window(start=start, end=end, tz=tz)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def in_window(start: str | None, end: str | None, tz: str | None, now: datetime) -> bool:
    """True when `now` (aware) falls inside [start, end) local time in `tz`; no window -> True.

    start > end means the window crosses midnight: 22:00-06:00 is open at 23:30 and at 05:59.
    """
    if not start or not end or not tz:
        return True
    if now.tzinfo is None:
        raise ValueError("in_window needs an aware datetime (UTC or any offset)")
    local = now.astimezone(zone(tz))
    minute = local.hour * 60 + local.minute
    lo, hi = _minutes(start), _minutes(end)
    if lo < hi:
        return lo <= minute < hi
    return minute >= lo or minute < hi


def next_opening(start: str | None, end: str | None, tz: str | None, now: datetime) -> datetime | None:
    """When the window next opens (aware, in `tz`), or None when it is open now or there is none."""
    if in_window(start, end, tz, now):
        return None
    local = now.astimezone(zone(tz))  # type: ignore[arg-type]
    hours, minutes = (int(x) for x in start.split(":"))  # type: ignore[union-attr]
    candidate = datetime.combine(local.date(), time(hours, minutes), tzinfo=local.tzinfo)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate
