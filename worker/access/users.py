"""The people who use the console: create, list, disable, reset a password, and log in.

Passwords are hashed with argon2id (argon2-cffi's defaults). Five wrong passwords in a row lock
the account for 15 minutes; a correct password during the lock is refused too, so guessing gains
nothing. Every change and every login (or refusal) is in the audit trail, actor "user:<email>"
for what a person did and the caller's actor ("cli") for what was done to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.orm import Session

from worker.access.models import ConsoleSession, ConsoleUser
from worker.access.roles import Role
from worker.audit import record_audit
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import utcnow
from worker.runtime import Runtime

LOCK_AFTER_FAILURES = 5
LOCK_DURATION_S = 15 * 60
PASSWORD_MIN_CHARS = 10
PASSWORD_MAX_CHARS = 1024       # argon2 hashes any length; this bounds the work one request costs
EMAIL_MAX_CHARS = 254
_hasher = PasswordHasher()
#: verified against when the email is unknown, so an unknown email costs the same time as a wrong password
_DUMMY_HASH = _hasher.hash("not a password anyone has")


def actor_of(email: str) -> str:
    return f"user:{email}"


@dataclass(frozen=True)
class Person:
    """A console user as the pages see them (never the hash)."""

    id: int
    email: str
    role: Role
    disabled: bool
    locked_until: datetime | None
    created_at: datetime
    last_login_at: datetime | None

    @property
    def actor(self) -> str:
        return actor_of(self.email)

    @classmethod
    def of(cls, user: ConsoleUser) -> "Person":
        return cls(user.id, user.email, Role(user.role), user.disabled_at is not None, user.locked_until,
                   user.created_at, user.last_login_at)


class UserNotFound(ButtoncastError):
    def __init__(self, email: str) -> None:
        super().__init__(f"no console user {email}")


class LoginRefused(ButtoncastError):
    """Wrong email or password, a locked or a disabled account: the message says which may be retried."""

    def __init__(self, message: str, *, locked_until: datetime | None = None) -> None:
        super().__init__(message)
        self.locked_until = locked_until


def normalize_email(email: str) -> str:
    value = (email or "").strip().lower()
    if not value or "@" not in value.strip("@") or len(value) > EMAIL_MAX_CHARS or any(c.isspace() for c in value):
        raise MessageInvalid([FieldProblem("email", f"{email!r} is not an email address")])
    return value


def check_password(password: str) -> None:
    n = len(password or "")
    if n < PASSWORD_MIN_CHARS:
        raise MessageInvalid([FieldProblem("password", f"is {n} characters; use at least {PASSWORD_MIN_CHARS}")])
    if n > PASSWORD_MAX_CHARS:
        raise MessageInvalid([FieldProblem("password", f"is {n} characters; the limit is {PASSWORD_MAX_CHARS}")])


def create_user(rt: Runtime, *, email: str, role: str, password: str, actor: str | None) -> Person:
    """A new console user (argon2 hash of the password), in its own transaction."""
    email = normalize_email(email)
    try:
        role_value = Role(role)
    except ValueError:
        raise MessageInvalid([FieldProblem("role", f"{role!r} is not one of admin, marketer, viewer")]) from None
    check_password(password)
    with rt.session_factory.begin() as session:
        if session.scalar(sa.select(ConsoleUser.id).where(ConsoleUser.email == email)) is not None:
            raise MessageInvalid([FieldProblem("email", f"{email} already has an account")])
        user = ConsoleUser(email=email, role=role_value.value, password_hash=_hasher.hash(password), failed_logins=0,
                           created_at=utcnow())
        session.add(user)
        session.flush()
        record_audit(session, actor, "user.created", "console_user", user.id, email=email, role=role_value.value)
        return Person.of(user)


def list_users(session: Session) -> list[Person]:
    return [Person.of(u) for u in session.scalars(sa.select(ConsoleUser).order_by(ConsoleUser.email))]


def _user(session: Session, email: str) -> ConsoleUser:
    user = session.scalar(sa.select(ConsoleUser).where(ConsoleUser.email == normalize_email(email)).with_for_update())
    if user is None:
        raise UserNotFound(normalize_email(email))
    return user


def disable_user(rt: Runtime, email: str, *, actor: str | None) -> Person:
    """No more logins, and every open session of theirs ends now (one transaction of its own)."""
    with rt.session_factory.begin() as session:
        user = _user(session, email)
        user.disabled_at = user.disabled_at or utcnow()
        session.execute(sa.delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
        record_audit(session, actor, "user.disabled", "console_user", user.id, email=user.email)
        return Person.of(user)


def reset_password(rt: Runtime, email: str, password: str, *, actor: str | None) -> Person:
    """A new password; lifts a lock, re-enables the account, and ends its open sessions (one
    transaction of its own)."""
    check_password(password)
    with rt.session_factory.begin() as session:
        user = _user(session, email)
        user.password_hash = _hasher.hash(password)
        user.failed_logins, user.locked_until, user.disabled_at = 0, None, None
        session.execute(sa.delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
        record_audit(session, actor, "user.password_reset", "console_user", user.id, email=user.email)
        return Person.of(user)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def log_in(rt: Runtime, email: str, password: str, now: datetime | None = None) -> Person:
    """The person, if the password is right and the account neither locked nor disabled; else LoginRefused.

    It owns its transaction: a refusal is committed (the failure count, the lock, the audit row)
    before it is raised."""
    now = now or utcnow()
    try:
        email = normalize_email(email)
    except MessageInvalid:
        raise LoginRefused("wrong email or password") from None
    with rt.session_factory.begin() as session:
        outcome = _judge_login(session, email, password or "", now)
    if isinstance(outcome, LoginRefused):
        raise outcome
    return outcome


def _judge_login(session: Session, email: str, password: str, now: datetime) -> Person | LoginRefused:
    user = session.scalar(sa.select(ConsoleUser).where(ConsoleUser.email == email).with_for_update())
    if user is None:
        _verify(_DUMMY_HASH, password)
        return LoginRefused("wrong email or password")
    if user.locked_until is not None and user.locked_until > now:
        record_audit(session, actor_of(email), "user.login_refused", "console_user", user.id, reason="locked")
        return LoginRefused(f"too many wrong passwords: the account is locked until {user.locked_until:%H:%M} UTC; "
                            "try again then, or ask an admin to reset the password", locked_until=user.locked_until)
    ok = _verify(user.password_hash, password[:PASSWORD_MAX_CHARS])
    if user.disabled_at is not None:
        record_audit(session, actor_of(email), "user.login_refused", "console_user", user.id, reason="disabled")
        return LoginRefused("this account is disabled; ask an admin" if ok else "wrong email or password")
    if ok:
        user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(password)
        record_audit(session, actor_of(email), "user.logged_in", "console_user", user.id)
        return Person.of(user)
    user.failed_logins += 1
    if user.failed_logins >= LOCK_AFTER_FAILURES:
        user.failed_logins, user.locked_until = 0, now + timedelta(seconds=LOCK_DURATION_S)
        record_audit(session, actor_of(email), "user.locked", "console_user", user.id, minutes=LOCK_DURATION_S // 60)
        return LoginRefused(f"{LOCK_AFTER_FAILURES} wrong passwords: the account is locked for {LOCK_DURATION_S // 60} "
                            f"minutes (until {user.locked_until:%H:%M} UTC)", locked_until=user.locked_until)
    record_audit(session, actor_of(email), "user.login_failed", "console_user", user.id, failures=user.failed_logins)
    return LoginRefused("wrong email or password")
