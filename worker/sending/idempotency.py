"""`Idempotency-Key` with Stripe's semantics (and the IETF draft's status codes).

- The first request with a key runs; its answer is stored with a fingerprint of its body.
- The same key and the same body again: the stored answer, marked `Idempotent-Replayed: true`.
- The same key with a different body: refused, 422 (draft-ietf-httpapi-idempotency-key-header).
- A request that failed (validation or anything else) stores nothing: the key can be used again.

Two concurrent requests with one key: both try to insert the key's row (INSERT ... ON CONFLICT DO
NOTHING); the loser sees the winner's row (same fingerprint) and runs the operation too, which is itself idempotent on the same
key (the `messages.idempotency_key` unique index), so both get the one message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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


def run_once(
    runtime: Runtime,
    key: str | None,
    body: Any,
    api_key_id: int | None,
    operation: Callable[[str | None], tuple[int, dict[str, Any]]],
) -> Outcome:
    """Run `operation(key)` once per key and body; see the module's docstring.

    Each statement here is one round trip (`runtime.single_statements`: autocommit on Postgres)."""
    if key is None:
        return Outcome(*operation(None))
    check_key(key)
    request_hash = fingerprint(body)
    table = IdempotentRequest.__table__
    first = _claim(runtime, table, key, request_hash, api_key_id)
    if first is not None and first.response is not None:
        return Outcome(first.status_code or 200, first.response, replayed=True)
    try:
        status_code, response = operation(key)
    except BaseException:
        if first is None:  # ours: a failed request leaves no trace (a concurrent twin keeps its own)
            with runtime.single_statements() as conn:
                conn.execute(sa.delete(table).where(table.c.key == key, table.c.response.is_(None)))
        raise
    with runtime.single_statements() as conn:
        conn.execute(sa.update(table).where(table.c.key == key, table.c.response.is_(None))
                     .values(status_code=status_code, response=response))
    return Outcome(status_code, response, replayed=first is not None)


def _claim(runtime: Runtime, table: sa.Table, key: str, request_hash: str, api_key_id: int | None) -> sa.Row | None:
    """Insert the key's row (None: this request is the first) or return the row already there."""
    insert = postgresql.insert if runtime.engine.dialect.name == "postgresql" else sqlite.insert
    claim = (insert(table).values(key=key, request_hash=request_hash, api_key_id=api_key_id, created_at=utcnow())
             .on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key))
    with runtime.single_statements() as conn:
        if conn.execute(claim).first() is not None:
            return None
        existing = conn.execute(sa.select(table.c.request_hash, table.c.status_code, table.c.response)
                                .where(table.c.key == key)).first()
    if existing is None:  # the first request failed and let the key go meanwhile: try again as the first
        return _claim(runtime, table, key, request_hash, api_key_id)
    if existing.request_hash != request_hash:
        raise IdempotencyKeyReused(f"{HEADER} {key!r} was already used with a different request body; "
                                   "use a new key for a new request")
    return existing
