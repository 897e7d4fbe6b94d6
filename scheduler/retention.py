"""Retention: old attempts, message_events and webhook_events are deleted, in bounded batches.

Issue 12 item 15. Rows older than the retention period are history nobody reads, and the tables
grew without bound. What is kept whatever its age:
- messages themselves (a campaign's report and funnel read them; they are one row per recipient,
  and deleting a campaign is an operator's decision, not a timer's);
- every attempt and status event of a message that is not final yet (pending, queued, sending):
  it is still being worked on;
- a `sent` attempt of a message whose status is not `sent`: `buttoncast retry` reads it as proof
  that the vendor accepted the message, so it is never requeued (scheduler/retry.py);
- unmatched webhook events younger than WEBHOOK_MATCH_WINDOW_S: the sweep may still match them;
- outbound hook events still pending delivery (hook_outbox: delivered and dead-lettered rows go
  once their last attempt is older than the period).
Idempotency-Key records (api_idempotency) are not history: each goes once it expired, 24 hours after
its first use, whatever the period (`prune_idempotency_keys`, run by the same beat job).
The trails have periods of their own (`prune_trails`, issue 25 item 10), as they answer other questions:
- audit_events (who did what; one row per failed login too): older than AUDIT_RETENTION_DAYS (365)
  go, except the row recording each thing's creation (`*.created`), which names who made an API key,
  a hook endpoint or a person for as long as it exists;
- contact_events (consent history): older than CONSENT_HISTORY_RETENTION_DAYS (730) go, except each
  contact's newest event, the record of the consent it has now.
Expired console sessions (idle or past their login's lifetime) go at every login and in the same job.
Each batch is its own short transaction (`DELETE ... WHERE id IN (ids of up to batch_size rows)`),
so a big first prune never holds locks or a giant transaction, and a concurrent writer only waits
for one batch. Safe to run twice at once: a row deleted by one is simply not found by the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased, sessionmaker

from worker.access.models import IdempotentRequest
from worker.access.sessions import delete_expired_sessions
from worker.audit import AuditEvent
from worker.hooks.models import HookOutbox, OutboxStatus
from worker.models import Attempt, ContactEvent, Message, MessageEvent, utcnow
from worker.runtime import Runtime
from worker.settings import WEBHOOK_MATCH_WINDOW_S
from worker.status import FINAL_MESSAGE_STATUSES, MessageStatus
from worker.webhooks.models import WebhookEvent

log = logging.getLogger("buttoncast.retention")
PRUNE_BATCH_ROWS = 5000
TABLES = ("attempts", "message_events", "webhook_events", "hook_outbox")
#: trails with retention settings of their own (prune_trails)
TRAIL_TABLES = ("audit_events", "contact_events")
_FINAL = [s.value for s in FINAL_MESSAGE_STATUSES]


@dataclass
class PruneReport:
    """Rows deleted (or, in a dry run, that would be) per table, and the cut-off used."""

    cutoff: datetime
    dry_run: bool
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def prunable(table: str, cutoff: datetime, *, now: datetime,
             match_window_s: float = WEBHOOK_MATCH_WINDOW_S) -> tuple[sa.Table, sa.ColumnElement[bool]]:
    """The table and the condition a row must meet to be deleted (see the module docstring)."""
    if table == "attempts":
        final = sa.select(Message.id).where(Message.id == Attempt.message_id, Message.status.in_(_FINAL)).exists()
        retry_guard = sa.select(Message.id).where(
            Message.id == Attempt.message_id, Message.status != MessageStatus.SENT.value).exists()
        return Attempt.__table__, sa.and_(
            Attempt.started_at < cutoff, final, ~sa.and_(Attempt.outcome == "sent", retry_guard))
    if table == "message_events":
        final = sa.select(Message.id).where(Message.id == MessageEvent.message_id, Message.status.in_(_FINAL)).exists()
        return MessageEvent.__table__, sa.and_(MessageEvent.at < cutoff, final)
    if table == "webhook_events":
        still_matchable = now - timedelta(seconds=match_window_s)
        return WebhookEvent.__table__, sa.and_(
            WebhookEvent.received_at < cutoff,
            sa.or_(WebhookEvent.matched.is_(True), WebhookEvent.received_at < still_matchable))
    if table == "hook_outbox":
        return HookOutbox.__table__, sa.and_(
            HookOutbox.status.in_([OutboxStatus.DELIVERED.value, OutboxStatus.DEAD.value]), HookOutbox.last_attempt_at < cutoff)
    raise ValueError(f"no retention rule for table {table!r}; known: {', '.join(TABLES)}")


def prune(
    runtime: Runtime, *, older_than: timedelta, dry_run: bool = False,
    now: datetime | None = None, match_window_s: float = WEBHOOK_MATCH_WINDOW_S,
    batch_rows: int = PRUNE_BATCH_ROWS,
) -> PruneReport:
    """Delete (or with `dry_run` count) what is older than `older_than` in every table of TABLES."""
    if older_than <= timedelta(0):
        raise ValueError("older_than must be positive (0 days means keep for ever: do not prune)")
    now = now or utcnow()
    report = PruneReport(cutoff=now - older_than, dry_run=dry_run)
    for name in TABLES:
        table, condition = prunable(name, report.cutoff, now=now, match_window_s=match_window_s)
        if dry_run:
            with runtime.session_factory() as session:
                report.deleted[name] = session.execute(
                    sa.select(sa.func.count()).select_from(table).where(condition)).scalar_one()
        else:
            report.deleted[name] = _delete_in_batches(runtime.session_factory, table, condition, batch_rows)
    if report.total and not dry_run:
        log.info("pruned rows older than %s: %s", report.cutoff.isoformat(),
                 ", ".join(f"{n} {c}" for n, c in report.deleted.items()))
    return report


def _delete_in_batches(session_factory: sessionmaker[Session], table: sa.Table, condition: sa.ColumnElement[bool],
                       batch_rows: int) -> int:
    """Keyset over the primary key: each batch starts after the last id seen, one transaction each."""
    deleted, after = 0, 0
    while True:
        with session_factory.begin() as session:
            ids = session.execute(
                sa.select(table.c.id).where(condition, table.c.id > after).order_by(table.c.id).limit(batch_rows)
            ).scalars().all()
            if not ids:
                return deleted
            deleted += session.execute(
                sa.delete(table).where(table.c.id.in_(ids)).execution_options(synchronize_session=False)).rowcount
        after = ids[-1]
        if len(ids) < batch_rows:
            return deleted


def prune_idempotency_keys(runtime: Runtime, *, now: datetime | None = None, batch_rows: int = PRUNE_BATCH_ROWS) -> int:
    """Delete the Idempotency-Key records past their expiry (worker.sending.idempotency: 24 hours
    after first use; a request ignores an expired one anyway), oldest first, in batches. Not history:
    they go whatever RETENTION_DAYS says. Returns how many."""
    table = IdempotentRequest.__table__
    now, deleted = now or utcnow(), 0
    while True:
        with runtime.session_factory.begin() as session:
            batch = session.execute(sa.select(table.c.scope, table.c.key).where(table.c.expires_at <= now)
                                    .order_by(table.c.expires_at).limit(batch_rows)).all()
            if batch:
                deleted += session.execute(
                    sa.delete(table).where(sa.tuple_(table.c.scope, table.c.key).in_([tuple(row) for row in batch]),
                                           table.c.expires_at <= now)
                    .execution_options(synchronize_session=False)).rowcount
        if len(batch) < batch_rows:
            if deleted:
                log.info("pruned %d expired Idempotency-Key record(s)", deleted)
            return deleted


def prunable_trail(table: str, cutoff: datetime) -> tuple[sa.Table, sa.ColumnElement[bool]]:
    """The trail table and the condition a row older than `cutoff` must meet to be deleted."""
    if table == "audit_events":
        return AuditEvent.__table__, sa.and_(AuditEvent.at < cutoff, ~AuditEvent.action.like("%.created"))
    if table == "contact_events":
        newer = aliased(ContactEvent)
        a_newer_one = sa.select(newer.id).where(
            newer.phone == ContactEvent.phone,
            sa.or_(newer.at > ContactEvent.at, sa.and_(newer.at == ContactEvent.at, newer.id > ContactEvent.id))).exists()
        return ContactEvent.__table__, sa.and_(ContactEvent.at < cutoff, a_newer_one)
    raise ValueError(f"no retention rule for trail {table!r}; known: {', '.join(TRAIL_TABLES)}")


def prune_trails(runtime: Runtime, *, now: datetime | None = None, dry_run: bool = False,
                 batch_rows: int = PRUNE_BATCH_ROWS) -> dict[str, int]:
    """Delete (or count) audit_events past AUDIT_RETENTION_DAYS and contact_events past
    CONSENT_HISTORY_RETENTION_DAYS, by the rules above; a period of 0 keeps that trail for ever."""
    now = now or utcnow()
    days = {"audit_events": runtime.settings.audit_retention_days,
            "contact_events": runtime.settings.consent_history_retention_days}
    deleted = dict.fromkeys(TRAIL_TABLES, 0)
    for name in TRAIL_TABLES:
        if not days[name]:
            continue
        table, condition = prunable_trail(name, now - timedelta(days=days[name]))
        if dry_run:
            with runtime.session_factory() as session:
                deleted[name] = session.execute(sa.select(sa.func.count()).select_from(table).where(condition)).scalar_one()
        else:
            deleted[name] = _delete_in_batches(runtime.session_factory, table, condition, batch_rows)
    if any(deleted.values()) and not dry_run:
        log.info("pruned trails: %s", ", ".join(f"{n} {c}" for n, c in deleted.items()))
    return deleted


def prune_expired(runtime: Runtime) -> PruneReport | None:
    """The beat job: expired Idempotency-Key records and console sessions always; the trails by
    their own periods; history with RETENTION_DAYS (None when it is 0, keep for ever)."""
    prune_idempotency_keys(runtime)
    delete_expired_sessions(runtime)
    prune_trails(runtime)
    days = runtime.settings.retention_days
    if days == 0:
        return None
    return prune(runtime, older_than=timedelta(days=days),
                 match_window_s=runtime.settings.webhook_match_window_s)
