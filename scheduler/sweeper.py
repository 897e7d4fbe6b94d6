"""The recovery sweep: nothing stays stuck in `queued` or `sending`.

- A `queued` message whose task was published more than QUEUED_TASK_TIMEOUT_S ago and never ran
  (the broker lost it: Redis here keeps nothing on disk) is handed back to the dispatcher, which
  publishes it again. A duplicate is harmless: only one task can claim the row.
- A `sending` message older than SENDING_TIMEOUT_S lost its worker mid-request: the vendor may have
  sent it, so it becomes `unknown` with the reason, never resent on our own.
- The broker lost its tasks (issue 12 item 12): its epoch key vanished or changed, so every
  `queued` row published before the new epoch is handed back at once (also on every dispatcher
  tick); on Redis the timeout path above hands back only ids whose task is no longer on the broker.
- Outcomes the database refused were kept in the outcome journal (issue 12 item 13); they are
  recorded first, before stale `sending` rows are given up on as `unknown`.
- A campaign completed while one of its messages went back to the queue (issue 25: a late answer
  raced the completion) is reopened, so the dispatcher serves that message.
Both are single conditional UPDATEs: safe when two sweeps run at once or race a live worker (a
worker that does come back with an answer still records it; see worker.sending.store).
It also matches early webhook events, refreshes the queue depth and lag gauges, and recounts the tally
snapshots of campaigns with recent activity (scheduler.snapshots), last and within a time budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler import snapshots
from worker import lifecycle, metrics
from worker.models import Campaign, Message, MessageEvent, utcnow
from worker.queues import QUEUE_ADHOC, QUEUE_CAMPAIGN
from worker.runtime import Runtime
from worker.sending import broker_epoch, journal
from worker.status import CampaignStatus, MessageStatus

log = logging.getLogger("buttoncast.sweeper")
ACTOR = "sweeper"
IN_CHUNK = 1000   # ids per UPDATE ... WHERE id IN (...)
LOST_WORKER_REASON = "worker lost mid-request (no outcome recorded within SENDING_TIMEOUT_S); the vendor may have sent it"
REOPENED_REASON = ("campaign {campaign} had completed while this message went back to the queue (a late answer "
                   "raced the completion); reopened so it is sent")
#: campaigns completed this recently are checked for a message left to send (the race is at completion)
REOPEN_LOOKBACK = timedelta(days=1)


@dataclass
class SweepReport:
    republished: int = 0
    unknown: int = 0
    matched_events: int = 0
    lost_broker: int = 0       # queued messages handed back because the broker lost its tasks
    journal_applied: int = 0   # outcomes recorded from the journal (the database had refused them)
    tallies_refreshed: int = 0  # campaign tally snapshots recounted (scheduler.snapshots)
    reopened: int = 0          # completed campaigns with a message left to send, running again


def sweep(runtime: Runtime, now: datetime | None = None) -> SweepReport:
    now = now or utcnow()
    s = runtime.settings
    report = SweepReport()
    try:
        report.lost_broker = recover_from_broker_loss(runtime, now)
    except Exception as exc:  # noqa: BLE001 - the broker down must not stop the database's recovery
        log.warning("could not read the broker's epoch (%s); checked again next tick", type(exc).__name__)
    report.republished = _hand_back_stale_queued(runtime, now - timedelta(seconds=s.queued_task_timeout_s), now)
    report.journal_applied = apply_outcome_journal(runtime)   # before any `sending` row is given up on
    with runtime.session_factory.begin() as session:
        lost = session.execute(
            sa.update(Message)
            .where(
                Message.status == MessageStatus.SENDING.value,
                Message.sending_at < now - timedelta(seconds=s.sending_timeout_s),
            )
            .values(status=MessageStatus.UNKNOWN.value, last_error_code="worker_lost",
                    last_error_message=LOST_WORKER_REASON, finished_at=now, updated_at=now)
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        ).scalars().all()
        if lost:
            session.execute(sa.insert(MessageEvent), [
                dict(message_id=mid, at=now, from_status=MessageStatus.SENDING.value,
                     to_status=MessageStatus.UNKNOWN.value, reason=LOST_WORKER_REASON, actor=ACTOR)
                for mid in lost
            ])
        report.unknown = len(lost)
    metrics.WORKER_LOST.inc(report.unknown)
    report.reopened = reopen_raced_campaigns(runtime, now)
    report.matched_events = match_webhook_events(runtime)
    with runtime.read_sessions() as session:   # a read: on SQLite it does not take the write lock
        update_queue_depth_metric(session)
        update_queue_lag_metric(session, now)
    metrics.SWEEP_TIMESTAMP.set(now.timestamp())
    try:
        report.tallies_refreshed = snapshots.refresh_due(runtime, now)
    except Exception as exc:  # noqa: BLE001 - counts for the console must not stop the recovery above
        log.warning("could not refresh campaign tallies (%s: %s); tried again next sweep", type(exc).__name__, exc)
    if report.reopened:
        log.warning("sweep: %s completed campaign(s) had a message left to send (a late answer raced the "
                    "completion); reopened", report.reopened)
    if report.republished or report.unknown or report.matched_events or report.journal_applied:
        log.warning("sweep: %s queued message(s) handed back for republishing, %s lost mid-request -> unknown, "
                    "%s webhook event(s) matched, %s outcome(s) applied from the journal", report.republished,
                    report.unknown, report.matched_events, report.journal_applied)
    return report


def reopen_raced_campaigns(runtime: Runtime, now: datetime) -> int:
    """Issue 25: a campaign completed while one of its messages went back to the queue is running
    again (worker.lifecycle.reopen_unfinished), with an event on each message left, so the
    dispatcher sends it. Cheap: an index probe of (campaign_id, status) per campaign completed
    within REOPEN_LOOKBACK."""
    with runtime.session_factory.begin() as session:
        reopened = lifecycle.reopen_unfinished(session, now, completed_since=now - REOPEN_LOOKBACK)
        if reopened:
            left = session.execute(sa.select(Message.id, Message.status, Message.campaign_id).where(
                Message.campaign_id.in_(reopened), Message.status.in_(lifecycle.UNFINISHED))).all()
            session.execute(sa.insert(MessageEvent), [
                dict(message_id=m.id, at=now, from_status=m.status, to_status=m.status, actor=ACTOR,
                     reason=REOPENED_REASON.format(campaign=m.campaign_id)) for m in left])
    return len(reopened)


def recover_from_broker_loss(runtime: Runtime, now: datetime) -> int:
    """Issue 12 item 12: when the broker's epoch vanished or changed, hand back every `queued` row
    published before the new epoch began, so the dispatcher republishes it on this very tick.
    One conditional UPDATE: rows republished since carry a later enqueued_at and are left alone,
    so each id goes out once per loss however many processes notice it. Redis brokers only."""
    epoch = broker_epoch.current_epoch(runtime.celery, now)
    if epoch is None or epoch[0] == runtime.broker_epoch_seen:
        return 0
    runtime.broker_epoch_started = epoch[1]
    with runtime.session_factory.begin() as session:
        handed_back = session.execute(
            sa.update(Message)
            .where(Message.status == MessageStatus.QUEUED.value, Message.enqueued_at.is_not(None),
                   Message.enqueued_at < epoch[1])
            .values(enqueued_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    if handed_back or runtime.broker_epoch_seen is not None:   # the process that handed them back warns
        log.log(logging.WARNING if handed_back else logging.INFO,
                "the broker lost its tasks (epoch %s began %s): %s queued message(s) handed back for "
                "republishing", epoch[0][:8], epoch[1].isoformat(), handed_back)
    runtime.broker_epoch_seen = epoch[0]
    return handed_back


def _hand_back_stale_queued(runtime: Runtime, published_before: datetime, now: datetime) -> int:
    """Queued messages whose task has not run for QUEUED_TASK_TIMEOUT_S go back to the dispatcher.
    On Redis only those whose task is no longer on the broker (issue 12 item 12): with no worker
    consuming, the tasks are still waiting and a fresh copy every timeout would pile up."""
    stale = sa.and_(Message.status == MessageStatus.QUEUED.value, Message.enqueued_at.is_not(None),
                    Message.enqueued_at < published_before)
    with runtime.session_factory() as session:
        ids = list(session.scalars(sa.select(Message.id).where(stale)))
    if not ids:
        return 0
    try:
        waiting = broker_epoch.task_ids_on_broker(runtime.celery, (QUEUE_ADHOC, QUEUE_CAMPAIGN))
    except Exception as exc:  # noqa: BLE001 - a broker that is down holds nothing we can count on
        log.warning("could not list the broker's tasks (%s); stale queued messages wait for the next sweep",
                    type(exc).__name__)
        return 0
    if waiting is not None:
        ids = [i for i in ids if i not in waiting]
    handed_back = 0
    for start in range(0, len(ids), IN_CHUNK):
        with runtime.session_factory.begin() as session:
            handed_back += session.execute(
                sa.update(Message).where(Message.id.in_(ids[start:start + IN_CHUNK]), stale)
                .values(enqueued_at=None, updated_at=now).execution_options(synchronize_session=False)
            ).rowcount
    return handed_back


def apply_outcome_journal(runtime: Runtime) -> int:
    """Issue 12 item 13: record the outcomes the database refused (kept in the journal)."""
    return journal.apply_entries(journal.journal_of(runtime), runtime.session_factory, actor=ACTOR)


def match_webhook_events(runtime: Runtime) -> int:
    """Webhook events that arrived before their message was recorded get applied now."""
    try:
        from worker.webhooks.apply import match_pending_events
    except ImportError:
        return 0
    with runtime.session_factory.begin() as session:
        from worker.webhooks.breaker import LatePolicy

        return int(match_pending_events(session, window_s=runtime.settings.webhook_match_window_s,
                                        late=LatePolicy.from_settings(runtime.settings)) or 0)


def update_queue_depth_metric(session: Session) -> None:
    """The buttoncast_queue_depth gauge: messages not yet final per campaign and status. Refreshed
    by the sweep (every SWEEP_INTERVAL_S), not by every dispatcher tick: it counts every pending row
    (~115 ms per tick for a 1,000,000-recipient campaign, a fifth of the tick)."""
    rows = session.execute(
        sa.select(Message.campaign_id, Message.status, sa.func.count())
        .where(Message.status.in_([MessageStatus.PENDING.value, MessageStatus.QUEUED.value, MessageStatus.SENDING.value]))
        .group_by(Message.campaign_id, Message.status)
    ).all()
    metrics.QUEUE_DEPTH.clear()
    for campaign_id, status, count in rows:
        metrics.QUEUE_DEPTH.labels(campaign=str(campaign_id) if campaign_id else "adhoc", status=status).set(count)


def update_queue_lag_metric(session: Session, now: datetime) -> None:
    """The buttoncast_queue_lag_seconds gauge: how long the oldest due message has waited, among
    ad-hoc messages and those of running campaigns (0 when none waits).

    queued: due since its not-before time, else since it was first queued; one deferred to a time
    still ahead is not due. Queued rows are few (the dispatcher publishes a few ticks of the rate
    limit), found through the status-led index of unfinished messages. A lag that grows here is the
    workers falling behind.
    pending: per running campaign, the next message the dispatcher takes (its lowest pending id: one
    index probe of (status, campaign_id, id) per campaign), waiting since the campaign started or
    since the message went back to pending (updated_at), whichever is later. At the rate limit this
    grows with a big campaign on purpose, and through the night for one outside its send window;
    read it beside the depth.
    """
    running = sa.select(Campaign.id).where(Campaign.status == CampaignStatus.RUNNING.value)
    live = sa.or_(Message.campaign_id.is_(None), Message.campaign_id.in_(running))
    queued_since = session.scalar(
        sa.select(sa.func.min(sa.func.coalesce(Message.not_before, Message.queued_at, Message.updated_at)))
        .where(Message.status == MessageStatus.QUEUED.value,
               sa.or_(Message.not_before.is_(None), Message.not_before <= now), live))

    def next_pending(campaign: sa.ColumnElement) -> sa.ScalarSelect:
        return (sa.select(Message.updated_at).where(campaign, Message.status == MessageStatus.PENDING.value)
                .order_by(Message.id).limit(1).scalar_subquery())

    waiting = [max(started or put_back, put_back) for started, put_back in session.execute(
        sa.select(Campaign.started_at, next_pending(Message.campaign_id == Campaign.id))
        .where(Campaign.status == CampaignStatus.RUNNING.value)) if put_back is not None]
    adhoc = session.scalar(sa.select(next_pending(Message.campaign_id.is_(None))))
    pending_since = min([*waiting, *([adhoc] if adhoc is not None else [])], default=None)
    for status, since in (("queued", queued_since), ("pending", pending_since)):
        metrics.QUEUE_LAG.labels(status=status).set(max(0.0, (now - since).total_seconds()) if since else 0.0)
