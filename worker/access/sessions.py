"""Login sessions: a random token in an HttpOnly cookie; the database keeps only its sha256.

A stolen database therefore opens no session. A session ends at logout, at its expiry
(CONSOLE_SESSION_TTL_S after login), after CONSOLE_SESSION_IDLE_S without a request (sliding: each
request moves it on, to at most the login's expiry), or when its person is disabled or gets a new
password. `expires_at` holds whichever comes first, so one comparison refuses an expired session and
one DELETE prunes them (at each login and in beat's daily prune).
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
#: a request moves an idle deadline on only when that gains more than this: not a write per request
SLIDE_STEP_S = 60.0


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(rt: Runtime, person: Person, ttl_s: float, now: datetime | None = None, *,
                  idle_s: float | None = None) -> str:
    """A new session for `person`, in its own transaction; returns the token for the cookie (shown
    nowhere else). It expires after `idle_s` (default CONSOLE_SESSION_IDLE_S) without a request,
    and after `ttl_s` in any case."""
    now = now or utcnow()
    idle_s = rt.settings.console_session_idle_s if idle_s is None else idle_s
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with rt.session_factory.begin() as session:
        session.execute(sa.delete(ConsoleSession).where(ConsoleSession.expires_at <= now))  # keep the table small
        session.add(ConsoleSession(token_hash=token_hash(token), user_id=person.id, created_at=now,
                                   expires_at=now + timedelta(seconds=min(ttl_s, idle_s))))
    return token


def resume_session(rt: Runtime, token: str | None, now: datetime | None = None) -> Person | None:
    """The person this session token is (as `person_for`), and the session's idle deadline moved to
    CONSOLE_SESSION_IDLE_S from now, never past CONSOLE_SESSION_TTL_S from its login. The move is
    written only when it gains more than SLIDE_STEP_S, in its own short transaction."""
    now = now or utcnow()
    with rt.read_sessions() as session:
        found = _live_session(session, token, now)
    if found is None:
        return None
    person, created_at, expires_at = found
    settings = rt.settings
    slid = min(created_at + timedelta(seconds=settings.console_session_ttl_s),
               now + timedelta(seconds=settings.console_session_idle_s))
    if slid - expires_at > timedelta(seconds=SLIDE_STEP_S):
        with rt.session_factory.begin() as session:
            session.execute(sa.update(ConsoleSession)
                            .where(ConsoleSession.token_hash == token_hash(token or ""), ConsoleSession.expires_at > now,
                                   ConsoleSession.expires_at < slid)
                            .values(expires_at=slid))
    return person


def delete_expired_sessions(rt: Runtime, now: datetime | None = None) -> int:
    """Delete every session past its expiry (idle or not); returns how many (beat's daily prune)."""
    with rt.session_factory.begin() as session:
        return session.execute(sa.delete(ConsoleSession).where(ConsoleSession.expires_at <= (now or utcnow()))).rowcount


def person_for(session: Session, token: str | None, now: datetime | None = None) -> Person | None:
    """The person whose unexpired session this token is, unless they were disabled since."""
    found = _live_session(session, token, now or utcnow())
    return found[0] if found is not None else None


def _live_session(session: Session, token: str | None, now: datetime) -> tuple[Person, datetime, datetime] | None:
    """(person, login time, expiry) of this token's unexpired session of a person not disabled."""
    if not token or len(token) > 200:
        return None
    row = session.execute(
        sa.select(ConsoleUser, ConsoleSession.created_at, ConsoleSession.expires_at)
        .join(ConsoleSession, ConsoleSession.user_id == ConsoleUser.id)
        .where(ConsoleSession.token_hash == token_hash(token), ConsoleSession.expires_at > now,
               ConsoleUser.disabled_at.is_(None))
    ).first()
    return (Person.of(row[0]), row[1], row[2]) if row is not None else None


def end_session(rt: Runtime, token: str | None) -> None:
    """Forget the session this token is (logout), in its own transaction; no token: nothing to do."""
    if not token:
        return
    with rt.session_factory.begin() as session:
        session.execute(sa.delete(ConsoleSession).where(ConsoleSession.token_hash == token_hash(token)))
