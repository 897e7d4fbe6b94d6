"""Shared fixtures: real services, one private database and Redis db index per test run.

Under CI=true a missing Postgres or Redis fails the run; elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("BUTTONCAST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE_URL = os.environ.get("BUTTONCAST_TEST_REDIS_URL", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RUN_ID = uuid.uuid4().hex[:10]


def service_missing(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if IN_CI:
        pytest.fail(message + "; CI=true requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL whose db index this run holds exclusively (a lock key in db 0); flushed after."""
    import redis

    try:
        admin = redis.Redis.from_url(REDIS_BASE_URL + "/0", socket_timeout=3)
        admin.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means the service is unusable
        service_missing("Redis at " + REDIS_BASE_URL, exc)
    for index in range(1, 16):
        lock = f"buttoncast:test-db-lock:{index}"
        if admin.set(lock, RUN_ID, nx=True, ex=6 * 3600):
            break
    else:
        pytest.fail("no free Redis db index (1-15) for this test run")
    url = f"{REDIS_BASE_URL}/{index}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        if admin.get(lock) == RUN_ID.encode():
            admin.delete(lock)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh Postgres database for this run, dropped at the end."""
    import sqlalchemy as sa

    try:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        service_missing("PostgreSQL at " + PG_ADMIN_URL, exc)
    name = f"buttoncast_test_{RUN_ID}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
