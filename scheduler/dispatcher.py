"""The dispatcher tick: start a series' due runs, resolve due audiences, start due campaigns, move pending recipients to the broker, finish campaigns.

Flow control: each tick publishes only what the rate limit can send before the next few ticks
(DISPATCH_LOOKAHEAD_TICKS), minus what is already on the broker or being sent, so a
1,000,000-recipient campaign never puts a million tasks on the broker and a pause takes effect
within one tick.

Fairness: ad-hoc (transactional) messages go first, on their own queue; the rest of the budget is
split equally between running campaigns, and what a small campaign cannot use goes to the others
(water-filling).

Send windows: a campaign is served only while its window is open; a `--tz recipient` campaign
while the window is open for ANY of its zone groups, and then only the messages of the open groups
are claimed (scheduler.zones; the open groups are a bound IN list in the claim).

Safety: rows move pending -> queued in the same statement that selects them (UPDATE ... WHERE id IN
(SELECT ... FOR UPDATE SKIP LOCKED) AND status = 'pending' RETURNING id), so two dispatchers running
at once never queue a recipient twice; the send task's claim makes a duplicate task harmless anyway.
"""

from __future__ import annotations

import logging
import math
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler import audience, experiments, series
from scheduler.sweeper import recover_from_broker_loss
from scheduler.zones import open_zone_groups
from worker import lifecycle
from worker.models import Campaign, Message, MessageEvent, UTCDateTime, utcnow
from worker.queues import QUEUE_ADHOC, QUEUE_CAMPAIGN
from worker.runtime import Runtime
from worker.sending import gate as consent_gate
from worker.sending.publish import hand_back_to_dispatcher, publish_send_tasks
from worker.status import CampaignStatus, MessageStatus
from worker.window import RECIPIENT, in_window

log = logging.getLogger("buttoncast.dispatcher")
PENDING, QUEUED, SENDING = MessageStatus.PENDING.value, MessageStatus.QUEUED.value, MessageStatus.SENDING.value
RUNNING = CampaignStatus.RUNNING.value
#: a `--tz recipient` campaign whose open zone groups had nothing ready is not counted again for the
#: same open groups for this long: no index has the zone, so that count walks every pending row of
#: its closed zones (a night's backlog). A zone opening or closing, or this much time, counts again.
ZONE_RECHECK_S = 60
#: per runtime (this process's dispatcher): campaign id -> (its open zone groups, when they had nothing ready)
IdleZones = dict[int, tuple[frozenset[str], datetime]]
_idle_zones: weakref.WeakKeyDictionary[Runtime, IdleZones] = weakref.WeakKeyDictionary()


@dataclass
class TickReport:
    started: list[int] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    published: dict[str, int] = field(default_factory=dict)   # "adhoc" or campaign id -> tasks published
    budget: int = 0
    in_flight: int = 0
    cancelled_leftovers: int = 0   # rows of cancelled campaigns that a racing write left queued/pending
    runs: list[int] = field(default_factory=list)       # runs of series started (scheduler.series)
    resolved: list[int] = field(default_factory=list)   # audiences resolved into recipients (scheduler.audience)
    decided: list[int] = field(default_factory=list)    # A/B tests decided (scheduler.experiments)

    @property
    def total_published(self) -> int:
        return sum(self.published.values())


def tick_budget(runtime: Runtime, in_flight: int) -> int:
    """How many tasks this tick may publish: the rate for the look-ahead, less what is in flight.

    It agrees with the workers' intake (worker.ratelimit.intake): together they hold at most what
    the limit sends within RATE_WAIT_MAX_S (5 s) and take only that from the broker; the look-ahead
    (3 ticks of 5 s: 15 s of sends) keeps at least that plus a tick's sends out, so no process runs
    dry between ticks, and what is beyond their intake waits on the broker, not in the database.
    """
    s = runtime.settings
    capacity = s.rate_limit.per_second * s.dispatch_interval_s * s.dispatch_lookahead_ticks
    capacity = max(capacity, float(s.rate_burst))
    return max(0, math.ceil(capacity) - in_flight)


def dispatch_tick(runtime: Runtime, now: datetime | None = None) -> TickReport:
    """One dispatcher tick. Safe to run concurrently with itself and with live workers."""
    now = now or utcnow()
    report = TickReport()
    recover_from_broker_loss(runtime, now)   # a flushed broker: its lost tasks go out again this tick
    if runtime.broker_epoch_started is not None and runtime.broker_epoch_started > now:
        # Issue 25: the epoch (started when its loss was seen) may begin after this tick's clock; rows
        # stamped earlier would be handed back as lost by every process that sees the epoch first.
        now = runtime.broker_epoch_started
    report.runs = series.start_due_runs(runtime, now)       # a series' slot came: its run is a new campaign
    report.resolved = audience.resolve_due(runtime, now)    # a segment's members become the recipients
    report.decided = experiments.tick(runtime, now)         # an A/B test's clock; its winner to the held
    with runtime.session_factory.begin() as session:
        report.started = lifecycle.start_due(session, now)
        report.in_flight = in_flight_count(session)
    report.budget = tick_budget(runtime, report.in_flight)
    budget = report.budget
    if budget > 0:
        n = _publish(runtime, _claim(runtime, None, budget, now), QUEUE_ADHOC)
        if n:
            report.published["adhoc"] = n
        budget -= n
    campaigns = _running_in_window(runtime, now, budget)
    wants = {campaign_id: ready.count for campaign_id, ready in campaigns.items()}
    for campaign_id, share in allocate(budget, wants).items():
        claimed = _claim(runtime, campaign_id, share, now, zones=campaigns[campaign_id].zones)
        n = _publish(runtime, claimed, QUEUE_CAMPAIGN)
        if n:
            report.published[str(campaign_id)] = n
    with runtime.session_factory.begin() as session:
        report.cancelled_leftovers = cancel_leftovers(session, now)
        report.completed = lifecycle.complete_finished(session, now)
    if report.total_published or report.started or report.completed or report.runs or report.resolved or report.decided:
        log.info("dispatch: published %s (budget %s, in flight %s), started %s, completed %s",
                 report.published, report.budget, report.in_flight, report.started, report.completed)
    return report


def in_flight_count(session: Session) -> int:
    """Messages on the broker or being sent (queued ones waiting for not_before are not)."""
    return session.scalar(
        sa.select(sa.func.count()).select_from(Message).where(
            sa.or_(Message.status == SENDING, sa.and_(Message.status == QUEUED, Message.enqueued_at.is_not(None)))
        )
    ) or 0


@dataclass(frozen=True)
class Ready:
    """A running campaign inside its window: how many messages it could send now (<= the tick's
    budget), and for a `--tz recipient` campaign the zone groups open now (None: any message)."""

    count: int
    zones: list[str] | None = None


def _running_in_window(runtime: Runtime, now: datetime, cap: int) -> dict[int, Ready]:
    """Running campaigns inside their send window -> what each could send now.

    Counting stops at `cap` (this tick's budget): a 1,000,000-recipient campaign costs an index
    range of `cap` rows per tick, not a count of everything it has left.
    """
    if cap <= 0:
        return {}
    with runtime.session_factory() as session:
        campaigns = session.execute(
            sa.select(Campaign.id, Campaign.window_start, Campaign.window_end, Campaign.window_tz, Campaign.zones)
            .where(Campaign.status == RUNNING)
        ).all()
        idle = _idle_zones.setdefault(runtime, {})
        ready = {}
        for c in campaigns:
            if c.window_tz == RECIPIENT and c.window_start and c.window_end:
                zones: list[str] | None = open_zone_groups(c.window_start, c.window_end, c.zones, now)
                if not zones or _still_idle(idle.get(c.id), zones, now):
                    continue   # in window while ANY of its zone groups is open (and has something ready)
            elif in_window(c.window_start, c.window_end, c.window_tz, now):
                zones = None
            else:
                continue
            count = _ready_count(session, c.id, now, cap, zones)
            if count:
                ready[c.id] = Ready(count, zones)
                idle.pop(c.id, None)
            elif zones is not None:
                idle[c.id] = (frozenset(zones), now)
    return ready


def _still_idle(seen: tuple[frozenset[str], datetime] | None, zones: list[str], now: datetime) -> bool:
    """True when these same open zone groups had nothing ready less than ZONE_RECHECK_S ago."""
    if seen is None or seen[0] != frozenset(zones):
        return False
    return timedelta(0) <= now - seen[1] < timedelta(seconds=ZONE_RECHECK_S)


def _in_zones(zones: list[str] | None) -> tuple[sa.ColumnElement[bool], ...]:
    """Only messages of these zone groups (a bound IN list); no condition when `zones` is None."""
    return () if zones is None else (Message.zone.in_(zones),)


def _ready_count(session: Session, campaign_id: int, now: datetime, cap: int, zones: list[str] | None = None) -> int:
    total = 0
    for kind in _ready_kinds(now):
        rows = (sa.select(Message.id).where(Message.campaign_id == campaign_id, kind, *_in_zones(zones))
                .limit(cap - total).subquery())
        total += session.scalar(sa.select(sa.func.count()).select_from(rows)) or 0
        if total >= cap:
            break
    return total


def _ready_kinds(now: datetime) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    """What a tick may publish, in order: queued messages put back whose not-before has passed
    (their task is not out), then pending recipients. Two filters, not one OR, so each is served
    by its own index (the pending one is partial: it holds only what is left to send)."""
    due = sa.and_(
        Message.status == QUEUED,
        Message.enqueued_at.is_(None),
        sa.or_(Message.not_before.is_(None), Message.not_before <= now),
    )
    return due, Message.status == PENDING


def allocate(budget: int, wants: dict[int, int]) -> dict[int, int]:
    """Split `budget` equally among campaigns; what one cannot use goes to the others."""
    shares = {cid: 0 for cid in wants}
    remaining = budget
    active = sorted(cid for cid, want in wants.items() if want > 0)
    while remaining > 0 and active:
        each = max(1, remaining // len(active))
        for cid in list(active):
            take = min(each, wants[cid] - shares[cid], remaining)
            shares[cid] += take
            remaining -= take
            if shares[cid] >= wants[cid]:
                active.remove(cid)
            if remaining <= 0:
                break
    return {cid: n for cid, n in shares.items() if n > 0}


def _claim(runtime: Runtime, campaign_id: int | None, limit: int, now: datetime, *,
           zones: list[str] | None = None) -> Iterator[list[int]]:
    """Mark up to `limit` ready rows of a campaign (None: ad-hoc) queued-and-published, a batch per
    statement (each committed before it is yielded, so a published task always finds its row
    queued); yields their ids.

    Pending rows are taken in id order from where this process's last claim for the campaign
    ended (`runtime.dispatch_cursors`): scanning from the campaign's first id, Postgres walked past
    every row already sent (the planner prefers the primary key, whose prefix is all done), and a
    tick got slower with the campaign's progress (+40 ms per 20,000 sent, measured). The cursor is
    only a hint: when the rows past it run out, the scan starts again from the beginning, which
    finds rows put back behind it (a pause, a 401, a retry).

    `zones`: a `--tz recipient` campaign's zone groups open now; only their messages are taken."""
    where = Message.campaign_id == campaign_id if campaign_id is not None else Message.campaign_id.is_(None)
    if zones is not None:
        where = sa.and_(where, *_in_zones(zones))
    claimed = 0
    batch = runtime.settings.dispatch_batch_size
    due, pending = _ready_kinds(now)
    gate = consent_gate.Gate(frequency_cap=runtime.settings.marketing_frequency_cap)
    for kind, cursor in ((due, None), (pending, runtime.dispatch_cursors.get(campaign_id, 0))):
        while claimed < limit:
            take = min(batch, limit - claimed)
            ready = sa.and_(where, kind, Message.id > cursor) if cursor else sa.and_(where, kind)
            with runtime.session_factory.begin() as session:
                statement = _claim_statement(runtime.engine.dialect.name, ready, take, now, gate)
                rows = session.connection().execute(statement, {"p_now": now, **gate.params(now)}).all()  # Core
                held = [r.id for r in rows if r.status != QUEUED]
                if held:
                    _note_held(session, held, now, from_status=QUEUED if kind is due else PENDING)
            ids = [r.id for r in rows if r.status == QUEUED]
            claimed += len(ids)   # held rows cost no rate: the budget goes to the next ones
            if rows:
                if cursor is not None:
                    cursor = runtime.dispatch_cursors[campaign_id] = max(r.id for r in rows)
            if ids:
                yield ids
            if len(rows) < take:
                if cursor:   # nothing more past the hint: once more from the start
                    cursor = runtime.dispatch_cursors[campaign_id] = 0
                    continue
                break


def _note_held(session: Session, message_ids: list[int], now: datetime, *, from_status: str) -> None:
    """One message event per recipient the gate held at dispatch (worker.sending.gate), for the audit trail."""
    session.execute(sa.insert(MessageEvent).from_select(
        ["message_id", "at", "from_status", "to_status", "reason", "actor"],
        sa.select(Message.id, sa.literal(now, UTCDateTime()), sa.literal(from_status), Message.status,
                  sa.func.coalesce(Message.last_error_message, Message.status), sa.literal("dispatcher"))
        .where(Message.id.in_(message_ids)),
    ))


def _claim_statement(dialect: str, ready: sa.ColumnElement[bool], take: int, now: datetime,
                     gate: consent_gate.Gate = consent_gate.NO_CAP) -> sa.Update:
    """UPDATE ... -> queued for at most `take` rows matching `ready`, RETURNING their ids.

    Postgres: the rows are picked in a MATERIALIZED CTE with FOR UPDATE SKIP LOCKED. Written as
    `id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` the planner may re-run the subquery and
    update far more than n rows (seen: 1000 instead of 12), which would defeat flow control.
    SQLite has one writer at a time, so the plain subquery is exact there. `ready` is checked again
    on the row itself, so a row another dispatcher took meanwhile is left alone.
    """
    # The gate's rules (worker.sending.gate) decide each row's status: queued, or held (final, never published).
    update = sa.update(Message).values(queued_at=sa.func.coalesce(Message.queued_at, now), updated_at=now)
    if dialect == "postgresql":   # the gate judged once per row, in the CTE
        pick = sa.select(Message.id, consent_gate.dispatch_reason(gate).label("held")).where(ready)
        picked = pick.order_by(Message.id).limit(take).with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        update = update.where(Message.id == picked.c.id, ready).values(**consent_gate.dispatch_values(picked.c.held))
    else:
        pick = sa.select(Message.id).where(ready).order_by(Message.id).limit(take)
        update = update.where(Message.id.in_(pick.scalar_subquery()), ready).values(
            **consent_gate.dispatch_values(consent_gate.dispatch_reason(gate)))
    return update.returning(Message.id, Message.status).execution_options(synchronize_session=False)


def _publish(runtime: Runtime, batches: Iterator[list[int]], queue: str) -> int:
    """Publish each claimed batch while the next one is being claimed, so the database's work and
    this process's (rendering and pushing tasks) overlap: a tick takes about the longer of the two,
    not their sum. One publisher thread keeps the batches in order. Whatever was claimed but is not
    known to be on the broker when anything fails is handed back to the next tick."""
    published = 0
    unpublished: list[list[int]] = []      # claimed batches, oldest first, not yet confirmed published
    publishing: Future | None = None       # publishes unpublished[0]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="buttoncast-publish") as publisher:
        try:
            for ids in batches:
                unpublished.append(ids)
                if publishing is not None:
                    publishing.result()
                    published += len(unpublished.pop(0))
                publishing = publisher.submit(publish_send_tasks, runtime.celery, ids, queue=queue)
            if publishing is not None:
                publishing.result()
                published += len(unpublished.pop(0))
        except Exception:
            if publishing is not None and unpublished and _succeeded(publishing):
                published += len(unpublished.pop(0))
            hand_back_to_dispatcher(runtime.session_factory, [i for ids in unpublished for i in ids])
            raise
    return published


def _succeeded(future: Future) -> bool:
    try:
        future.result()
    except Exception:  # noqa: BLE001 - its own failure is handled by handing its batch back
        return False
    return True


def cancel_leftovers(session: Session, now: datetime) -> int:
    """Issue 12 item 7: pending/queued rows of a cancelled campaign -> cancelled, with an event.

    The send path writes `cancelled` itself when it sees the cancel (worker.sending.store); this closes the
    race where a worker's write and the cancel's transaction commit at the same moment. The
    dispatcher never serves a cancelled campaign, so without it such a row would wait for ever.
    Cheap when there is nothing to do: an index probe of (campaign_id, status) per cancelled campaign."""
    cancelled_campaigns = sa.select(Campaign.id).where(Campaign.status == CampaignStatus.CANCELLED.value)
    total = 0
    for from_status in (PENDING, QUEUED):
        ids = session.execute(
            sa.update(Message)
            .where(Message.campaign_id.in_(cancelled_campaigns), Message.status == from_status)
            .values(status=MessageStatus.CANCELLED.value, finished_at=now, updated_at=now, enqueued_at=None)
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        ).scalars().all()
        if ids:
            session.execute(sa.insert(MessageEvent), [
                dict(message_id=mid, at=now, from_status=from_status, to_status=MessageStatus.CANCELLED.value,
                     reason="campaign cancelled; a write that raced the cancel had left it " + from_status,
                     actor="dispatcher")
                for mid in ids
            ])
        total += len(ids)
    if total:
        log.warning("dispatch: %s message(s) of cancelled campaigns -> cancelled", total)
    return total
