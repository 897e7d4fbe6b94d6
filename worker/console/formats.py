"""How figures read on the pages: times, counts, shares; template filters only, no rule of the business."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from markupsafe import Markup, escape

from worker.durations import format_duration


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


def pct(value: float | None) -> str:
    """A share as a percentage, to a tenth where it has one: 0.2 -> `20 %`, 0.125 -> `12.5 %`."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}".removesuffix(".0") + " %"


def percent(part: int, whole: int) -> float:
    """For widths (progress bars, chart bars): 0..100."""
    return 0.0 if not whole else round(min(100.0, 100 * part / whole), 2)


_NAMED = re.compile(r"\b(campaign|series|segment)(\s+)(\d{1,19})\b")


def campaign_links(text: str) -> Markup:
    """A line of text (`campaign show`'s) with each `campaign 12` / `series 7` / `segment 3` a link to its page."""
    def link(m: re.Match[str]) -> str:
        page = "segments" if m.group(1) == "segment" else "campaigns"
        return f'<a href="/{page}/{m.group(3)}">{m.group(0)}</a>'

    return Markup(_NAMED.sub(link, str(escape(text))))


def duration(seconds: int | None) -> str:
    """Seconds as people write a span: 604800 -> 1w, 86400 -> 1d."""
    return "-" if seconds is None else format_duration(seconds)


FILTERS = {"when": when, "clock": clock, "count": count, "epoch": epoch, "campaign_links": campaign_links,
           "duration": duration, "pct": pct}
GLOBALS = {"share": share, "percent": percent}
