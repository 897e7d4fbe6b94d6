"""The `webhook_events` table: every accepted vendor webhook, kept durably before we answer 200.

Declared on `worker.models.Base` so Alembic's metadata sees it once this module is imported.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from worker.models import Base, BigId, UTCDateTime, utcnow


class EventKind:
    """What an event is about (stored in `webhook_events.kind`)."""

    STATUS = "status"    # message.status.updated
    REPLY = "reply"      # message.received carrying a button reply
    INBOUND = "inbound"  # any other inbound message: recorded, never applied


class WebhookEvent(Base):
    """One vendor webhook event, deduplicated by `dedupe_key` (the vendor retries and repeats).

    `matched` is true once the event was applied to the message in `message_id`; an unmatched
    status or reply event waits for its message (see `worker.webhooks.apply.match_pending_events`).
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        sa.Index("ix_webhook_events_matched_wamid", "matched", "vendor_message_id"),
        # the sweep's windowed matching (issue 12 item 15; migration 0004)
        sa.Index("ix_webhook_events_unmatched_received", "received_at", "id",
                 postgresql_where=sa.text("matched IS false"), sqlite_where=sa.text("matched IS 0")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: sha256 hex of what makes the event unique (see worker.webhooks.events.dedupe_key)
    dedupe_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    event_type: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(16))
    #: the wamid of OUR message the event is about: status data.message_id, or a reply's context id
    vendor_message_id: Mapped[str | None] = mapped_column(sa.String(200))
    #: the other party's phone (digits): a reply's sender, a status event's recipient when given
    phone: Mapped[str | None] = mapped_column(sa.String(64))
    #: status events: sent / delivered / read / failed
    status: Mapped[str | None] = mapped_column(sa.String(16))
    #: the event's own time (data.timestamp), else when we received it
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    matched: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    message_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the raw body as received (UTF-8), so an event can be re-parsed or audited later
    body: Mapped[str] = mapped_column(sa.Text)
