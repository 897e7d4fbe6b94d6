"""Console tables: the people who log in, and their sessions (only a hash of each session token)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from worker.models import Base, BigId, UTCDateTime, utcnow


class ConsoleUser(Base):
    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)       # stored lower-cased
    role: Mapped[str] = mapped_column(sa.String(16))                      # admin | marketer | viewer
    password_hash: Mapped[str] = mapped_column(sa.String(200))            # argon2id, with its parameters
    failed_logins: Mapped[int] = mapped_column(sa.Integer, default=0)     # wrong passwords since the last lock or login
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
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
