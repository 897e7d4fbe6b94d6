"""Writing outbox rows: one per subscribed endpoint, in the caller's transaction (or statement).

Nothing here commits. A producer calls `emit()` inside the transaction that makes the change, so
the event exists exactly when the change does. The send path on Postgres records a sent message
in ONE statement on an autocommit connection; `sent_event_cte()` adds the outbox insert to that
statement as one more data-modifying CTE, and only while some endpoint subscribes to
message.sent: `subscribed()` answers from a per-process cache refreshed every
SUBSCRIPTIONS_REFRESH_S, so the send path does not pay a query per message.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from datetime import datetime
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.hooks.events import HookEvent, iso, new_event_id
from worker.hooks.models import OutboxStatus, HookOutbox, HookSubscription
from worker.models import UTCDateTime, utcnow

#: how stale a process's view of the subscriptions may be: an endpoint added (or an event type
#: subscribed) is seen by running workers within this long; a removed one stops at once (the
#: insert itself selects the endpoints from the table)
SUBSCRIPTIONS_REFRESH_S = 5.0

Unit = Session | sa.Connection


def _conn(unit: Unit) -> sa.Connection:
    return unit.connection() if isinstance(unit, Session) else unit


class SubscriptionCache:
    """The event types anyone subscribes to, per database (keyed by the engine's pool)."""

    def __init__(self, refresh_s: float = SUBSCRIPTIONS_REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: weakref.WeakKeyDictionary[object, tuple[float, frozenset[str]]] = weakref.WeakKeyDictionary()

    def event_types(self, conn: sa.Connection) -> frozenset[str]:
        key = conn.engine.pool
        now = self._clock()
        cached = self._seen.get(key)
        if cached is not None and now - cached[0] < self.refresh_s:
            return cached[1]
        types = frozenset(conn.execute(sa.select(HookSubscription.event_type).distinct()).scalars())
        with self._lock:
            self._seen[key] = (now, types)
        return types

    def invalidate(self) -> None:
        """Forget every view (after this process changed the subscriptions)."""
        with self._lock:
            self._seen.clear()


CACHE = SubscriptionCache()


def subscribed(unit: Unit, event_type: HookEvent | str) -> bool:
    """Does any endpoint (as of at most SUBSCRIPTIONS_REFRESH_S ago) receive `event_type`?"""
    return str(getattr(event_type, "value", event_type)) in CACHE.event_types(_conn(unit))


def _typed(name: str, type_: sa.types.TypeEngine) -> sa.BindParameter:
    # INSERT ... SELECT needs typed parameters in the select list (Postgres would take an untyped
    # one as text); SQLAlchemy's psycopg dialect renders `%(name)s::TYPE` for them. No CAST: on
    # SQLite, CAST(... AS DATETIME) turns the stored text into a number.
    return sa.bindparam(name, type_=type_)


_COLUMNS = ("endpoint_id", "event_id", "event_type", "message_id", "phone", "data", "created_at", "status",
            "attempts", "next_attempt_at", "retry_since")


def _rows_for(event_type: str, message_id: sa.ColumnElement | None, source: sa.FromClause | None) -> sa.Select:
    """SELECT one outbox row per endpoint subscribed to `event_type` (and per row of `source`)."""
    now = _typed("p_hook_now", UTCDateTime())
    select = sa.select(
        HookSubscription.endpoint_id,
        _typed("p_hook_event_id", sa.String()),
        sa.literal(event_type, sa.String()),
        message_id if message_id is not None else _typed("p_hook_message_id", sa.BigInteger()),
        _typed("p_hook_phone", sa.String()),
        _typed("p_hook_data", sa.Text()),
        now, sa.literal(OutboxStatus.PENDING.value, sa.String()), sa.literal(0, sa.Integer()), now, now,
    )
    if source is not None:
        select = select.select_from(source).join(HookSubscription, sa.true())
    return select.where(HookSubscription.event_type == event_type)


def _params(*, data: dict[str, Any] | None, now: datetime | None, message_id: int | None = None,
            phone: str | None = None) -> dict[str, Any]:
    return {"p_hook_event_id": new_event_id(), "p_hook_now": now or utcnow(), "p_hook_message_id": message_id,
            "p_hook_phone": phone, "p_hook_data": json.dumps(data or {}, sort_keys=True, default=str)}


_EMITS: dict[str, sa.Insert] = {
    e.value: sa.insert(HookOutbox).from_select(list(_COLUMNS), _rows_for(e.value, None, None)) for e in HookEvent
}


def emit(unit: Unit, event_type: HookEvent, *, message_id: int | None = None, phone: str | None = None,
         data: dict[str, Any] | None = None, now: datetime | None = None) -> int:
    """Write `event_type` for every endpoint subscribed to it; how many rows. Does not commit."""
    conn = _conn(unit)
    if not subscribed(conn, event_type):
        return 0
    return conn.execute(_EMITS[event_type.value], _params(data=data, now=now, message_id=message_id, phone=phone)).rowcount


def sent_event_cte(sent: sa.CTE) -> sa.CTE:
    """The message.sent outbox insert as a CTE over `sent` (the UPDATE ... RETURNING messages.id
    of the one-statement record): a row only when the claim token still owned the message."""
    rows = _rows_for(HookEvent.MESSAGE_SENT.value, sent.c.id, sent)
    return sa.insert(HookOutbox).from_select(list(_COLUMNS), rows).cte("hook_sent")


def sent_params(*, vendor_id: int | None, vendor_message_id: str | None, vendor_status: str | None,
                now: datetime) -> dict[str, Any]:
    """The parameters `sent_event_cte` needs, and what `emit` takes for message.sent."""
    return _params(data=sent_data(vendor_id=vendor_id, vendor_message_id=vendor_message_id,
                                  vendor_status=vendor_status, now=now), now=now)


def sent_data(*, vendor_id: int | None, vendor_message_id: str | None, vendor_status: str | None,
              now: datetime) -> dict[str, Any]:
    return {"status": "sent", "vendor_id": vendor_id, "vendor_message_id": vendor_message_id,
            "vendor_status": vendor_status, "sent_at": iso(now)}


_RECEIPTS = {"delivered": HookEvent.MESSAGE_DELIVERED, "read": HookEvent.MESSAGE_READ, "failed": HookEvent.MESSAGE_FAILED}


def emit_vendor_event(session: Session, event: Any, message_id: int, *, applied: bool) -> int:
    """The hook event for one vendor webhook event (worker.webhooks.events.Event) just applied to
    `message_id`; each vendor event is applied once (the receiver deduplicates), so each emits once.

    A status receipt emits only when it changed the message (`applied`: a failed receipt after
    delivered/read does not apply); a `sent` receipt emits nothing (message.sent came from the send
    path). Every tap emits button.tapped, with `first` saying whether it is the recorded reply."""
    from worker.webhooks.models import EventKind

    if event.kind == EventKind.REPLY:
        return emit(session, HookEvent.BUTTON_TAPPED, message_id=message_id, data={
            "button_id": event.button_id, "button_title": event.button_title, "tapped_at": iso(event.occurred_at),
            "first": applied})
    hook = _RECEIPTS.get(event.status or "") if event.kind == EventKind.STATUS else None
    if hook is None or not applied:
        return 0
    data: dict[str, Any] = {"status": event.status, "vendor_message_id": event.vendor_message_id,
                            "occurred_at": iso(event.occurred_at)}
    if hook is HookEvent.MESSAGE_FAILED:
        data.update(stage="delivery", error_message=event.reason)
    return emit(session, hook, message_id=message_id, data=data)
