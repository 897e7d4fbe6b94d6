"""Issue 25 item 10: console sessions have an idle timeout. A login lasted CONSOLE_SESSION_TTL_S (8 h)
however long it sat unused; now it also ends after CONSOLE_SESSION_IDLE_S (30 min) without a
request, and each request moves that on (sliding), never past the login's own lifetime. On SQLite
and Postgres.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.conftest import make_runtime, stack_env
from worker.access.models import ConsoleSession
from worker.access.sessions import COOKIE_NAME, SLIDE_STEP_S, resume_session, start_session
from worker.access.users import create_user
from worker.models import utcnow
from worker.runtime import install_runtime
from worker.settings import CONSOLE_SESSION_IDLE_S, CONSOLE_SESSION_TTL_S

PASSWORD = "a long enough password"
IDLE = timedelta(seconds=CONSOLE_SESSION_IDLE_S)


@pytest.fixture()
def rt(empty_database: str) -> Any:
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9"))
    yield runtime
    runtime.close()


def stored_expiry(rt: Any) -> Any:
    with rt.session_factory() as s:
        return s.scalar(sa.select(ConsoleSession.expires_at))


def test_item10_a_console_session_ends_after_its_idle_timeout_and_each_request_slides_it(rt: Any) -> None:
    person = create_user(rt, email="idle@example.com", role="viewer", password=PASSWORD, actor="cli")
    t0 = utcnow().replace(microsecond=0)
    token = start_session(rt, person, CONSOLE_SESSION_TTL_S, now=t0)
    # Given a login at t0, a request 20 minutes later keeps it and moves its idle deadline on
    assert resume_session(rt, token, now=t0 + timedelta(minutes=20)).email == "idle@example.com"
    assert stored_expiry(rt) == t0 + timedelta(minutes=20) + IDLE
    # ...so 25 idle minutes later (45 after login: past the first deadline) it still works
    assert resume_session(rt, token, now=t0 + timedelta(minutes=45)) is not None
    # ...but after CONSOLE_SESSION_IDLE_S without a request it is refused
    assert resume_session(rt, token, now=t0 + timedelta(minutes=45) + IDLE + timedelta(seconds=1)) is None


def test_item10_sliding_never_passes_the_logins_lifetime_and_writes_at_most_once_a_step(rt: Any) -> None:
    person = create_user(rt, email="busy@example.com", role="viewer", password=PASSWORD, actor="cli")
    t0 = utcnow().replace(microsecond=0)
    token = start_session(rt, person, CONSOLE_SESSION_TTL_S, now=t0)
    # a request a few seconds later gains less than SLIDE_STEP_S: nothing is written
    assert resume_session(rt, token, now=t0 + timedelta(seconds=SLIDE_STEP_S / 2)) is not None
    assert stored_expiry(rt) == t0 + IDLE
    # a person busy all day: a request every 20 minutes
    lifetime = timedelta(seconds=CONSOLE_SESSION_TTL_S)
    at = t0
    while at + timedelta(minutes=20) < t0 + lifetime:
        at += timedelta(minutes=20)
        assert resume_session(rt, token, now=at) is not None
    assert stored_expiry(rt) == t0 + lifetime
    assert resume_session(rt, token, now=t0 + lifetime + timedelta(seconds=1)) is None


def test_item10_the_console_sends_an_idle_session_to_the_login_form(rt: Any) -> None:
    person = create_user(rt, email="page@example.com", role="viewer", password=PASSWORD, actor="cli")
    now = utcnow()
    idle = start_session(rt, person, CONSOLE_SESSION_TTL_S, now=now - IDLE - timedelta(minutes=1))
    fresh = start_session(rt, person, CONSOLE_SESSION_TTL_S, now=now - timedelta(minutes=10))
    install_runtime(rt)
    try:
        from worker.asgi import create_app

        with TestClient(create_app(), follow_redirects=False) as client:
            client.cookies.set(COOKIE_NAME, idle)
            refused = client.get("/")
            assert refused.status_code in (302, 303, 307) and "/login" in refused.headers["location"]
            client.cookies.set(COOKIE_NAME, fresh)
            served = client.get("/")
            assert served.status_code == 200, served.text[:500]
    finally:
        install_runtime(None)
    # the page view moved the fresh session's idle deadline to about now + CONSOLE_SESSION_IDLE_S
    with rt.session_factory() as s:
        expiries = sorted(s.scalars(sa.select(ConsoleSession.expires_at)))
    assert expiries[-1] >= now + IDLE - timedelta(seconds=5)
