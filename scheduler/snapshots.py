"""Tally snapshots: one full scan of a campaign's rows (`report.tally`) kept in `campaign_tallies`
with the time it was taken.

Counting a million-row campaign is one ~400 ms scan; reading its snapshot is one primary-key
lookup. The console shows the snapshot at once (saying "counts as of ..." when it is old) and
replaces it in the background; beat's sweep keeps the snapshots of campaigns with recent activity
recent, so an api process that has just started has one to show. Nothing on the send path keeps
a counter: every snapshot is a recount, so it can be old (and says so), never wrong.

Recent activity, found without an index on the message timestamps (it would cost the send path
its HOT updates): a running campaign (the send path changes its rows); a campaign whose row
changed since its snapshot (paused, completed, cancelled, retried); a campaign one of whose
messages a vendor webhook touched since (delivered, read, tapped, failed late), found by walking
`webhook_events` by primary key from where the previous sweep stopped.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from scheduler import report
from worker.lifecycle import load as get_campaign
from worker.models import Campaign, CampaignTally, Message, UTCDateTime, utcnow
from worker.status import CampaignStatus
from worker.webhooks.models import WebhookEvent

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger("buttoncast.snapshots")

#: a sweep starts no new scan after spending this long on scans (the rest wait for the next sweep)
SWEEP_SCAN_BUDGET_S = 2.0
#: a snapshot this young is left alone by the sweep (someone is watching: the console keeps it)
SWEEP_SKIP_YOUNGER_S = 5.0
#: a sweep looks at most this many webhook events back (after a restart: the most recent ones)
EVENTS_LOOKBACK = 50_000
#: ids a sweep looks back behind where the previous one stopped: an event whose id was taken
#: before the previous sweep but whose transaction committed after it
EVENTS_OVERLAP = 1_000
#: an event applied up to this long before a snapshot's scan began may have committed after it
COMMIT_MARGIN_S = 5.0
#: a campaign with no snapshot gets one from the sweep if it is running or changed this recently;
#: older ones get theirs when someone first looks
NO_SNAPSHOT_RECENT_S = 24 * 3600


@dataclass(frozen=True)
class Snapshot:
    """A tally and when its scan began (`taken_at`: rows as they were then, or later)."""

    campaign_id: int
    tally: report.Tally
    taken_at: datetime
    scan_ms: int

    def age_s(self, now: datetime) -> float:
        return (now - self.taken_at).total_seconds()


def _to_json(t: report.Tally) -> dict[str, Any]:
    f = t.funnel
    window = [f.rate_since.isoformat(), f.rate_until.isoformat()] if f.rate_since and f.rate_until else None
    return {"counts": t.counts, "funnel": [f.sent, f.delivered, f.read, f.replied, f.sent_last_minute],
            "taps": [list(row) for row in f.taps], "late_failures": t.late_failures, "rate_window": window}


def _from_json(data: dict[str, Any]) -> report.Tally:
    counts = {**report.empty_counts(), **data["counts"]}
    taps = [(b, title, int(n)) for b, title, n in data["taps"]]
    window = data.get("rate_window")   # absent in a snapshot stored before it was kept: no rate until recounted
    since, until = (datetime.fromisoformat(w) for w in window) if window else (None, None)
    return report.Tally(counts, report.Funnel(*data["funnel"], taps=taps, rate_since=since, rate_until=until),
                        dict(data["late_failures"]))


def take(read_sessions: sessionmaker[Session], campaign_id: int, *, serial: bool = False) -> Snapshot:
    """Scan the campaign's rows now (report.tally) on a read session. `serial` (Postgres): without
    parallel workers, for a scan in the background while people are served: a parallel scan of a
    million rows took every core of a 2-core machine for ~275 ms, and the page requested meanwhile
    waited for it (bench/console_pages.py: 250 ms instead of 10); one core is left for them."""
    started, clock = utcnow(), time.perf_counter()
    with read_sessions() as session:
        if serial and session.get_bind().dialect.name == "postgresql":
            session.execute(sa.text("SET LOCAL max_parallel_workers_per_gather = 0"))   # this transaction only
        tally = report.tally(session, campaign_id, started)
    return Snapshot(campaign_id, tally, started, round((time.perf_counter() - clock) * 1000))


def load(session: Session, campaign_id: int) -> Snapshot | None:
    """The stored snapshot, or None if the campaign was never counted (one primary-key read)."""
    row = session.get(CampaignTally, campaign_id)
    if row is None:
        return None
    try:
        return Snapshot(campaign_id, _from_json(row.tally), row.taken_at, row.scan_ms)
    except (KeyError, TypeError, ValueError):
        log.warning("campaign %s: its stored tally does not read; it is counted again", campaign_id)
        return None


def load_many(session: Session, campaign_ids: list[int]) -> dict[int, Snapshot]:
    """The stored snapshots of these campaigns (one query); the never-counted ones are absent."""
    out: dict[int, Snapshot] = {}
    if not campaign_ids:
        return out
    for row in session.scalars(sa.select(CampaignTally).where(CampaignTally.campaign_id.in_(campaign_ids))):
        try:
            out[row.campaign_id] = Snapshot(row.campaign_id, _from_json(row.tally), row.taken_at, row.scan_ms)
        except (KeyError, TypeError, ValueError):
            log.warning("campaign %s: its stored tally does not read; it is counted again", row.campaign_id)
    return out


def store(runtime: "Runtime", snapshot: Snapshot) -> None:
    """Keep `snapshot` unless a newer one is stored already (two processes may scan at once)."""
    values = {"campaign_id": snapshot.campaign_id, "taken_at": snapshot.taken_at, "scan_ms": snapshot.scan_ms,
              "tally": _to_json(snapshot.tally)}
    with runtime.session_factory.begin() as session:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        insert = dialect.insert(CampaignTally).values(**values)
        table = CampaignTally.__table__
        session.execute(insert.on_conflict_do_update(
            index_elements=[table.c.campaign_id],
            set_={"taken_at": insert.excluded.taken_at, "scan_ms": insert.excluded.scan_ms, "tally": insert.excluded.tally},
            where=table.c.taken_at < insert.excluded.taken_at,
        ))


def refresh(runtime: "Runtime", campaign_id: int) -> Snapshot:
    """Count the campaign again and store the result; returns it."""
    snapshot = take(runtime.read_sessions, campaign_id)
    store(runtime, snapshot)
    return snapshot


# --- beat's part: keep the snapshots of active campaigns recent -------------------------------------

_last_event_ids: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
_last_event_lock = threading.Lock()


def _touched_by_webhooks(session: Session, after_id: int, up_to_id: int) -> dict[int, datetime]:
    """Campaign -> when a webhook event was last applied to one of its messages, among events with
    after_id < id <= up_to_id (a primary-key range, then messages by primary key)."""
    rows = session.execute(
        sa.select(Message.campaign_id, sa.func.max(sa.func.coalesce(WebhookEvent.applied_at, WebhookEvent.received_at), type_=UTCDateTime()))
        .join(Message, Message.id == WebhookEvent.message_id)
        .where(WebhookEvent.id > after_id, WebhookEvent.id <= up_to_id, Message.campaign_id.is_not(None))
        .group_by(Message.campaign_id)
    ).all()
    return {campaign_id: applied for campaign_id, applied in rows}


def due(session: Session, now: datetime, touched: dict[int, datetime]) -> list[int]:
    """Campaigns whose snapshot is missing or behind their rows, the oldest snapshot first."""
    margin = timedelta(seconds=COMMIT_MARGIN_S)
    rows = session.execute(
        sa.select(Campaign.id, Campaign.status, Campaign.updated_at, CampaignTally.taken_at)
        .outerjoin(CampaignTally, CampaignTally.campaign_id == Campaign.id)
        .where(Campaign.status != CampaignStatus.DRAFT.value)
    ).all()
    wanted: list[tuple[datetime | None, int]] = []
    for campaign_id, status, updated_at, taken_at in rows:
        if taken_at is not None and (now - taken_at).total_seconds() < SWEEP_SKIP_YOUNGER_S:
            continue
        if taken_at is None:
            stale = status == CampaignStatus.RUNNING.value or (now - updated_at).total_seconds() < NO_SNAPSHOT_RECENT_S
        else:
            applied = touched.get(campaign_id)
            stale = (status == CampaignStatus.RUNNING.value or updated_at >= taken_at - margin
                     or (applied is not None and applied >= taken_at - margin))
        if stale:
            wanted.append((taken_at, campaign_id))
    wanted.sort(key=lambda row: (row[0] is not None, row[0] or now))
    return [campaign_id for _, campaign_id in wanted]


def refresh_due(runtime: "Runtime", now: datetime | None = None, budget_s: float = SWEEP_SCAN_BUDGET_S) -> int:
    """Beat's sweep: refresh the snapshots that are behind, within `budget_s` of scanning.
    Returns how many were refreshed."""
    now = now or utcnow()
    with runtime.read_sessions() as session:
        newest = session.scalar(sa.select(sa.func.max(WebhookEvent.id))) or 0
        with _last_event_lock:
            previous = _last_event_ids.get(runtime)
        after = max(newest - EVENTS_LOOKBACK, (previous if previous is not None else 0) - EVENTS_OVERLAP, 0)
        touched = _touched_by_webhooks(session, after, newest) if newest > after else {}
        campaign_ids = due(session, now, touched)
    started, refreshed = time.perf_counter(), 0
    for campaign_id in campaign_ids:
        if time.perf_counter() - started >= budget_s:
            break
        refresh(runtime, campaign_id)
        refreshed += 1
    if refreshed == len(campaign_ids):   # else the next sweep looks at the same events again
        with _last_event_lock:
            _last_event_ids[runtime] = newest
    elif previous is None:
        with _last_event_lock:
            _last_event_ids[runtime] = after
    if refreshed < len(campaign_ids):
        log.info("refreshed %d of %d campaign tallies within %.1f s; the rest next sweep", refreshed,
                 len(campaign_ids), budget_s)
    return refreshed


# --- reading one campaign's counts for a request (the HTTP API) ---------------------------------------

#: a stored snapshot this young is served as is (or younger than SERVE_SCAN_SHARE times its own scan:
#: a big campaign is recounted less often, so pollers cost the database at most a share of a core)
SERVE_MAX_AGE_S = 5.0
SERVE_SCAN_SHARE = 4.0
_recounting: "weakref.WeakKeyDictionary[object, dict[int, threading.Lock]]" = weakref.WeakKeyDictionary()
_recounting_lock = threading.Lock()


def _serveable(snapshot: Snapshot | None, now: datetime) -> bool:
    if snapshot is None:
        return False
    return snapshot.age_s(now) < max(SERVE_MAX_AGE_S, SERVE_SCAN_SHARE * snapshot.scan_ms / 1000)


def _campaign_lock(runtime: "Runtime", campaign_id: int) -> threading.Lock:
    with _recounting_lock:
        locks = _recounting.setdefault(runtime, {})
        if len(locks) > 1000:   # bounded: locks of campaigns nobody is recounting now are dropped
            for key in [k for k, lock in locks.items() if not lock.locked()]:
                del locks[key]
        return locks.setdefault(campaign_id, threading.Lock())


def serve(runtime: "Runtime", campaign_id: int, now: datetime | None = None) -> tuple[Campaign, Snapshot]:
    """The campaign as it is now and its counts from a snapshot at most SERVE_MAX_AGE_S old: the
    stored one (one primary-key read) or, when it is older, a new scan, stored. Requests for the same
    campaign in this process wait for one scan rather than each running their own."""
    now = now or utcnow()
    with runtime.read_sessions() as session:
        campaign = get_campaign(session, campaign_id)
        snapshot = load(session, campaign_id)
    if _serveable(snapshot, now):
        return campaign, snapshot
    with _campaign_lock(runtime, campaign_id):
        with runtime.read_sessions() as session:   # a request that waited may find the scan done
            snapshot = load(session, campaign_id)
        if not _serveable(snapshot, utcnow()):
            snapshot = refresh(runtime, campaign_id)
    return campaign, snapshot
