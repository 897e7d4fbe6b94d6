"""Writes to `webhook_events`: a deduplicating insert and the "now matched" mark.

The insert is one `INSERT ... ON CONFLICT (dedupe_key) DO NOTHING RETURNING id` (Postgres and
SQLite >= 3.35 both have it), so concurrent deliveries of the same event cannot both be applied:
the second waits for the first's commit and then inserts nothing.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.models import utcnow
from worker.webhooks.events import Event
from worker.webhooks.models import WebhookEvent

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def insert_event(
    session: Session, event: Event, body: bytes, *, message_id: int | None, now: datetime | None = None
) -> int | None:
    """Record one event; its id, or None when an event with the same dedupe key is already kept."""
    now = now or utcnow()
    dialect = session.get_bind().dialect.name
    insert = _INSERTS.get(dialect)
    if insert is None:
        raise RuntimeError(f"webhook events need Postgres or SQLite, not {dialect}")
    statement = (
        insert(WebhookEvent)
        .values(
            dedupe_key=event.dedupe_key, event_type=event.event_type, kind=event.kind,
            vendor_message_id=event.vendor_message_id, phone=event.phone, status=event.status,
            occurred_at=event.occurred_at, received_at=now, matched=message_id is not None,
            message_id=message_id, applied_at=now if message_id is not None else None,
            body=body.decode("utf-8"),
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(WebhookEvent.id)
    )
    return session.execute(statement).scalar_one_or_none()


def mark_matched(session: Session, event_id: int, message_id: int, now: datetime | None = None) -> bool:
    """A pending event was applied to `message_id`. False if someone else marked it first."""
    now = now or utcnow()
    done = session.execute(
        sa.update(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.matched.is_(False))
        .values(matched=True, message_id=message_id, applied_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    return done == 1


def count_events(session: Session, *, matched: bool | None = None) -> int:
    """How many events are kept (all, or only the matched / unmatched ones)."""
    query = sa.select(sa.func.count()).select_from(WebhookEvent)
    if matched is not None:
        query = query.where(WebhookEvent.matched.is_(matched))
    return session.execute(query).scalar_one()
