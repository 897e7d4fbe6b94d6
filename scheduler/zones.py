"""A `--tz recipient` campaign's recipients per zone group (issue 22 item 6).

Each message of such a campaign stores its number's zone group (worker.window.zone_group_of); the
campaign keeps how many recipients each group holds (`campaigns.zones`, recounted once when the
recipients are stored: `recount_zones`). From those counts and the window, without reading a
message: which groups are open now (the dispatcher's claim takes only their messages) and, for
`campaign show`, the console's review and the API, each group's next opening.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.models import Campaign, Message
from worker.status import MessageStatus
from worker.window import RECIPIENT, UNKNOWN_ZONE, group_opening, open_in_group, zone, zones_of_group


@dataclass(frozen=True)
class ZoneRow:
    """One zone group of a campaign: its recipients and its window now."""

    zone: str
    recipients: int
    open: bool
    next_opening: datetime | None   # UTC; None when open now, or when it does not open within a week
    opens_in: str | None            # the zone whose opening it waits for (the last of the group to open)

    def describe(self) -> str:
        """`open now`, `opens 2026-03-08 09:00 America/New_York (13:00 UTC)`, or why it never opens."""
        if self.open:
            return "open now"
        if self.next_opening is None:
            if not zones_of_group(self.zone):
                return "never: no time zone is known for these numbers"
            return "not within a week: the window is never open in all these zones at once"
        local = self.next_opening.astimezone(zone(self.opens_in)) if self.opens_in else self.next_opening
        return (f"opens {local:%Y-%m-%d %H:%M} {self.opens_in or 'UTC'} "
                f"({self.next_opening.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC)")


def recount_zones(session: Session, campaign_id: int) -> dict[str, int]:
    """Count the campaign's recipients per zone group into `campaigns.zones` (one grouped query;
    rejected rows are not recipients). Call it after storing a `--tz recipient` campaign's messages."""
    rows = session.execute(
        sa.select(Message.zone, sa.func.count())
        .where(Message.campaign_id == campaign_id, Message.status != MessageStatus.REJECTED.value)
        .group_by(Message.zone)
    ).all()
    zones: dict[str, int] = {}
    for group, count in rows:
        zones[group or UNKNOWN_ZONE] = zones.get(group or UNKNOWN_ZONE, 0) + count
    session.execute(sa.update(Campaign).where(Campaign.id == campaign_id).values(zones=zones)
                    .execution_options(synchronize_session=False))
    return zones


def open_zone_groups(start: str, end: str, zones: Mapping[str, Any] | None, now: datetime) -> list[str]:
    """The campaign's zone groups (the keys of `campaigns.zones`) whose window is open `now`, sorted."""
    return sorted(group for group in zones or {} if open_in_group(start, end, group, now))


def zone_table(campaign: Campaign, now: datetime) -> list[ZoneRow] | None:
    """Per zone group: recipients, open now or the next opening; the largest groups first. None
    unless the campaign's window is in the recipients' own zones."""
    if campaign.window_tz != RECIPIENT or not campaign.window_start or not campaign.window_end:
        return None
    rows = []
    for group, count in (campaign.zones or {}).items():
        opening = group_opening(campaign.window_start, campaign.window_end, group, now)
        rows.append(ZoneRow(group, int(count), opening.open, opening.next_opening,
                            _opens_in(campaign.window_start, group, opening.next_opening)))
    return sorted(rows, key=lambda r: (-r.recipients, r.zone))


def _opens_in(start: str, group: str, at: datetime | None) -> str | None:
    """The zone of `group` whose local clock reads `start` at `at`: the one the group waits for."""
    if at is None:
        return None
    return next((name for name in zones_of_group(group) if f"{at.astimezone(zone(name)):%H:%M}" == start), None)


def describe_zones(rows: list[ZoneRow]) -> list[str]:
    """`campaign show`'s lines: one per zone group, its recipients and its window now."""
    if not rows:
        return ["  zones:      none counted yet (recipients are counted per zone when they are stored)"]
    lines = [f"  zones:      {len(rows)} zone group(s); a message goes out only while the window is open in "
             "every zone of its group"]
    width = min(max(len(r.zone) for r in rows), 60)
    for r in rows:
        lines.append(f"    {r.zone:<{width}}  {r.recipients:>9,} recipient(s)  {r.describe()}")
    return lines
