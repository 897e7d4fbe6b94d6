"""`Idempotency-Key` with Stripe's semantics (and the IETF draft's status codes).

- The first request with a key runs; its answer is stored with a fingerprint of its body.
- The same key and the same body again: the stored answer, marked `Idempotent-Replayed: true`.
- The same key with a different body: refused, 422 (draft-ietf-httpapi-idempotency-key-header).
- A request that failed (validation or anything else) stores nothing: the key can be used again.

Two concurrent requests with one key: both try to insert the key's row; the loser sees the
winner's row (same fingerprint) and runs the operation too, which is itself idempotent on the same
key (the `messages.idempotency_key` unique index), so both get the one message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from worker.api.models import IdempotentRequest
from worker.enqueue import IDEMPOTENCY_KEY_MAX_CHARS
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import utcnow

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
    session_factory: sessionmaker[Session],
    key: str | None,
    body: Any,
    api_key_id: int | None,
    operation: Callable[[str | None], tuple[int, dict[str, Any]]],
) -> Outcome:
    """Run `operation(key)` once per key and body; see the module's docstring."""
    if key is None:
        return Outcome(*operation(None))
    check_key(key)
    request_hash = fingerprint(body)
    first = _claim(session_factory, key, request_hash, api_key_id)
    if first is not None and first.response is not None:
        return Outcome(first.status_code or 200, first.response, replayed=True)
    try:
        status_code, response = operation(key)
    except BaseException:
        if first is None:  # ours: a failed request leaves no trace (a concurrent twin keeps its own)
            _forget(session_factory, key)
        raise
    with session_factory.begin() as session:
        session.execute(sa.update(IdempotentRequest)
                        .where(IdempotentRequest.key == key, IdempotentRequest.response.is_(None))
                        .values(status_code=status_code, response=response))
    return Outcome(status_code, response, replayed=first is not None)


def _claim(session_factory: sessionmaker[Session], key: str, request_hash: str, api_key_id: int | None) -> IdempotentRequest | None:
    """Insert the key's row (None: this request is the first) or return the row already there."""
    for _ in range(3):
        existing = _get(session_factory, key)
        if existing is not None:
            if existing.request_hash != request_hash:
                raise IdempotencyKeyReused(f"{HEADER} {key!r} was already used with a different request body; "
                                           "use a new key for a new request")
            return existing
        try:
            with session_factory.begin() as session:
                session.add(IdempotentRequest(key=key, request_hash=request_hash, api_key_id=api_key_id, created_at=utcnow()))
            return None
        except IntegrityError:
            continue  # a concurrent request with this key inserted first: judge against its row
    raise ButtoncastError(f"{HEADER} {key!r} kept changing; try again")


def _get(session_factory: sessionmaker[Session], key: str) -> IdempotentRequest | None:
    with session_factory() as session:
        return session.get(IdempotentRequest, key)


def _forget(session_factory: sessionmaker[Session], key: str) -> None:
    with session_factory.begin() as session:
        session.execute(sa.delete(IdempotentRequest).where(IdempotentRequest.key == key, IdempotentRequest.response.is_(None)))
