"""Reading messages back: one message with its audit trail, and lists of messages (keyset pages).

The CLI's `message show` and the API's `GET /v1/messages[/{id}]` both read through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BooleanClauseList

from worker.errors import ButtoncastError
from worker.failures import FailureClass, classify
from worker.message import normalize_phone
from worker.models import Attempt, Message, MessageEvent
from worker.status import MessageStatus

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200


class MessageNotFound(ButtoncastError):
    def __init__(self, message_id: int) -> None:
        super().__init__(f"no message {message_id}")
        self.message_id = message_id


@dataclass(frozen=True)
class MessageHistory:
    message: Message
    attempts: list[Attempt]
    events: list[MessageEvent]


def message_history(session: Session, message_id: int, *, created_by_key: int | None = None) -> MessageHistory:
    """The message, every HTTP attempt and every status change no attempt explains, in id order.

    `created_by_key`: only a message that API key created (a `send` key's read); any other is
    MessageNotFound, as if it did not exist, so a key learns nothing of other callers' messages."""
    msg = session.get(Message, message_id)
    if msg is None or (created_by_key is not None and msg.api_key_id != created_by_key):
        raise MessageNotFound(message_id)
    attempts = session.scalars(sa.select(Attempt).where(Attempt.message_id == message_id).order_by(Attempt.id)).all()
    events = session.scalars(sa.select(MessageEvent).where(MessageEvent.message_id == message_id).order_by(MessageEvent.id)).all()
    return MessageHistory(msg, list(attempts), list(events))


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def trail(history: MessageHistory) -> list[tuple[datetime, str]]:
    """Every attempt and status change as (when, one line), oldest first: what `message show` prints
    and the console's message page shows."""
    lines = [(a.started_at, f"attempt  HTTP {_fmt(a.http_status):>4} {a.outcome:<20} {a.duration_ms:>6} ms  "
                            f"{_fmt(a.error_code)} {_fmt(a.error_message) if a.error_code else _fmt(a.vendor_message_id)}"
                            f"  request {_fmt(a.request_id)}  worker {_fmt(a.worker)}") for a in history.attempts]
    lines += [(e.at, f"status   {_fmt(e.from_status)} -> {e.to_status}: {e.reason}  by {_fmt(e.actor)}") for e in history.events]
    return sorted(lines, key=lambda t: t[0])


def list_messages(
    session: Session,
    *,
    phone: str | None = None,
    status: str | None = None,
    campaign_id: int | None = None,
    before_id: int | None = None,
    limit: int = PAGE_SIZE_DEFAULT,
    default_region: str | None = None,
    reply_button_id: str | None = None,
    error_code: str | None = None,
    created_by_key: int | None = None,
    late_failures: bool = False,
    after_id: int | None = None,
) -> list[Message]:
    """Newest first; the next page starts below the last id returned (keyset: no OFFSET scan).
    With `after_id` (0 for the first page), oldest first from above it instead: the console's
    recipients table, whose order must not move while a campaign sends.

    `phone` is normalised as at enqueue (a MessageInvalid names it if it is no phone number).
    `created_by_key`: only the messages that API key created (a `send` key's read). Each filter of a
    campaign's recipients table (button, error code) and the key's own messages has its index
    (worker.models.Message), walked newest first.

    `late_failures` (the console): a message the vendor accepted and later reported failed counts as
    `failed`, not `sent`, and `error_code` also finds it by its vendor code (131047) or its class
    (window_closed); see `failure_matches`."""
    order = Message.id.desc() if after_id is None else Message.id.asc()
    where: list[sa.ColumnElement[bool]] = []
    if created_by_key is not None:
        where.append(Message.api_key_id == created_by_key)
    if phone is not None:
        where.append(Message.phone == normalize_phone(phone, default_region=default_region))
    if status is not None:
        where.append(status_matches(status) if late_failures else Message.status == status)
    if campaign_id is not None:
        where.append(Message.campaign_id == campaign_id)
    if before_id is not None:
        where.append(Message.id < before_id)
    if after_id is not None:
        where.append(Message.id > after_id)
    if reply_button_id is not None:
        where.append(Message.reply_button_id == reply_button_id)
    if error_code is not None:
        where.append(failure_matches(error_code) if late_failures else Message.last_error_code == error_code)
    return list(session.scalars(_keyset_page(where, order, max(1, min(limit, PAGE_SIZE_MAX)))))


def _keyset_page(where: list[sa.ColumnElement[bool]], order: sa.ColumnElement, size: int) -> sa.Select:
    """One page in id order. A condition that is an OR (`failed`: at send OR reported later; an
    error code: at send OR a late failure's) is read as one page per arm, each walked in id order
    by its own index, then merged: the OR itself would be read along the campaign's ids through
    every row between two matches (the 800,000 sent rows before the first failed one of a
    1,000,000-recipient campaign: 1.2 s)."""
    either = next((c for c in where if isinstance(c, BooleanClauseList) and c.operator is operators.or_), None)
    if either is None:
        return sa.select(Message).where(*where).order_by(order).limit(size)
    rest = [c for c in where if c is not either]
    arms = [sa.select(Message.id).where(*rest, arm).order_by(order).limit(size).subquery() for arm in either.clauses]
    ids = sa.union(*(sa.select(arm.c.id) for arm in arms)).subquery()
    return sa.select(Message).where(Message.id.in_(sa.select(ids.c.id))).order_by(order).limit(size)


#: a late failure (worker.failures): sent, then a `failed` status webhook recorded its class
LATE_FAILURE = Message.failure_class.is_not(None)


def status_matches(status: str) -> sa.ColumnElement[bool]:
    """`failed`: failed when sending, or reported failed later; `sent`: sent and not reported failed.
    Each arm has its index (ix_messages_campaign_status, ix_messages_campaign_late)."""
    if status == MessageStatus.FAILED.value:
        return sa.or_(Message.status == status, LATE_FAILURE)
    if status == MessageStatus.SENT.value:
        return sa.and_(Message.status == status, ~LATE_FAILURE)
    return Message.status == status


def failure_matches(text: str) -> sa.ColumnElement[bool]:
    """A code or a reason: the last error when sending (`131026`, `window_closed` of a suppressed
    message), a late failure's class (`window_closed`) or its vendor code (`131047`, looked up
    within its class, so the late-failure index serves it)."""
    text = text.strip()
    late = (Message.failure_class == text if FailureClass.parse(text) is not None
            else sa.and_(Message.failure_class == classify(text).value, Message.failure_code == text))
    return sa.or_(Message.last_error_code == text, late)
