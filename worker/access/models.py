"""Who may act: `api_keys` (only a hash of each key), `api_idempotency` (Idempotency-Key records),
`console_users`, `console_sessions` (only a hash of each session token) and `login_throttle`
(recent failed logins, which slow the next ones).

Declared on `worker.models.Base` so the test fixtures and Alembic's metadata see them once imported.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from worker.models import Base, BigId, UTCDateTime, utcnow


class ApiKey(Base):
    """One API key. The key itself is shown once at creation; only its sha256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: the short public part of the key ("bc_<prefix>_<secret>"): finds the row, safe to show and log
    prefix: Mapped[str] = mapped_column(sa.String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64))      # sha256 hex of the whole key
    name: Mapped[str] = mapped_column(sa.String(100))
    scope: Mapped[str] = mapped_column(sa.String(16))         # send | campaigns | admin
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the last request it authenticated, to within worker.access.keys.LAST_USED_RESOLUTION_S
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotentRequest(Base):
    """The first request made with an Idempotency-Key: its body's fingerprint and the answer given.

    Keys are per caller (`scope`: "apikey:<id>") and live until `expires_at` (24 hours after their
    first use; worker.sending.idempotency); the retention job deletes them after that."""

    __tablename__ = "api_idempotency"
    __table_args__ = (sa.Index("ix_api_idempotency_expires_at", "expires_at"),)

    scope: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64))  # sha256 of the canonical JSON body
    api_key_id: Mapped[int | None] = mapped_column(BigId)
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    response: Mapped[dict | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsoleUser(Base):
    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)       # stored lower-cased
    role: Mapped[str] = mapped_column(sa.String(16))                      # admin | marketer | viewer
    password_hash: Mapped[str] = mapped_column(sa.String(200))            # argon2id, with its parameters
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsoleSession(Base):
    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)   # sha256 of the cookie's token
    user_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("console_users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginThrottle(Base):
    """Recent failed console logins from one client address: over every account tried (`account`
    ""), and for one account (`account`: the sha256 of the email tried, whether or not it has an
    account, so the answer never tells which emails exist). worker.access.throttle turns `failures`
    and `last_failed_at` into the wait before the next try; rows idle for CONSOLE_LOGIN_FORGET_S
    are deleted."""

    __tablename__ = "login_throttle"
    __table_args__ = (sa.Index("ix_login_throttle_last_failed_at", "last_failed_at"),
                      sa.Index("ix_login_throttle_account", "account"))

    address: Mapped[str] = mapped_column(sa.String(64), primary_key=True)   # the client address as uvicorn saw it
    account: Mapped[str] = mapped_column(sa.String(64), primary_key=True)   # "" or sha256 hex of the email
    failures: Mapped[int] = mapped_column(sa.Integer)
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime)
