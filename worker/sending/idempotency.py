"""`Idempotency-Key` with Stripe's semantics (and the IETF draft's status codes), per API key, for 24 hours.

- Keys are scoped per caller: each API key has its own (`apikey:<id>`), so two applications may use
  the same key without meeting; `buttoncast send --idempotency-key`, `enqueue_message(...,
  idempotency_key=...)` and the broker task share a scope of their own (the key as given, kept on
  the message).
- The first request with a key runs; its answer is stored with a fingerprint of its body.
- The same key and the same body again: the stored answer, marked `Idempotent-Replayed: true`.
- The same key with a different body: refused, 422 (draft-ietf-httpapi-idempotency-key-header).
- A request that failed (validation or anything else) stores nothing: the key can be used again.
- A key is remembered for KEY_TTL (24 hours, Stripe's period) from its first use; after that the
  same key starts a new request. Expired rows are deleted by the retention job
  (scheduler.retention.prune_idempotency_keys) and are ignored until then.

Two concurrent requests with one key: both try to insert the key's row (INSERT ... ON CONFLICT DO
NOTHING); the loser sees the winner's row (same fingerprint) and runs the operation too, with the
same message key (`message_key`: the scope, the key and the row's creation time), which is itself
idempotent (the `messages.idempotency_key` unique index), so both get the one message. A new row
for an expired key has a new creation time, hence a new message key: a new message.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from worker.access.models import IdempotentRequest
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import utcnow
from worker.runtime import Runtime
from worker.sending.enqueue import IDEMPOTENCY_KEY_MAX_CHARS

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_TTL = timedelta(hours=24)
IDEMPOTENCY_PROMISE = (
    f"`{HEADER}` on POST /v1/messages is scoped to the API key that sends it and remembered for 24 hours from its "
    "first use: within that time the same key and body replay the first answer (`Idempotent-Replayed: true`) and "
    "another body is refused with 422; after it, the same key makes a new request."
)
_CLAIM_TRIES = 5
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_STORED = re.compile(r"^apikey:\d+:\d+:(.*)$", re.DOTALL)


class IdempotencyKeyReused(ButtoncastError):
    """The key was first used with a different body."""


@dataclass(frozen=True)
class Outcome:
    status_code: int
    response: dict[str, Any]
    replayed: bool = False


def fingerprint(body: Any) -> str:
    """sha256 of the body as canonical JSON: key order and whitespace do not make a different request."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def check_key(key: str) -> str:
    if not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
        raise MessageInvalid([FieldProblem(HEADER, f"must be a non-empty string of at most {IDEMPOTENCY_KEY_MAX_CHARS} characters")])
    return key


def api_scope(api_key_id: int) -> str:
    """The scope of an API key's Idempotency-Keys."""
    return f"apikey:{api_key_id}"


def message_key(scope: str, key: str, first_used_at: datetime) -> str:
    """The key stored on the message an API request creates: unique per caller and per 24-hour life
    of the key, so it meets neither another caller's key nor the same key after it expired. Fits
    the column: a key too long to carry whole is carried as its sha256."""
    stamp = (first_used_at - _EPOCH) // timedelta(microseconds=1)
    stored = f"{scope}:{stamp}:{key}"
    if len(stored) > IDEMPOTENCY_KEY_MAX_CHARS:
        stored = f"{scope}:{stamp}:sha256:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"
    return stored


def caller_key(stored: str | None) -> str | None:
    """The Idempotency-Key as its caller sent it, from the key stored on the message (`message_key`)."""
    if stored is None:
        return None
    match = _STORED.match(stored)
    return match.group(1) if match else stored


def run_once(
    runtime: Runtime,
    key: str | None,
    body: Any,
    api_key_id: int,
    operation: Callable[[str | None], tuple[int, dict[str, Any]]],
    *,
    now: datetime | None = None,
) -> Outcome:
    """Run `operation(message_key)` once per API key, key and body; see the module's docstring.

    Each statement here is one round trip (`runtime.single_statements`: autocommit on Postgres)."""
    if key is None:
        return Outcome(*operation(None))
    check_key(key)
    scope, request_hash = api_scope(api_key_id), fingerprint(body)
    table = IdempotentRequest.__table__
    mine, first = _claim(runtime, table, scope, key, request_hash, api_key_id, now or utcnow())
    if first.response is not None:
        return Outcome(first.status_code or 200, first.response, replayed=True)
    this_key = (table.c.scope == scope) & (table.c.key == key) & (table.c.created_at == first.created_at)
    try:
        status_code, response = operation(message_key(scope, key, first.created_at))
    except BaseException:
        if mine:  # a failed request leaves no trace (a concurrent twin keeps its own)
            with runtime.single_statements() as conn:
                conn.execute(sa.delete(table).where(this_key, table.c.response.is_(None)))
        raise
    with runtime.single_statements() as conn:
        conn.execute(sa.update(table).where(this_key, table.c.response.is_(None))
                     .values(status_code=status_code, response=response))
    return Outcome(status_code, response, replayed=not mine)


def _claim(runtime: Runtime, table: sa.Table, scope: str, key: str, request_hash: str, api_key_id: int,
           now: datetime) -> tuple[bool, sa.Row]:
    """(True, the new row) if this request is the first with the key, else (False, the live row)."""
    insert = postgresql.insert if runtime.engine.dialect.name == "postgresql" else sqlite.insert
    claim = (insert(table).values(scope=scope, key=key, request_hash=request_hash, api_key_id=api_key_id,
                                  created_at=now, expires_at=now + KEY_TTL)
             .on_conflict_do_nothing(index_elements=["scope", "key"])
             .returning(table.c.request_hash, table.c.status_code, table.c.response, table.c.created_at))
    existing_row = (sa.select(table.c.request_hash, table.c.status_code, table.c.response, table.c.created_at,
                              table.c.expires_at).where(table.c.scope == scope, table.c.key == key))
    for _ in range(_CLAIM_TRIES):
        with runtime.single_statements() as conn:
            inserted = conn.execute(claim).first()
            if inserted is not None:
                return True, inserted
            existing = conn.execute(existing_row).first()
            if existing is not None and existing.expires_at <= now:   # expired: forget it, then claim again
                conn.execute(sa.delete(table).where(table.c.scope == scope, table.c.key == key,
                                                    table.c.expires_at <= now))
                continue
        if existing is None:  # the first request failed and let the key go meanwhile: try again as the first
            continue
        if existing.request_hash != request_hash:
            raise IdempotencyKeyReused(f"{HEADER} {key!r} was already used with a different request body; "
                                       "use a new key for a new request")
        return False, existing
    raise IdempotencyKeyReused(f"{HEADER} {key!r} is being used by another request right now; try again")
