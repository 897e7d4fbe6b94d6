"""The API's tables: `api_keys` (only a hash of each key) and `api_idempotency` (Idempotency-Key records).

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
    #: the last request it authenticated, to within worker.api.keys.LAST_USED_RESOLUTION_S
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotentRequest(Base):
    """The first request made with an Idempotency-Key: its body's fingerprint and the answer given."""

    __tablename__ = "api_idempotency"

    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64))  # sha256 of the canonical JSON body
    api_key_id: Mapped[int | None] = mapped_column(BigId)
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    response: Mapped[dict | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
