"""API keys: create (shown once), list, revoke, and authenticate a presented key.

A key reads `bc_<prefix>_<secret>`: the 8-character prefix is public and finds the row; the secret
is 32 random bytes (256 bits), so a plain sha256 of the whole key is a sound stored hash (no slow
password hash is needed for a high-entropy key, and authentication stays one indexed lookup and one
hash). The hash comparison is constant-time; an unknown prefix costs the same hash as a known one.
A key's last use is written when the database verifies it, at most once per LAST_USED_RESOLUTION_S
per key and process, so a busy client costs no write per request.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.access.models import ApiKey
from worker.audit import AuditEvent, record_audit
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import UTCDateTime, utcnow
from worker.runtime import Runtime

log = logging.getLogger(__name__)
KEY_PREFIX = "bc"
PREFIX_CHARS = 8
SECRET_BYTES = 32
NAME_MAX_CHARS = 100
LAST_USED_RESOLUTION_S = 60.0   # "last used" is this precise: one write per key and process per minute at most
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()
_BY_PREFIX = sa.select(ApiKey.id, ApiKey.key_hash, ApiKey.name, ApiKey.scope, ApiKey.revoked_at).where(
    ApiKey.prefix == sa.bindparam("prefix"))
_TOUCH = sa.update(ApiKey).where(ApiKey.id == sa.bindparam("key_id")).values(last_used_at=sa.bindparam("now", type_=UTCDateTime()))


class Scope(str, enum.Enum):
    """What a key may do. Each scope includes the ones below it: admin > campaigns > send."""

    SEND = "send"            # messages: send, and read back the ones it sent
    CAMPAIGNS = "campaigns"  # campaigns and messages
    ADMIN = "admin"          # everything: retry, limits, contacts, keys

    @property
    def rank(self) -> int:
        return {"send": 0, "campaigns": 1, "admin": 2}[self.value]

    def allows(self, needed: "Scope") -> bool:
        return self.rank >= needed.rank

    def __str__(self) -> str:
        return self.value


class ApiKeyNotFound(ButtoncastError):
    def __init__(self, key_id: int) -> None:
        super().__init__(f"no API key {key_id}")


@dataclass(frozen=True)
class Principal:
    """Who made a request: the key's id, public prefix, name and scope (never the key itself)."""

    key_id: int
    prefix: str
    name: str
    scope: Scope

    @property
    def actor(self) -> str:
        """How the audit trail names this key."""
        return f"apikey:{self.prefix}:{self.name}"

    @property
    def reads_only_its_own(self) -> bool:
        """A `send` key reads only the messages it created (not other applications' texts, keys or
        recipients); `campaigns` and `admin` keys read every message."""
        return not self.scope.allows(Scope.CAMPAIGNS)


@dataclass(frozen=True)
class KeyInfo:
    id: int
    prefix: str
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None
    created_by: str | None = None    # the audit trail's actor of api_key.created (None: not recorded)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(rt: Runtime, *, name: str, scope: str, actor: str | None = None) -> tuple[KeyInfo, str]:
    """Store a new key's hash (in its own transaction); returns its info and the key itself, which is
    never retrievable again."""
    problems = []
    if not isinstance(name, str) or not name.strip():
        problems.append(FieldProblem("name", "is required"))
    elif len(name.strip()) > NAME_MAX_CHARS:
        problems.append(FieldProblem("name", f"is {len(name.strip())} characters; the limit is {NAME_MAX_CHARS}"))
    if scope not in {s.value for s in Scope}:
        problems.append(FieldProblem("scope", f"{scope!r} is not one of {', '.join(s.value for s in Scope)}"))
    if problems:
        raise MessageInvalid(problems)
    with rt.session_factory.begin() as session:
        while True:
            prefix = secrets.token_hex(PREFIX_CHARS // 2)
            if session.scalar(sa.select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
                break
        key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
        row = ApiKey(prefix=prefix, key_hash=_hash(key), name=name.strip(), scope=scope, created_at=utcnow())
        session.add(row)
        session.flush()
        record_audit(session, actor, "api_key.created", "api_key", row.id, name=row.name, scope=scope)
        return _info(row), key


def list_keys(session: Session) -> list[KeyInfo]:
    """Every key in id order, with who created it (from the audit trail) and its last use."""
    created_by = (sa.select(AuditEvent.actor)
                  .where(AuditEvent.subject_type == "api_key", AuditEvent.subject_id == ApiKey.id,
                         AuditEvent.action == "api_key.created")
                  .order_by(AuditEvent.id).limit(1).scalar_subquery())
    rows = session.execute(sa.select(ApiKey, created_by).order_by(ApiKey.id)).all()
    return [_info(row, actor) for row, actor in rows]


def revoke_key(rt: Runtime, key_id: int, *, actor: str | None = None) -> KeyInfo:
    """Revoke a key, in its own transaction (idempotent: revoking twice keeps the first time). Its
    requests get 401 at once."""
    with rt.session_factory.begin() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise ApiKeyNotFound(key_id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            record_audit(session, actor, "api_key.revoked", "api_key", row.id, name=row.name)
        return _info(row)


def authenticate(connect: Callable[[], AbstractContextManager[sa.Connection]], presented: str | None) -> Principal | None:
    """The principal a presented key belongs to, or None (unknown, malformed or revoked key).

    `connect`: a runtime's `single_statements` (one statement, one round trip)."""
    if not presented or len(presented) > 128:
        return None
    parts = presented.split("_", 2)
    prefix = parts[1] if len(parts) == 3 and parts[0] == KEY_PREFIX else ""
    row = None
    if len(prefix) == PREFIX_CHARS:
        with connect() as conn:
            row = conn.execute(_BY_PREFIX, {"prefix": prefix}).one_or_none()
    expected = row.key_hash if row is not None else _DUMMY_HASH
    matches = hmac.compare_digest(_hash(presented), expected)
    if row is None or not matches or row.revoked_at is not None:
        return None
    return Principal(key_id=row.id, prefix=prefix, name=row.name, scope=Scope(row.scope))


class VerifiedKeys:
    """A short per-process memory of keys already verified, so a busy client costs no database
    round trip per request. Keyed by the key's sha256 (the key itself is never kept); an entry
    lives `ttl_s` seconds, so a revoked key is refused at most that long after `apikey revoke`.
    Unknown keys are never remembered: every bad guess is checked against the database."""

    MAX_ENTRIES = 10_000

    def __init__(self, connect: Callable[[], AbstractContextManager[sa.Connection]], ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connect, self.ttl_s, self.clock = connect, ttl_s, clock
        self._seen: dict[str, tuple[float, Principal]] = {}
        self._used: dict[int, float] = {}    # key id -> when its last use was written (clock)

    def lookup(self, presented: str) -> Principal | None:
        """The cached principal, or None if the key must be checked (what `authenticate` does)."""
        if self.ttl_s <= 0:
            return None
        entry = self._seen.get(_hash(presented))
        return entry[1] if entry is not None and entry[0] > self.clock() else None

    def verify(self, presented: str | None) -> Principal | None:
        """`authenticate`, remembering a success for `ttl_s` seconds."""
        principal = authenticate(self.connect, presented)
        if principal is not None:
            self._record_use(principal.key_id)
        if principal is not None and self.ttl_s > 0 and presented:
            if len(self._seen) >= self.MAX_ENTRIES:
                self._seen.clear()
            self._seen[_hash(presented)] = (self.clock() + self.ttl_s, principal)
        return principal

    def _record_use(self, key_id: int) -> None:
        now = self.clock()
        last = self._used.get(key_id)
        if last is not None and now - last < LAST_USED_RESOLUTION_S:
            return
        if len(self._used) >= self.MAX_ENTRIES:
            self._used.clear()
        self._used[key_id] = now
        try:
            with self.connect() as conn:
                conn.execute(_TOUCH, {"key_id": key_id, "now": utcnow()})
        except Exception as exc:  # noqa: BLE001 - "last used" must never refuse a valid key
            log.warning("could not record the use of API key %s (%s)", key_id, type(exc).__name__)


def _info(row: ApiKey, created_by: str | None = None) -> KeyInfo:
    return KeyInfo(row.id, row.prefix, row.name, row.scope, row.created_at, row.revoked_at, row.last_used_at, created_by)
