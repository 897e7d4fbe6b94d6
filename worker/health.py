"""Probes of what a process depends on: the database and Redis answer, or say why not.

The API's `/readyz` and the console's health page both ask through here.
"""

from __future__ import annotations

import sqlalchemy as sa

from worker.runtime import Runtime

REDIS_TIMEOUT_S = 2.0


def database_state(rt: Runtime) -> str:
    try:
        with rt.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; the type says which
        return f"unreachable ({type(exc).__name__})"


def redis_state(rt: Runtime) -> str:
    if not rt.settings.redis_url:
        return "not configured (embedded mode)"
    import redis

    try:
        client = redis.Redis.from_url(rt.settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"unreachable ({type(exc).__name__})"
