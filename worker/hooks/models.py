"""Tables of the outbound hooks: endpoints, what each subscribes to, and the outbox.

Declared on `worker.models.Base` so Alembic's metadata sees them once this module is imported.
The database holds nothing secret: an endpoint's signing secret is derived from the server-side
HOOKS_SIGNING_KEY and the endpoint's id and public `key_salt` (worker.hooks.signing).
"""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from worker.models import Base, BigId, UTCDateTime, utcnow


class OutboxStatus(str, enum.Enum):
    PENDING = "pending"       # to be delivered (now, or at next_attempt_at after a failure)
    DELIVERED = "delivered"   # the receiver answered 2xx
    DEAD = "dead"             # still failing after HOOKS_RETRY_MAX_S: dead-lettered, see `hooks redeliver`


class HookEndpoint(Base):
    __tablename__ = "hook_endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(sa.Text)
    #: public per-endpoint salt of the secret derivation: a new endpoint never gets an old secret,
    #: even where ids are reused (SQLite)
    key_salt: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HookSubscription(Base):
    """One event type one endpoint receives."""

    __tablename__ = "hook_subscriptions"
    __table_args__ = (sa.Index("ix_hook_subscriptions_event_type", "event_type"),)

    endpoint_id: Mapped[int] = mapped_column(sa.ForeignKey("hook_endpoints.id", ondelete="CASCADE"), primary_key=True)
    event_type: Mapped[str] = mapped_column(sa.String(32), primary_key=True)


class HookOutbox(Base):
    """One event for one endpoint: written with the change it reports, then delivered at least once."""

    __tablename__ = "hook_outbox"
    __table_args__ = (
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_hook_outbox_endpoint_event"),
        sa.Index("ix_hook_outbox_status_next_attempt", "status", "next_attempt_at"),
        sa.Index("ix_hook_outbox_event_id", "event_id"),
        # `hooks list` / GET /v1/hooks: counts per endpoint and status, and each endpoint's latest failure
        sa.Index("ix_hook_outbox_endpoint_status", "endpoint_id", "status"),
        sa.Index("ix_hook_outbox_endpoint_failed", "endpoint_id", "last_attempt_at",
                 postgresql_where=sa.text("last_error IS NOT NULL"), sqlite_where=sa.text("last_error IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(sa.ForeignKey("hook_endpoints.id", ondelete="CASCADE"))
    #: `evt_<32 hex>`: the same for every endpoint and every attempt (the receiver's dedupe key)
    event_id: Mapped[str] = mapped_column(sa.String(40))
    event_type: Mapped[str] = mapped_column(sa.String(32))
    #: the message the event is about; its id, campaign and phone are joined in when the body is built
    message_id: Mapped[int | None] = mapped_column(sa.ForeignKey("messages.id", ondelete="SET NULL"))
    #: for events about a contact rather than a message
    phone: Mapped[str | None] = mapped_column(sa.String(64))
    #: what the event adds to the body's `data` (JSON text, written by the producer)
    data: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: start of the retry period (created_at, or when an operator redelivered it)
    retry_since: Mapped[datetime] = mapped_column(UTCDateTime)
    #: set by the delivery tick that claimed the row; outcome writes need it
    claim_token: Mapped[str | None] = mapped_column(sa.String(32))
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_http_status: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dead_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
