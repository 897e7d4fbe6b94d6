"""Probes of what a process depends on: the database and Redis answer, or say why not.

The API's `/readyz` and the console's health page both ask through here.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import sqlalchemy as sa

from worker.runtime import Runtime

REDIS_TIMEOUT_S = 2.0
T = TypeVar("T")


def database_state(rt: Runtime) -> str:
    try:
        with rt.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; the type says which
        return f"unreachable ({type(exc).__name__})"


def _ask_redis(rt: Runtime, question: Callable[[Any], T]) -> T:
    """One short-lived connection (REDIS_TIMEOUT_S), one question, closed again."""
    import redis

    client = redis.Redis.from_url(rt.settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
    try:
        return question(client)
    finally:
        client.close()


def redis_state(rt: Runtime) -> str:
    if not rt.settings.redis_url:
        return "not configured (embedded mode)"
    try:
        _ask_redis(rt, lambda client: client.ping())
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"unreachable ({type(exc).__name__})"


def beat_state(rt: Runtime) -> str:
    """Whether one beat holds the lease (worker.beatlock), in words for the console's health page."""
    if not rt.settings.redis_url:
        return "embedded mode: beat runs inside `buttoncast run`"
    from worker.beatlock import lease_left_s

    try:
        left = _ask_redis(rt, lease_left_s)
    except Exception as exc:  # noqa: BLE001 - the page says Redis is unreachable, whatever the reason
        return f"unknown: Redis unreachable ({type(exc).__name__})"
    return f"ticking (its lease is renewed; {left:.0f} s left)" if left is not None else "NOT ticking: no beat holds the lease"
