"""Database tables (SQLAlchemy 2.x typed models). The database is the source of truth.

Times are stored as naive UTC and come back timezone-aware (UTCDateTime), on Postgres and SQLite.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from worker.status import CampaignStatus, MessageStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Store naive UTC; return aware UTC. Rejects naive input so no local time sneaks in."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; pass an aware datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL on SQLite
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    phone_number_id: Mapped[str] = mapped_column(sa.String(64))
    #: the message template (header/body/footer with {{placeholders}}, buttons), as in message.json
    template: Mapped[dict] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(16), default=CampaignStatus.DRAFT.value, index=True)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_start: Mapped[str | None] = mapped_column(sa.String(5))   # "09:00"
    window_end: Mapped[str | None] = mapped_column(sa.String(5))     # "21:00"
    window_tz: Mapped[str | None] = mapped_column(sa.String(64))     # "Asia/Riyadh"
    pause_reason: Mapped[str | None] = mapped_column(sa.Text)
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: ambiguous outcomes (unknown) since the last send; AUTO_PAUSE_CONSECUTIVE_UNKNOWN pauses
    consecutive_unknown: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    recipients_imported: Mapped[int] = mapped_column(sa.Integer, default=0)
    rows_rejected: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Message(Base):
    """One button message to one recipient: a campaign recipient or an ad-hoc message."""

    __tablename__ = "messages"
    __table_args__ = (
        sa.UniqueConstraint("campaign_id", "phone", name="uq_messages_campaign_phone"),
        sa.Index("ix_messages_campaign_status", "campaign_id", "status"),
        sa.Index("ix_messages_status_not_before", "status", "not_before"),
        sa.Index("ix_messages_status_updated", "status", "updated_at"),
        sa.Index("ix_messages_phone_sent", "phone", "sent_at"),
        # Only what is left to send: the dispatcher's claim walks it in id order and never steps
        # over the rows a big campaign has already sent.
        sa.Index("ix_messages_pending_campaign_id", "campaign_id", "id",
                 postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    phone_number_id: Mapped[str] = mapped_column(sa.String(64))
    phone: Mapped[str] = mapped_column(sa.String(64))
    #: the filled message: body_text, buttons, header_text, footer_text (validated)
    content: Mapped[dict] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(16), default=MessageStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)  # HTTP attempts; 429s excluded
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    vendor_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    vendor_message_id: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    vendor_status: Mapped[str | None] = mapped_column(sa.String(32))
    last_error_code: Mapped[str | None] = mapped_column(sa.String(64))
    last_error_message: Mapped[str | None] = mapped_column(sa.Text)
    last_request_id: Mapped[str | None] = mapped_column(sa.String(100))
    claim_token: Mapped[str | None] = mapped_column(sa.String(64))
    claimed_by: Mapped[str | None] = mapped_column(sa.String(200))
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last task published
    sending_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # what the vendor's webhooks say later (forward only: sent -> delivered -> read)
    delivery_status: Mapped[str | None] = mapped_column(sa.String(16))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivery_error: Mapped[str | None] = mapped_column(sa.Text)
    replied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reply_button_id: Mapped[str | None] = mapped_column(sa.String(256))
    reply_button_title: Mapped[str | None] = mapped_column(sa.String(64))

    attempt_rows: Mapped[list["Attempt"]] = relationship(back_populates="message", order_by="Attempt.id")
    events: Mapped[list["MessageEvent"]] = relationship(back_populates="message", order_by="MessageEvent.id")


class Attempt(Base):
    """One HTTP request to the vendor for a message: when, how long, what came back, which worker."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(sa.Integer)
    http_status: Mapped[int | None] = mapped_column(sa.Integer)
    outcome: Mapped[str] = mapped_column(sa.String(32))
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    request_id: Mapped[str | None] = mapped_column(sa.String(100))
    vendor_message_id: Mapped[str | None] = mapped_column(sa.String(200))
    worker: Mapped[str | None] = mapped_column(sa.String(200))

    message: Mapped[Message] = relationship(back_populates="attempt_rows")


class MessageEvent(Base):
    """A status change that no HTTP attempt explains (sweeper, operator retry, pause, cancel)."""

    __tablename__ = "message_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    from_status: Mapped[str | None] = mapped_column(sa.String(16))
    to_status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.Text)
    actor: Mapped[str | None] = mapped_column(sa.String(200))  # worker hostname, "sweeper", "operator"

    message: Mapped[Message] = relationship(back_populates="events")
