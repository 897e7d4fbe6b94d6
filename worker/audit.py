"""The audit trail of writes made by a person (the console, the CLI) or an API key: who did what to
which thing, when, and from which client address (the console's /audit page reads it: scheduler.audit_trail).

Message status changes already have their trail in `message_events` (with an `actor`); this table
holds what has no such home (a campaign created, paused, cancelled; a key created or revoked).
A row is written in the same transaction as the change it records.
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.models import Base, BigId, UTCDateTime, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (sa.Index("ix_audit_events_subject", "subject_type", "subject_id"),
                      sa.Index("ix_audit_events_at", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(sa.String(200))            # e.g. "apikey:bc1a2b3c:crm"
    action: Mapped[str] = mapped_column(sa.String(64))            # e.g. "campaign.paused"
    subject_type: Mapped[str] = mapped_column(sa.String(32))      # "campaign", "message", "api_key"
    subject_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    detail: Mapped[dict | None] = mapped_column(sa.JSON)
    #: where the write came from: the client address of the HTTP request (the API, the console);
    #: None for the CLI and the engine
    address: Mapped[str | None] = mapped_column(sa.String(64))


#: the client address of the request being served (set by the API's and the console's middleware);
#: every audit row written while serving it carries it
client_address: ContextVar[str | None] = ContextVar("client_address", default=None)


def record_audit(session: Session, actor: str | None, action: str, subject_type: str, subject_id: int | None,
                 **detail: Any) -> None:
    """Add an audit row to `session`'s transaction; nothing when there is no actor (an internal change)."""
    if actor is None:
        return
    session.add(AuditEvent(actor=actor, action=action, subject_type=subject_type, subject_id=subject_id,
                           detail=detail or None, at=utcnow(), address=client_address.get()))


class RecordClientAddress:
    """ASGI middleware (the API's and the console's, installed once in worker.asgi): while a request
    is served, `client_address` holds its client's address, so every audit row it writes says where
    it came from (uvicorn takes X-Forwarded-For only from FORWARDED_ALLOW_IPS)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = client_address.set(str(client[0])[:64] if client else None)
        try:
            await self.app(scope, receive, send)
        finally:
            client_address.reset(token)
