"""Apply webhook events to messages: delivery status forward only, button replies earliest first.

Every write is one conditional UPDATE, so duplicates, out-of-order arrival and concurrent
receivers or sweepers cannot move a message backwards:
- status: NULL/sent -> delivered -> read; `failed` only from NULL or sent (a message the vendor
  already called delivered or read stays so) and records the reason; nothing leaves `failed`.
  A `failed` status is a late failure: its vendor code and class (worker.failures) are recorded on
  the message, a 131050 opts the contact out, and the campaign's late-failure breaker
  (worker.webhooks.breaker) is checked, all in the same transaction.
  Times keep the earliest evidence: delivered_at/read_at = min(stored, event time); a read with no
  delivered_at sets delivered_at too (read implies delivered).
- reply: the earliest tap (by the event's time) wins; later taps stay in webhook_events only.
  A reply does not change delivery_status: the columns say what the vendor reported.
Functions here never commit: the caller owns the transaction.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker import metrics
from worker.contacts.service import DEFAULT_RULES, SOURCE_VENDOR_CODE, ConsentRules, apply_inbound, opt_out
from worker.failures import FailureClass, classify, describe_code
from worker.hooks.outbox import emit_vendor_event
from worker.logs import log_outcome
from worker.models import Message, UTCDateTime, utcnow
from worker.settings import WEBHOOK_MATCH_WINDOW_S
from worker.status import DeliveryStatus
from worker.webhooks.breaker import DEFAULT_POLICY, LatePolicy
from worker.webhooks.breaker import check as check_breaker
from worker.webhooks.events import RECEIVED_EVENT, Event, parse_body
from worker.webhooks.models import EventKind, WebhookEvent
from worker.webhooks.store import insert_event, mark_matched

#: a reply without context may be linked to a message sent up to this long after the reply's time
#: (the vendor's clock and ours differ a little); later messages cannot be what it answers
REPLY_CLOCK_SKEW_S = 60.0
#: recent messages to one phone considered when a reply carries no context
REPLY_CANDIDATES = 5
PENDING_BATCH = 500
log = logging.getLogger("buttoncast.webhooks")
BUTTON_ID_MAX_CHARS = 256
BUTTON_TITLE_MAX_CHARS = 64

_DELIVERED, _READ, _FAILED = DeliveryStatus.DELIVERED, DeliveryStatus.READ, DeliveryStatus.FAILED
_RANK = sa.case({s.value: s.rank for s in DeliveryStatus}, value=Message.delivery_status, else_=-1)


class Outcome(str, enum.Enum):
    """What the receiver did with one event."""

    MATCHED = "matched"      # recorded and applied to its message
    PENDING = "pending"      # recorded; its message is not known yet
    IGNORED = "ignored"      # recorded; nothing to apply (a non-button inbound message)
    DUPLICATE = "duplicate"  # already recorded earlier: nothing done


def record_and_apply(session: Session, event: Event, body: bytes, consent: ConsentRules = DEFAULT_RULES, *,
                     late: LatePolicy = DEFAULT_POLICY) -> Outcome:
    """Record an event and, when its message is known, apply it in the same transaction.

    Every inbound message (`message.received`, replies included) also updates its contact in that
    transaction: its 24-hour window, and an opt-out keyword or button (or opt-in keyword) takes
    effect before the receiver answers 200."""
    message_id = find_message(session, event) if event.kind != EventKind.INBOUND else None
    if insert_event(session, event, body, message_id=message_id) is None:
        return Outcome.DUPLICATE
    if event.event_type == RECEIVED_EVENT and event.phone:
        apply_inbound(session, event.phone, at=event.occurred_at, rules=consent, text=event.text,
                      button_id=event.button_id)
    if event.kind == EventKind.INBOUND:
        return Outcome.IGNORED
    if message_id is None:
        if event.phone and classify(event.failure_code) is FailureClass.OPTED_OUT:
            _opt_out_by_code(session, event.phone, event, None)  # the phone is known: no need to wait
        return Outcome.PENDING
    apply_to_message(session, event, message_id, late=late)
    return Outcome.MATCHED


def find_message(session: Session, event: Event) -> int | None:
    """The id of the message an event is about, or None when it is not (yet) recorded."""
    if event.vendor_message_id:
        return session.execute(
            sa.select(Message.id).where(Message.vendor_message_id == event.vendor_message_id)
        ).scalar_one_or_none()
    if event.kind == EventKind.REPLY and event.phone:
        return _latest_message_to(session, event)
    return None


def _latest_message_to(session: Session, event: Event) -> int | None:
    """A reply with no context answers the latest message sent to its phone before it; among the
    last few, prefer one that offered the tapped button id."""
    latest_send = event.occurred_at + timedelta(seconds=REPLY_CLOCK_SKEW_S)
    rows = session.execute(
        sa.select(Message.id, Message.content)
        .where(Message.phone == event.phone, Message.sent_at.is_not(None), Message.sent_at <= latest_send)
        .order_by(Message.sent_at.desc(), Message.id.desc())
        .limit(REPLY_CANDIDATES)
    ).all()
    for message_id, content in rows:
        buttons = (content or {}).get("buttons") or []
        if any(isinstance(b, dict) and b.get("id") == event.button_id for b in buttons):
            return message_id
    return rows[0][0] if rows else None


def apply_to_message(session: Session, event: Event, message_id: int, *, late: LatePolicy = DEFAULT_POLICY) -> bool:
    """Apply a status or reply event to one message; True if the row changed. Writes its outbound
    hook event (worker.hooks) in the same transaction."""
    if event.kind == EventKind.STATUS:
        if event.status == _FAILED.value:
            changed = _apply_late_failure(session, event, message_id, late)
        else:
            changed = _apply_status(session, event, message_id)
    elif event.kind == EventKind.REPLY:
        changed = _apply_reply(session, event, message_id)
    else:
        return False
    emit_vendor_event(session, event, message_id, applied=changed)
    return changed


def _earliest(column: sa.orm.InstrumentedAttribute, when: sa.ColumnElement) -> sa.ColumnElement:
    return sa.case((sa.or_(column.is_(None), column > when), when), else_=column)


def _apply_late_failure(session: Session, event: Event, message_id: int, late: LatePolicy) -> bool:
    """NULL/sent -> failed with the reason, the vendor's code and its class; then what the class
    asks for: a 131050 opts the contact out, and the campaign's breaker is checked."""
    klass = classify(event.failure_code)
    changed = session.execute(
        sa.update(Message)
        .where(Message.id == message_id, _RANK < _DELIVERED.rank)
        .values(delivery_status=_FAILED.value, delivery_error=event.reason, failure_code=event.failure_code,
                failure_class=klass.value)
        .returning(Message.campaign_id, Message.phone)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if changed is None:
        return False   # already failed (a duplicate with another key), delivered or read: stays so
    campaign_id, phone = changed
    metrics.LATE_FAILURES.labels(klass.value).inc()
    log_outcome(log, logging.INFO, f"late failure {describe_code(event.failure_code)}", campaign_id=campaign_id,
                message_id=message_id, status="failed", vendor_message_id=event.vendor_message_id)
    if klass is FailureClass.OPTED_OUT and phone:
        _opt_out_by_code(session, phone, event, message_id)
    if campaign_id is not None:
        check_breaker(session, campaign_id, message_id=message_id, code=event.failure_code, policy=late)
    return True


def _opt_out_by_code(session: Session, phone: str, event: Event, message_id: int | None) -> None:
    about = f" of message {message_id}" if message_id is not None else ""
    opt_out(session, phone, source=SOURCE_VENDOR_CODE, actor="webhook", at=event.occurred_at,
            reason=f"late failure {describe_code(event.failure_code)}{about}")


def _apply_status(session: Session, event: Event, message_id: int) -> bool:
    """sent/delivered/read, forward only (a failed status goes through _apply_late_failure)."""
    status = DeliveryStatus(event.status)
    when = sa.literal(event.occurred_at, UTCDateTime())
    where = [Message.id == message_id, _RANK != _FAILED.rank]
    values: dict = {"delivery_status": sa.case((_RANK < status.rank, status.value), else_=Message.delivery_status)}
    if status.rank >= _DELIVERED.rank:
        values["delivered_at"] = _earliest(Message.delivered_at, when)
    if status is _READ:
        values["read_at"] = _earliest(Message.read_at, when)
    done = session.execute(
        sa.update(Message).where(*where).values(**values).execution_options(synchronize_session=False)
    ).rowcount
    return done == 1


def _apply_reply(session: Session, event: Event, message_id: int) -> bool:
    title = event.button_title[:BUTTON_TITLE_MAX_CHARS] if event.button_title else None
    done = session.execute(
        sa.update(Message)
        .where(Message.id == message_id, sa.or_(Message.replied_at.is_(None), Message.replied_at > event.occurred_at))
        .values(
            replied_at=event.occurred_at, reply_button_id=(event.button_id or "")[:BUTTON_ID_MAX_CHARS],
            reply_button_title=title,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    return done == 1


def match_pending_events(
    session: Session, limit: int = PENDING_BATCH, *, window_s: float = WEBHOOK_MATCH_WINDOW_S,
    now: datetime | None = None, late: LatePolicy = DEFAULT_POLICY,
) -> int:
    """Apply up to `limit` unmatched status/reply events whose message now exists; returns how many.

    For the sweeper (beat schedule): an event can arrive before the send path records the wamid.
    Only events received within `window_s` are retried (issue 12 item 15): older ones are other
    apps' messages or strangers' replies that will never match; they stay stored until pruned but
    are no longer rescanned, so the sweep's cost does not grow with history (partial index
    ix_webhook_events_unmatched_received).
    Safe to run concurrently with the receiver and with itself (every write is conditional).
    Does not commit: call inside the sweeper's transaction.
    """
    young = _young_unmatched((now or utcnow()) - timedelta(seconds=window_s))
    by_wamid = session.execute(
        sa.select(WebhookEvent.id, WebhookEvent.body, WebhookEvent.received_at, Message.id)
        .join(Message, Message.vendor_message_id == WebhookEvent.vendor_message_id)
        .where(*young, WebhookEvent.kind.in_([EventKind.STATUS, EventKind.REPLY]))
        .order_by(WebhookEvent.received_at, WebhookEvent.id)
        .limit(limit)
    ).all()
    matched = 0
    for event_id, body, received_at, message_id in by_wamid:
        matched += _apply_pending(session, event_id, body, received_at, message_id, late)
    if len(by_wamid) < limit:
        matched += _match_replies_by_phone(session, limit - len(by_wamid), young)
    return matched


def _young_unmatched(since: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """Unmatched events received since `since`: the predicate of the partial index, then its range."""
    return WebhookEvent.matched.is_(False), WebhookEvent.received_at >= since


def _match_replies_by_phone(session: Session, limit: int, young: tuple[sa.ColumnElement[bool], ...]) -> int:
    """Replies without context whose phone now has a sent message."""
    # sent_at <= occurred_at (no skew) guarantees find_message succeeds, so no row is picked forever
    has_message = sa.exists().where(
        Message.phone == WebhookEvent.phone, Message.sent_at.is_not(None), Message.sent_at <= WebhookEvent.occurred_at
    )
    rows = session.execute(
        sa.select(WebhookEvent.id, WebhookEvent.body, WebhookEvent.received_at)
        .where(*young, WebhookEvent.kind == EventKind.REPLY, WebhookEvent.vendor_message_id.is_(None), has_message)
        .order_by(WebhookEvent.received_at, WebhookEvent.id)
        .limit(limit)
    ).all()
    matched = 0
    for event_id, body, received_at in rows:
        matched += _apply_pending(session, event_id, body, received_at, None)
    return matched


def _apply_pending(
    session: Session, event_id: int, body: str, received_at: datetime, message_id: int | None,
    late: LatePolicy = DEFAULT_POLICY,
) -> int:
    event = parse_body(body.encode("utf-8"), received_at=received_at)
    if not isinstance(event, Event):
        raise ValueError(f"webhook_events row {event_id} holds a verification body, not an event")
    message_id = message_id or find_message(session, event)
    if message_id is None or not mark_matched(session, event_id, message_id, utcnow()):
        return 0
    apply_to_message(session, event, message_id, late=late)
    return 1
