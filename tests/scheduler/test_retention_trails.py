"""Issue 25 item 10: the trails have a retention too. audit_events (one row per failed login) and
contact_events grew without bound; beat's daily prune now deletes them past AUDIT_RETENTION_DAYS and
CONSENT_HISTORY_RETENTION_DAYS, keeping each thing's creation record and each contact's newest
consent event, and it deletes expired console sessions. On SQLite and Postgres.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from scheduler.retention import prune_expired
from tests.conftest import make_runtime, stack_env
from worker.access.models import ConsoleSession
from worker.access.sessions import start_session
from worker.access.users import create_user
from worker.audit import AuditEvent
from worker.cli import main
from worker.models import Contact, ContactEvent, utcnow
from worker.settings import AUDIT_RETENTION_DAYS, CONSENT_HISTORY_RETENTION_DAYS

NOW = utcnow().replace(microsecond=0)
PASSWORD = "a long enough password"


def runtime_for(database_url: str, **settings: str) -> Any:
    return make_runtime(stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9", **settings))


@pytest.fixture()
def rt(empty_database: str) -> Any:
    runtime = runtime_for(empty_database)
    yield runtime
    runtime.close()


def add_audit(rt: Any, action: str, at: datetime) -> int:
    with rt.session_factory.begin() as s:
        row = AuditEvent(actor="user:eve@example.com", action=action, subject_type="user", subject_id=1, at=at)
        s.add(row)
        s.flush()
        return row.id


def add_consent(rt: Any, phone: str, *events: tuple[str, datetime]) -> list[int]:
    with rt.session_factory.begin() as s:
        if s.get(Contact, phone) is None:
            s.add(Contact(phone=phone))
            s.flush()
        rows = [ContactEvent(phone=phone, action=action, source="keyword", at=at) for action, at in events]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def ids(rt: Any, model: Any) -> set[int]:
    with rt.session_factory() as s:
        return set(s.scalars(sa.select(model.id)))


def test_item10_the_daily_prune_deletes_old_audit_rows_but_keeps_who_created_what(rt: Any) -> None:
    # Given: a year and more of failed logins, one older key creation, and yesterday's failures
    old = NOW - timedelta(days=AUDIT_RETENTION_DAYS + 5)
    stale = [add_audit(rt, "user.login_failed", old) for _ in range(3)] + [add_audit(rt, "campaign.paused", old)]
    created = add_audit(rt, "api_key.created", old)
    recent = [add_audit(rt, "user.login_failed", NOW - timedelta(days=1))]
    # When: beat's prune job runs
    prune_expired(rt)
    # Then: only the old non-creation rows are gone
    left = ids(rt, AuditEvent)
    assert not left & set(stale)
    assert left == {created, *recent}


def test_item10_the_daily_prune_deletes_old_consent_history_but_keeps_each_contacts_newest_event(rt: Any) -> None:
    # Given: a contact who opted out and back in long ago, one whose only event is old, and a recent one
    long_ago = NOW - timedelta(days=CONSENT_HISTORY_RETENTION_DAYS + 30)
    first_out, back_in = add_consent(rt, "966501000001", ("opt_out", long_ago), ("opt_in", long_ago + timedelta(days=1)))
    [only] = add_consent(rt, "966501000002", ("opt_out", long_ago))
    # an old STOP that arrived after a newer START (kept in history, "no change"): older by its own time
    late_old, newest = add_consent(rt, "966501000003", ("opt_out", long_ago), ("opt_in", NOW - timedelta(days=3)))
    # When: beat's prune job runs
    prune_expired(rt)
    # Then: the older events go; each contact's newest one, the record of its consent now, stays
    assert ids(rt, ContactEvent) == {back_in, only, newest}
    assert first_out not in ids(rt, ContactEvent) and late_old not in ids(rt, ContactEvent)


def test_item10_a_period_of_zero_keeps_a_trail_for_ever(empty_database: str) -> None:
    rt = runtime_for(empty_database, AUDIT_RETENTION_DAYS="0", CONSENT_HISTORY_RETENTION_DAYS="0")
    try:
        old = NOW - timedelta(days=3650)
        audit = add_audit(rt, "user.login_failed", old)
        consent = add_consent(rt, "966501000004", ("opt_out", old), ("opt_in", old + timedelta(days=1)))
        prune_expired(rt)
        assert ids(rt, AuditEvent) == {audit} and ids(rt, ContactEvent) == set(consent)
    finally:
        rt.close()


def test_item10_the_prune_command_says_what_it_deletes_from_the_trails(rt: Any, empty_database: str) -> None:
    add_audit(rt, "user.login_failed", NOW - timedelta(days=AUDIT_RETENTION_DAYS + 1))
    env = stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9")
    dry = CliRunner().invoke(main, ["prune", "--dry-run"], env=env, catch_exceptions=False)
    assert dry.exit_code == 0 and "audit_events: would delete 1" in dry.output and "contact_events: would delete 0" in dry.output
    assert len(ids(rt, AuditEvent)) == 1
    real = CliRunner().invoke(main, ["prune"], env=env, catch_exceptions=False)
    assert real.exit_code == 0 and "audit_events: deleted 1" in real.output
    assert not ids(rt, AuditEvent)


def test_item10_the_daily_prune_deletes_expired_console_sessions(rt: Any) -> None:
    # Given: a session left idle past its idle timeout, and a live one
    person = create_user(rt, email="s@example.com", role="viewer", password=PASSWORD, actor="cli")
    live = start_session(rt, person, ttl_s=3600)
    start_session(rt, person, ttl_s=3600, now=NOW - timedelta(hours=2))   # (a login prunes only what expired before it)
    # When: beat's prune job runs
    prune_expired(rt)
    # Then: only the live session is left
    with rt.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(ConsoleSession)) == 1
        assert s.scalar(sa.select(ConsoleSession.expires_at)) > utcnow()
    assert live
