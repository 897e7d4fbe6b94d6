"""Reading messages back: one message with its audit trail, and lists of messages (keyset pages).

The CLI's `message show` and the API's `GET /v1/messages[/{id}]` both read through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.errors import ButtoncastError
from worker.message import normalize_phone
from worker.models import Attempt, Message, MessageEvent

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
) -> list[Message]:
    """Newest first; the next page starts below the last id returned (keyset: no OFFSET scan).

    `phone` is normalised as at enqueue (a MessageInvalid names it if it is no phone number).
    `created_by_key`: only the messages that API key created (a `send` key's read). Each filter of a
    campaign's recipients table (button, error code) and the key's own messages has its index
    (worker.models.Message), walked newest first."""
    query = sa.select(Message).order_by(Message.id.desc()).limit(max(1, min(limit, PAGE_SIZE_MAX)))
    if created_by_key is not None:
        query = query.where(Message.api_key_id == created_by_key)
    if phone is not None:
        query = query.where(Message.phone == normalize_phone(phone, default_region=default_region))
    if status is not None:
        query = query.where(Message.status == status)
    if campaign_id is not None:
        query = query.where(Message.campaign_id == campaign_id)
    if before_id is not None:
        query = query.where(Message.id < before_id)
    if reply_button_id is not None:
        query = query.where(Message.reply_button_id == reply_button_id)
    if error_code is not None:
        query = query.where(Message.last_error_code == error_code)
    return list(session.scalars(query))
