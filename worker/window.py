"""A campaign's daily send window: "HH:MM"-"HH:MM" in a named (IANA) time zone, or in each
recipient's own zone (`--tz recipient`).

Nothing is dispatched outside the window. The window may cross midnight (22:00-06:00). The
dispatcher imports `in_window`; the CLI builds a `Window` with `parse_window`, whose errors name
the option (--window, --tz) and the value, so the operator knows what to fix.

With `--tz recipient` (issue 22 item 6) each message carries its number's *zone group*: the time
zones libphonenumber says the number may be in, sorted and "|"-joined (`zone_group_of`). A message
goes out only while the window is open in EVERY zone of its group (`open_in_group`): a +1 208 number
may be in Boise or in Los Angeles, so 09:00-21:00 means 09:00 in Los Angeles to 21:00 in Boise.
Everything that asks "open now?" or "open when?" (the dispatcher, the send task, `campaign show`,
the console's review, the API) asks this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers.timezone import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX, UNKNOWN_TIMEZONE, time_zones_for_number

from worker.errors import ButtoncastError

#: `--tz recipient`: the window is read in each recipient's own time zone(s)
RECIPIENT = "recipient"
#: the group of a number whose zone is not known (libphonenumber's own name for it)
UNKNOWN_ZONE = str(UNKNOWN_TIMEZONE)
ZONE_SEPARATOR = "|"
ZONE_GROUP_MAX_CHARS = 200            # Message.zone's length
#: how far ahead an opening is looked for; a group not open in all its zones at once within it never opens
OPENING_HORIZON = timedelta(days=8)
#: why a number cannot be in a `--tz recipient` campaign (the import's and the audience's row reason)
UNKNOWN_ZONE_REASON = ("--tz recipient: no time zone is known for this number (libphonenumber has none for it, "
                       "or it may be anywhere in its country: toll-free and other non-geographic numbers); "
                       "send it in a campaign with a fixed --tz")
_COUNTRY_CODES = phonenumbers.COUNTRY_CODE_TO_REGION_CODE
_SAME_CLOCK_SAMPLE = timedelta(hours=3)   # zones whose offsets agree at every sample over two years share a clock
_SAME_CLOCK_SAMPLES = 2 * 366 * 8

_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class WindowInvalid(ButtoncastError):
    """A --window or --tz value that cannot be used; the message names the option and the value.
    `field` ("window" or "tz") and `words` say the same to a person filling a form, without the option."""

    def __init__(self, message: str, *, field: str = "window", words: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.words = words or message


@dataclass(frozen=True)
class Window:
    """A validated daily window; `start`/`end` are zero-padded "HH:MM", `tz` an IANA zone name or RECIPIENT."""

    start: str
    end: str
    tz: str

    @property
    def per_recipient(self) -> bool:
        """True for `--tz recipient`: open or not depends on each message's zone group."""
        return self.tz == RECIPIENT

    def contains(self, now: datetime, group: str | None = None) -> bool:
        return in_window(self.start, self.end, self.tz, now, group=group)

    def __str__(self) -> str:
        return f"{self.start}-{self.end} {self.tz}"


def _clock(hours: str, minutes: str, text: str) -> str:
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise WindowInvalid(f"--window {text!r}: {hours}:{minutes} is not a time of day (00:00 to 23:59)",
                            words=f"{hours}:{minutes} is not a time of day (00:00 to 23:59); write it as 09:00-21:00")
    return f"{h:02d}:{m:02d}"


@lru_cache(maxsize=64)
def zone(tz: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name, or WindowInvalid naming --tz."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise WindowInvalid(f"--tz {tz!r} is not a known IANA time zone (e.g. Asia/Riyadh, Europe/Berlin, UTC) "
                            f"nor {RECIPIENT!r} (each recipient's own zone)", field="tz",
                            words=f"{tz!r} is not a time zone we know; choose one such as Asia/Riyadh") from None


def parse_window(text: str | None, tz: str | None) -> Window | None:
    """`09:00-21:00` + `Asia/Riyadh` -> Window; (None, None) -> None (always open).
    `--tz recipient`: the window holds in each recipient's own time zone(s).

    A window without a zone is refused rather than guessed: "09:00" means nothing without one.
    """
    if text is None and tz is None:
        return None
    if text is None:
        raise WindowInvalid(f"--tz {tz!r} given without --window; add e.g. --window 09:00-21:00",
                            words="a time zone for the window, but no window: write it as 09:00-21:00")
    if tz is None:
        raise WindowInvalid(f"--window {text!r} needs --tz, the time zone it is in (e.g. --tz Asia/Riyadh, "
                            f"or --tz {RECIPIENT} for each recipient's own)", field="tz",
                            words="choose the time zone the daily window is in")
    match = _WINDOW_RE.match(text)
    if not match:
        raise WindowInvalid(f"--window {text!r} must be written HH:MM-HH:MM, e.g. 09:00-21:00 (or 22:00-06:00 overnight)",
                            words=f"write it as 09:00-21:00 (or 22:00-06:00 overnight), not {text.strip()!r}")
    start = _clock(match.group(1), match.group(2), text)
    end = _clock(match.group(3), match.group(4), text)
    if start == end:
        raise WindowInvalid(f"--window {text!r} starts and ends at the same time; leave --window out to send at any hour",
                            words="starts and ends at the same time; leave it empty to send at any hour")
    if tz.strip().lower() == RECIPIENT:
        return Window(start=start, end=end, tz=RECIPIENT)
    zone(tz)
    return Window(start=start, end=end, tz=tz)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def in_window(start: str | None, end: str | None, tz: str | None, now: datetime, *, group: str | None = None) -> bool:
    """True when `now` (aware) falls inside [start, end) local time in `tz`; no window -> True.
    `tz` RECIPIENT: open in every zone of the message's zone `group` (`open_in_group`).

    start > end means the window crosses midnight: 22:00-06:00 is open at 23:30 and at 05:59.
    """
    if not start or not end or not tz:
        return True
    if tz == RECIPIENT:
        return open_in_group(start, end, group, now)
    if now.tzinfo is None:
        raise ValueError("in_window needs an aware datetime (UTC or any offset)")
    local = now.astimezone(zone(tz))
    minute = local.hour * 60 + local.minute
    lo, hi = _minutes(start), _minutes(end)
    if lo < hi:
        return lo <= minute < hi
    return minute >= lo or minute < hi


def next_opening(start: str | None, end: str | None, tz: str | None, now: datetime, *,
                 group: str | None = None) -> datetime | None:
    """When the window next opens (aware, in `tz`), or None when it is open now or there is none.
    `tz` RECIPIENT: when it next opens in every zone of `group` (`next_opening_group`, in UTC)."""
    if tz == RECIPIENT and start and end:
        return next_opening_group(start, end, group, now)
    if in_window(start, end, tz, now):
        return None
    local = now.astimezone(zone(tz))  # type: ignore[arg-type]
    hours, minutes = (int(x) for x in start.split(":"))  # type: ignore[union-attr]
    candidate = datetime.combine(local.date(), time(hours, minutes), tzinfo=local.tzinfo)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate


# --- each recipient's own time zone (--tz recipient) --------------------------------------------

def zone_group_of(phone: str) -> str:
    """The zone group of a number (E.164 digits without '+', as worker.phone normalises them): the
    IANA zones libphonenumber says it may be in, sorted and "|"-joined; UNKNOWN_ZONE when none is
    known (or the list does not fit Message.zone even with zones of one clock merged).

    Cheap on the import's hot path: when the number's longest prefix and its country have the
    same zones (a country of one zone), that is the answer; otherwise libphonenumber decides from
    the number's type (a mobile of a country with several zones: all of them), on a PhoneNumber
    built from the digits, not parsed. The group's text is cached per distinct list of zones."""
    return _group_of(_zones_of_number(phone))


def _zones_of_number(phone: str) -> tuple[str, ...]:
    digits = phone.lstrip("+")
    if not digits.isdigit():
        return (UNKNOWN_ZONE,)
    country = next((digits[:n] for n in (1, 2, 3) if int(digits[:n]) in _COUNTRY_CODES), None)
    if country is None:
        return (UNKNOWN_ZONE,)
    by_prefix = next((TIMEZONE_DATA[digits[:n]] for n in range(min(TIMEZONE_LONGEST_PREFIX, len(digits)), 0, -1)
                      if digits[:n] in TIMEZONE_DATA), None)
    if by_prefix is not None and TIMEZONE_DATA.get(country) == by_prefix:
        return by_prefix
    return tuple(time_zones_for_number(_number(digits, country)))


def _number(digits: str, country: str) -> phonenumbers.PhoneNumber:
    """What phonenumbers.parse builds from E.164 digits, built directly (a parse costs twice the lookup)."""
    national = digits[len(country):]
    number = phonenumbers.PhoneNumber(country_code=int(country), national_number=int(national or 0))
    zeros = len(national) - len(national.lstrip("0"))
    if zeros:   # Italy's fixed lines keep their leading 0 (+39 06 ...)
        number.italian_leading_zero, number.number_of_leading_zeros = True, zeros
    return number


@lru_cache(maxsize=4096)
def _group_of(zones: tuple[str, ...]) -> str:
    names = sorted({z for z in zones if z != UNKNOWN_ZONE and _known(z)})
    if not names:
        return UNKNOWN_ZONE
    group = ZONE_SEPARATOR.join(names)
    if len(group) > ZONE_GROUP_MAX_CHARS:   # e.g. all of Russia's zones: keep one name per clock
        group = ZONE_SEPARATOR.join(_one_per_clock(names))
    return group if len(group) <= ZONE_GROUP_MAX_CHARS else UNKNOWN_ZONE


def _known(name: str) -> bool:
    try:
        zone(name)
    except WindowInvalid:   # a zone libphonenumber knows and this machine's tzdata does not
        return False
    return True


def _one_per_clock(names: list[str]) -> list[str]:
    """The first name (sorted) of each set of zones whose UTC offsets agree every 3 hours over two
    years from January 1 (Europe/Moscow and Europe/Simferopol): for "open in all" they are one."""
    first = datetime(datetime.now(timezone.utc).year, 1, 1, tzinfo=timezone.utc)
    samples = [first + i * _SAME_CLOCK_SAMPLE for i in range(_SAME_CLOCK_SAMPLES)]
    kept: dict[tuple, str] = {}
    for name in names:
        tz = zone(name)
        kept.setdefault(tuple(t.astimezone(tz).utcoffset() for t in samples), name)
    return sorted(kept.values())


@lru_cache(maxsize=4096)
def zones_of_group(group: str | None) -> tuple[str, ...]:
    """A zone group's zone names; () for none, UNKNOWN_ZONE or a name this machine does not know."""
    if not group or group == UNKNOWN_ZONE:
        return ()
    names = tuple(group.split(ZONE_SEPARATOR))
    return names if all(_known(n) for n in names) else ()


def open_in_group(start: str, end: str, group: str | None, now: datetime) -> bool:
    """True when the window is open now in every zone of `group`; never for an unknown group."""
    zones = zones_of_group(group)
    return bool(zones) and all(in_window(start, end, z, now) for z in zones)


@dataclass(frozen=True)
class GroupOpening:
    """Whether a zone group's window is open now, and if not, when it next opens (UTC; None: not
    within OPENING_HORIZON, because the group is unknown or its zones are too far apart)."""

    open: bool
    next_opening: datetime | None


def group_opening(start: str, end: str, group: str | None, now: datetime) -> GroupOpening:
    if open_in_group(start, end, group, now):
        return GroupOpening(True, None)
    return GroupOpening(False, _first_opening(start, end, group, now))


def next_opening_group(start: str, end: str, group: str | None, now: datetime) -> datetime | None:
    """When the window next opens in every zone of `group` (UTC), None when it is open now. A
    group that does not open within OPENING_HORIZON: the horizon's end, when it is asked again."""
    opening = group_opening(start, end, group, now)
    if opening.open:
        return None
    return opening.next_opening or (now + OPENING_HORIZON).astimezone(timezone.utc)


def _first_opening(start: str, end: str, group: str | None, now: datetime) -> datetime | None:
    """The first moment after `now` (within OPENING_HORIZON) when the window is open in every zone
    of `group`. That is when the last of them opens, so the candidates are each zone's own openings
    (its local `start`, day by day: DST moves them in UTC, which is why each day is computed)."""
    hours, minutes = (int(x) for x in start.split(":"))
    until = now + OPENING_HORIZON
    candidates = set()
    for name in zones_of_group(group):
        tz = zone(name)
        today = now.astimezone(tz).date()
        for day in range(-1, OPENING_HORIZON.days + 2):
            at = datetime.combine(today + timedelta(days=day), time(hours, minutes), tzinfo=tz).astimezone(timezone.utc)
            if now < at <= until:
                candidates.add(at)
    return next((at for at in sorted(candidates) if open_in_group(start, end, group, at)), None)
