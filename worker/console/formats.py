"""How figures read on the pages: times, counts, shares; template filters only, no rule of the business."""

from __future__ import annotations

from datetime import datetime, timezone


def when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(value: datetime | None) -> str:
    """A time of today, to the second (UTC): "counts as of 10:31:02 UTC"; an older day gets its date."""
    if value is None:
        return "-"
    utc = value.astimezone(timezone.utc)
    return utc.strftime("%H:%M:%S UTC") if utc.date() == datetime.now(timezone.utc).date() else when(value)


def epoch(value: float | None) -> str:
    """Unix seconds (the rate limiter's clock) as UTC."""
    return "-" if value is None else when(datetime.fromtimestamp(value, timezone.utc))


def count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def share(part: int, whole: int) -> str:
    return "-" if not whole else f"{100 * part / whole:.1f} %"


def percent(part: int, whole: int) -> float:
    """For widths (progress bars, chart bars): 0..100."""
    return 0.0 if not whole else round(min(100.0, 100 * part / whole), 2)


FILTERS = {"when": when, "clock": clock, "count": count, "epoch": epoch}
GLOBALS = {"share": share, "percent": percent}
