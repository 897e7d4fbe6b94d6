"""How figures read on the pages: times, counts, shares; template filters only, no rule of the business."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Mapping
from zoneinfo import ZoneInfo

from jinja2 import pass_context
from markupsafe import Markup, escape

from scheduler.template import PLACEHOLDER_RE
from worker.durations import format_duration
from worker.window import RECIPIENT

UTC_ZONE = "UTC"
DATE_TIME = "%Y-%m-%d %H:%M:%S"


def campaign_zone(campaign: Any) -> str:
    """The zone a campaign's pages show its times in: its daily window's; UTC when it has none, or
    when the window is each recipient's own (no one zone is theirs)."""
    tz = getattr(campaign, "window_tz", None)
    return tz if tz and tz != RECIPIENT else UTC_ZONE


def page_zone(context: Mapping[str, Any]) -> str:
    """The zone of the page being rendered: `zone` when its route names one (a message's page: its
    campaign's), a campaign's own (`c`) on its pages, else the console's (CONSOLE_TIME_ZONE)."""
    if context.get("zone"):
        return context["zone"]
    campaign = context.get("c")
    if campaign is not None and hasattr(campaign, "window_tz"):
        return campaign_zone(campaign)
    return context.get("console_zone") or UTC_ZONE


def in_zone(value: datetime | None, zone: str, *, ms: bool = False, time_only: bool = False,
            seconds: bool = True) -> Markup | str:
    """A time as the page shows it: in `zone`, the zone named, the UTC time on hover and in `datetime`:
    `<time datetime="2026-12-01T06:00:00Z" title="2026-12-01 06:00:00 UTC">2026-12-01 09:00:00 Asia/Riyadh</time>`."""
    if value is None:
        return "-"
    utc = value.astimezone(timezone.utc)
    local = value.astimezone(ZoneInfo(zone))
    shown = local.strftime(("%H:%M:%S" if time_only else DATE_TIME) if seconds else "%Y-%m-%d %H:%M")
    shown += f".{local.microsecond // 1000:03d}" if ms else ""
    return Markup('<time datetime="{}" title="{} UTC">{} {}</time>').format(
        utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{utc.microsecond // 1000:03d}" if ms else "") + "Z",
        utc.strftime(DATE_TIME) + (f".{utc.microsecond // 1000:03d}" if ms else ""), shown, zone)


@pass_context
def when(context: Mapping[str, Any], value: datetime | None, ms: bool = False) -> Markup | str:
    """`{{ c.started_at | when }}`: in the page's zone (page_zone); `when(ms=True)` to the millisecond."""
    return in_zone(value, page_zone(context), ms=ms)


@pass_context
def clock(context: Mapping[str, Any], value: datetime | None) -> Markup | str:
    """A time of today, to the second: "counts as of 10:31:02 Asia/Riyadh"; an older day gets its date."""
    if value is None:
        return "-"
    zone = page_zone(context)
    today = value.astimezone(ZoneInfo(zone)).date() == datetime.now(ZoneInfo(zone)).date()
    return in_zone(value, zone, time_only=today)


_UTC_IN_TEXT = re.compile(r"\b(\d{4}-\d{2}-\d{2} \d{2}:\d{2})(:\d{2})? UTC\b")


@pass_context
def zoned(context: Mapping[str, Any], text: str | None) -> Markup:
    """A service's line of text (`campaign show`'s, a note) with each "2026-12-01 06:00 UTC" in it shown
    as `when` shows a time: in the page's zone, UTC on hover."""
    zone = page_zone(context)

    def local(m: re.Match[str]) -> str:
        value = datetime.strptime(m.group(1) + (m.group(2) or ""), "%Y-%m-%d %H:%M" + (":%S" if m.group(2) else ""))
        return str(in_zone(value.replace(tzinfo=timezone.utc), zone, seconds=bool(m.group(2))))

    return Markup(_UTC_IN_TEXT.sub(local, str(escape(text or ""))))


@pass_context
def epoch(context: Mapping[str, Any], value: float | None) -> Markup | str:
    """Unix seconds (the rate limiter's clock) in the page's zone."""
    return "-" if value is None else in_zone(datetime.fromtimestamp(value, timezone.utc), page_zone(context))


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


def placeholders(text: str | None) -> Markup:
    """A message text with each `{{name}}` placeholder marked (a campaign's message, before it is filled)."""
    return Markup(PLACEHOLDER_RE.sub(lambda m: f'<mark class="ph">{m.group(0)}</mark>', str(escape(text or ""))))


def duration(seconds: int | None) -> str:
    """Seconds as people write a span: 604800 -> 1w, 86400 -> 1d."""
    return "-" if seconds is None else format_duration(seconds)


FILTERS = {"when": when, "clock": clock, "count": count, "epoch": epoch, "campaign_links": campaign_links, "zoned": zoned,
           "duration": duration, "pct": pct, "placeholders": placeholders}
GLOBALS = {"share": share, "percent": percent}
