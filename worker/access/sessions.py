"""Login sessions: a random token in an HttpOnly cookie; the database keeps only its sha256.

A stolen database therefore opens no session. A session ends at logout, at its expiry
(CONSOLE_SESSION_TTL_S after login), or when its person is disabled or gets a new password.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.access.models import ConsoleSession, ConsoleUser
from worker.access.users import Person
from worker.models import utcnow
from worker.runtime import Runtime

COOKIE_NAME = "bc_session"
TOKEN_BYTES = 32


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(rt: Runtime, person: Person, ttl_s: float, now: datetime | None = None) -> str:
    """A new session for `person`, in its own transaction; returns the token for the cookie (shown
    nowhere else)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with rt.session_factory.begin() as session:
        session.execute(sa.delete(ConsoleSession).where(ConsoleSession.expires_at <= now))  # keep the table small
        session.add(ConsoleSession(token_hash=token_hash(token), user_id=person.id, created_at=now,
                                   expires_at=now + timedelta(seconds=ttl_s)))
    return token


def person_for(session: Session, token: str | None, now: datetime | None = None) -> Person | None:
    """The person whose unexpired session this token is, unless they were disabled since."""
    if not token or len(token) > 200:
        return None
    user = session.scalar(
        sa.select(ConsoleUser).join(ConsoleSession, ConsoleSession.user_id == ConsoleUser.id)
        .where(ConsoleSession.token_hash == token_hash(token), ConsoleSession.expires_at > (now or utcnow()),
               ConsoleUser.disabled_at.is_(None))
    )
    return Person.of(user) if user is not None else None


def end_session(rt: Runtime, token: str | None) -> None:
    """Forget the session this token is (logout), in its own transaction; no token: nothing to do."""
    if not token:
        return
    with rt.session_factory.begin() as session:
        session.execute(sa.delete(ConsoleSession).where(ConsoleSession.token_hash == token_hash(token)))
