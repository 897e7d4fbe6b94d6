"""Date-time pickers in the console's forms: `<input type="datetime-local">` read in the time zone
the form names (the campaign's), and handed to the service as an aware time (stored as UTC).

A picker posts a wall time without a zone ("2026-12-01T09:00"); with "Asia/Riyadh" it is
2026-12-01 06:00 UTC. A wall time the zone skips (clocks going forward) is refused, not moved; a
browser without the picker may post text, which is read the same way (an offset typed with it wins).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

#: zone names a form offers: the IANA areas people live in (no Etc/GMT+3, no legacy aliases)
_AREAS = ("Africa/", "America/", "Antarctica/", "Asia/", "Atlantic/", "Australia/", "Europe/", "Indian/", "Pacific/")


@lru_cache(maxsize=1)
def zone_choices() -> tuple[str, ...]:
    """The zones a form's select lists, UTC first."""
    return ("UTC",) + tuple(sorted(z for z in available_timezones() if z.startswith(_AREAS)))


def known_zone(name: str | None) -> bool:
    try:
        ZoneInfo(name or "")
        return True
    except (ZoneInfoNotFoundError, ValueError):
        return False


@dataclass
class Times:
    """A form's pickers read: `values[input]` is an aware time, None (left empty), or the text as posted
    when it could not be read (the service refuses it too, so nothing is made); `problems[input]` the words."""

    values: dict[str, datetime | str | None] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def read_times(form: dict[str, str], inputs: tuple[str, ...], zone: str) -> Times:
    """The form's date-time `inputs`, each read in `zone`."""
    times = Times()
    for name in inputs:
        text = (form.get(name) or "").strip()
        value, problem = to_utc(text, zone)
        times.values[name] = value if problem is None else text
        if problem:
            times.problems[name] = problem
    return times


def to_utc(text: str, zone: str) -> tuple[datetime | None, str | None]:
    """`2026-12-01T09:00` in Asia/Riyadh -> (2026-12-01 06:00 UTC, None); "" -> (None, None);
    what cannot be read -> (None, the words for it)."""
    if not text:
        return None, None
    try:
        wall = datetime.fromisoformat(text)
    except ValueError:
        return None, "choose a date and a time (e.g. 2026-12-01 09:00)"
    if wall.tzinfo is not None:
        return wall.astimezone(timezone.utc), None
    if not known_zone(zone):
        return None, "choose the time zone it is in"
    tz = ZoneInfo(zone)
    at = wall.replace(tzinfo=tz)
    if at.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None) != wall:
        return None, f"{wall:%Y-%m-%d %H:%M} does not exist in {zone} (the clocks skip it); choose another time"
    return at.astimezone(timezone.utc), None


def picker_value(value: datetime | None, zone: str) -> str:
    """An aware time as a picker's value in `zone` ("2026-12-01T09:00")."""
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(zone) if known_zone(zone) else timezone.utc).strftime("%Y-%m-%dT%H:%M")
