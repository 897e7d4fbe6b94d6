"""The people who use the console: create, list, disable, reset a password, and log in.

Passwords are hashed with argon2id (argon2-cffi's defaults). Wrong passwords slow the next tries
from the same client address down (worker.access.throttle); nothing locks an account, so nobody
can lock its owner out. Every change and every login (or refusal) is in the audit trail, with the
client address, actor "user:<email>" for what a person did and the caller's actor ("cli") for
what was done to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.orm import Session

from worker.access import throttle
from worker.access.models import ConsoleSession, ConsoleUser
from worker.access.roles import Role
from worker.audit import client_address, record_audit
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import utcnow
from worker.runtime import Runtime

PASSWORD_MIN_CHARS = 10
PASSWORD_MAX_CHARS = 1024       # argon2 hashes any length; this bounds the work one request costs
EMAIL_MAX_CHARS = 254
_hasher = PasswordHasher()
#: verified against when the email is unknown, so an unknown email costs the same argon2 check as a wrong password
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
    created_at: datetime
    last_login_at: datetime | None

    @property
    def actor(self) -> str:
        return actor_of(self.email)

    @classmethod
    def of(cls, user: ConsoleUser) -> "Person":
        return cls(user.id, user.email, Role(user.role), user.disabled_at is not None, user.created_at,
                   user.last_login_at)


class UserNotFound(ButtoncastError):
    def __init__(self, email: str) -> None:
        super().__init__(f"no console user {email}")


class LoginRefused(ButtoncastError):
    """Wrong email or password, a disabled account, or too many failures from this address: the
    message says whether and when to try again (`retry_after_s`: not before that many seconds)."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyFailures(LoginRefused):
    """Refused before the password was checked: this address failed too often lately (HTTP 429)."""


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
        user = ConsoleUser(email=email, role=role_value.value, password_hash=_hasher.hash(password),
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
    """A new password; re-enables the account, forgets the failed logins at it (every address may try
    at once again), and ends its open sessions (one transaction of its own)."""
    check_password(password)
    with rt.session_factory.begin() as session:
        user = _user(session, email)
        user.password_hash = _hasher.hash(password)
        user.disabled_at = None
        throttle.forget_account(session, throttle.account_key(user.email))
        session.execute(sa.delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
        record_audit(session, actor, "user.password_reset", "console_user", user.id, email=user.email)
        return Person.of(user)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def log_in(rt: Runtime, email: str, password: str, now: datetime | None = None, *, address: str | None) -> Person:
    """The person, if the password is right, the account not disabled and `address` (the client's,
    as the server saw it) not made to wait by its recent failures; else LoginRefused.

    Known and unknown emails get the same answers, the same throttling and the same one argon2
    check. Three short transactions of its own: the try is counted (worker.access.throttle), the
    password checked outside any transaction, then the outcome written (refusals audited, with the
    address, before they are raised)."""
    now = now or utcnow()
    address = throttle.address_of(address)
    try:
        email = normalize_email(email)
    except MessageInvalid:
        raise LoginRefused("wrong email or password") from None
    limits = throttle.Limits.of(rt.settings)
    audited_from = client_address.set(address)
    try:
        with rt.session_factory.begin() as session:
            claimed, stored_hash = _count_the_try(session, email, address, now, limits)
        if isinstance(claimed, TooManyFailures):
            raise claimed
        ok = _verify(stored_hash or _DUMMY_HASH, (password or "")[:PASSWORD_MAX_CHARS])
        with rt.session_factory.begin() as session:
            outcome = _settle(session, email, stored_hash, password or "", ok, claimed, now)
    finally:
        client_address.reset(audited_from)
    if isinstance(outcome, LoginRefused):
        raise outcome
    return outcome


def _count_the_try(session: Session, email: str, address: str, now: datetime,
                   limits: throttle.Limits) -> tuple[throttle.Claim | TooManyFailures, str | None]:
    """The try counted and the account's stored hash (None: no such account); or, when this address
    must wait, the refusal (audited if the account exists) and no hash: no password is checked."""
    claimed = throttle.claim(session, address, throttle.account_key(email), now, limits)
    user = session.scalar(sa.select(ConsoleUser).where(ConsoleUser.email == email))
    if isinstance(claimed, throttle.Claim):
        return claimed, user.password_hash if user is not None else None
    if user is not None:
        record_audit(session, actor_of(email), "user.login_refused", "console_user", user.id, reason="slowed",
                     wait_s=math.ceil(claimed))
    return _too_many(claimed), None


def _too_many(wait_s: float) -> TooManyFailures:
    return TooManyFailures(f"too many failed logins from this address: try again in {throttle.in_words(wait_s)}",
                           retry_after_s=max(1, math.ceil(wait_s)))


def _wrong(claimed: throttle.Claim) -> LoginRefused:
    if claimed.wait_if_failed_s <= 0:
        return LoginRefused("wrong email or password")
    return LoginRefused(f"wrong email or password; try again in {throttle.in_words(claimed.wait_if_failed_s)}",
                        retry_after_s=max(1, math.ceil(claimed.wait_if_failed_s)))


def _settle(session: Session, email: str, checked_hash: str | None, password: str, ok: bool, claimed: throttle.Claim,
            now: datetime) -> Person | LoginRefused:
    """The outcome of a checked password: a login (the claimed try given back) or a refusal (it stays
    counted). The account is read again: disabled, or given a new password, while its old one was
    being checked, it is refused."""
    user = session.scalar(sa.select(ConsoleUser).where(ConsoleUser.email == email).with_for_update())
    if user is None or checked_hash is None:
        return _wrong(claimed)
    ok = ok and user.password_hash == checked_hash
    if user.disabled_at is not None:
        record_audit(session, actor_of(email), "user.login_refused", "console_user", user.id, reason="disabled")
        return LoginRefused("this account is disabled; ask an admin") if ok else _wrong(claimed)
    if not ok:
        record_audit(session, actor_of(email), "user.login_failed", "console_user", user.id,
                     wait_s=math.ceil(claimed.wait_if_failed_s))
        return _wrong(claimed)
    throttle.give_back(session, claimed)
    user.last_login_at = now
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    record_audit(session, actor_of(email), "user.logged_in", "console_user", user.id)
    return Person.of(user)
