"""Issue 12 item 15: nothing grows without bound. `buttoncast prune` and the daily beat job delete old
attempts, message_events and webhook_events in batches, never what a message still needs; the sweep
only rescans unmatched webhook events young enough to matter. On SQLite and Postgres.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from scheduler.retention import prune, prune_expired
from tests.conftest import make_runtime, stack_env
from worker.cli import main
from worker.models import Attempt, Message, MessageEvent, utcnow
from worker.webhooks import WebhookEvent, match_pending_events

CONTENT = {"body_text": "Hi", "buttons": [{"id": "yes", "title": "Yes"}]}
NOW = utcnow().replace(microsecond=0)
OLD = NOW - timedelta(days=40)
YOUNG = NOW - timedelta(days=2)
_phones = iter(range(10_000_000, 99_999_999))
_keys = iter(range(1, 10**9))


@pytest.fixture()
def rt(empty_database: str) -> Any:
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9"))
    yield runtime
    runtime.close()


def add_message(rt: Any, status: str, *, wamid: str | None = None, sent_at: datetime | None = None) -> int:
    with rt.session_factory.begin() as s:
        m = Message(phone_number_id="123456", phone=f"9665{next(_phones)}", content=CONTENT, status=status,
                    vendor_message_id=wamid, sent_at=sent_at)
        s.add(m)
        s.flush()
        return m.id


def add_history(rt: Any, message_id: int, at: datetime, outcome: str = "transient") -> None:
    with rt.session_factory.begin() as s:
        s.add(Attempt(message_id=message_id, started_at=at, duration_ms=5, outcome=outcome))
        s.add(MessageEvent(message_id=message_id, at=at, from_status="queued", to_status="sending", reason="test", actor="test"))


def add_event(rt: Any, received_at: datetime, *, matched: bool, wamid: str = "wamid.other") -> int:
    body = ('{"event":"message.status.updated","data":{"message_id":"%s","status":"delivered",'
            '"timestamp":"2026-01-01T10:00:00Z"}}' % wamid)
    with rt.session_factory.begin() as s:
        e = WebhookEvent(dedupe_key=f"{next(_keys):064d}", event_type="message.status.updated", kind="status",
                         vendor_message_id=wamid, status="delivered", occurred_at=received_at,
                         received_at=received_at, matched=matched, body=body)
        s.add(e)
        s.flush()
        return e.id


def counts(rt: Any, message_id: int) -> tuple[int, int]:
    with rt.session_factory() as s:
        return (s.scalar(sa.select(sa.func.count()).where(Attempt.message_id == message_id)),
                s.scalar(sa.select(sa.func.count()).where(MessageEvent.message_id == message_id)))


def event_ids(rt: Any) -> set[int]:
    with rt.session_factory() as s:
        return set(s.scalars(sa.select(WebhookEvent.id)))


def test_item15_prune_deletes_old_history_of_final_messages_in_batches_and_keeps_what_is_needed(rt: Any) -> None:
    """Issue 12 item 15: old history of final messages goes, batch by batch; a non-final message's
    history, young rows, the `sent` attempt that guards a failed message from retry, and every
    message row stay."""
    done = add_message(rt, "sent")
    for _ in range(3):
        add_history(rt, done, OLD)
    add_history(rt, done, YOUNG)
    in_flight = add_message(rt, "queued")
    add_history(rt, in_flight, OLD)
    guarded = add_message(rt, "unknown")
    add_history(rt, guarded, OLD, outcome="sent")

    dry = prune(rt, older_than=timedelta(days=30), dry_run=True, now=NOW)
    assert dry.deleted == {"attempts": 3, "message_events": 4, "webhook_events": 0, "hook_outbox": 0}
    assert counts(rt, done) == (4, 4)   # the dry run deleted nothing

    report = prune(rt, older_than=timedelta(days=30), now=NOW, batch_rows=2)
    assert report.deleted == dry.deleted
    assert counts(rt, done) == (1, 1) and counts(rt, in_flight) == (1, 1) and counts(rt, guarded) == (1, 0)
    with rt.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Message)) == 3
    assert prune(rt, older_than=timedelta(days=30), now=NOW).total == 0


def test_item15_prune_keeps_unmatched_webhook_events_the_sweep_may_still_match(rt: Any) -> None:
    """Issue 12 item 15: old matched events and old unmatched ones past the match window go; an
    unmatched event inside the window stays even when it is older than the retention period."""
    old_matched = add_event(rt, OLD, matched=True)
    old_unmatched = add_event(rt, OLD, matched=False)
    recent_unmatched = add_event(rt, NOW - timedelta(hours=3), matched=False)
    young = add_event(rt, YOUNG, matched=True)
    report = prune(rt, older_than=timedelta(hours=1), now=NOW, match_window_s=6 * 3600)
    assert report.deleted["webhook_events"] == 3
    assert event_ids(rt) == {recent_unmatched}
    assert {old_matched, old_unmatched, young}.isdisjoint(event_ids(rt))


def test_item15_sweep_matching_ignores_unmatched_events_older_than_the_window(rt: Any) -> None:
    """Issue 12 item 15: an event older than WEBHOOK_MATCH_WINDOW_S is no longer rescanned (it stays
    stored); one inside the window is matched as before."""
    add_message(rt, "sent", wamid="wamid.late", sent_at=NOW)
    stale = add_event(rt, NOW - timedelta(days=3), matched=False, wamid="wamid.late")
    with rt.session_factory.begin() as s:
        assert match_pending_events(s, window_s=86400, now=NOW) == 0
    fresh = add_event(rt, NOW - timedelta(minutes=5), matched=False, wamid="wamid.late")
    with rt.session_factory.begin() as s:
        assert match_pending_events(s, window_s=86400, now=NOW) == 1
    with rt.session_factory() as s:
        assert s.get(WebhookEvent, stale).matched is False and s.get(WebhookEvent, fresh).matched is True


def test_item15_prune_command_prints_per_table_and_dry_run_deletes_nothing(rt: Any, database_url: str) -> None:
    """Issue 12 item 15: `buttoncast prune [--older-than 30d] [--dry-run]` says what it deleted or would."""
    done = add_message(rt, "failed")
    add_history(rt, done, utcnow() - timedelta(days=40))
    env = stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9")
    dry = CliRunner().invoke(main, ["prune", "--older-than", "30d", "--dry-run"], env=env, catch_exceptions=False)
    assert dry.exit_code == 0 and "attempts: would delete 1" in dry.output and "webhook_events: would delete 0" in dry.output
    assert counts(rt, done) == (1, 1)
    real = CliRunner().invoke(main, ["prune"], env=env, catch_exceptions=False)   # RETENTION_DAYS=30 by default
    assert real.exit_code == 0 and "message_events: deleted 1" in real.output
    assert counts(rt, done) == (0, 0)
    bad = CliRunner().invoke(main, ["prune", "--older-than", "soon"], env=env)
    assert bad.exit_code == 2 and "not an age" in bad.output


def test_item15_beat_job_uses_retention_days_and_zero_keeps_everything(database_url: str) -> None:
    """Issue 12 item 15: the daily job prunes with RETENTION_DAYS; RETENTION_DAYS=0 keeps for ever."""
    from worker.celery_app import PRUNE_INTERVAL_S, create_celery
    from worker.queues import TASK_PRUNE

    for days, expected in (("0", 1), ("30", 0)):
        rt = make_runtime(stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9", RETENTION_DAYS=days))
        try:
            done = add_message(rt, "sent")
            add_history(rt, done, utcnow() - timedelta(days=31))
            prune_expired(rt)
            assert counts(rt, done)[0] == expected
            schedule = create_celery(rt.settings).conf.beat_schedule["prune"]
            assert schedule["task"] == TASK_PRUNE and schedule["schedule"] == PRUNE_INTERVAL_S == 86400
        finally:
            rt.close()
