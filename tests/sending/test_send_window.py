"""Issue 12 item 8: the daily send window is checked when sending, not only when dispatching.

A task that waited on a persistent broker while the window closed (workers down overnight) must not
go out at 03:00 when the workers come back: the message goes back to the database, due when the
window next opens, with no attempt counted. On SQLite and Postgres, send.send_message called directly.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from scheduler import dispatcher
from scheduler.dispatcher import dispatch_tick
from tests.conftest import make_runtime, stack_env
from worker.models import Attempt, Campaign, Message, utcnow
from worker.sending.client import AttemptRecord, SendResult
from worker.sending.send import Outcome, send_deps, send_message

CONTENT = {"body_text": "Hi", "buttons": [{"id": "a", "title": "A"}]}
RIYADH = ZoneInfo("Asia/Riyadh")


class RecordingClient:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, message, phone_number_id, *, before_request=None, on_attempt=None) -> SendResult:  # noqa: ANN001
        before_request()
        self.sent.append(message.phone)
        on_attempt(AttemptRecord(started_at=utcnow(), duration_ms=2, http_status=200, outcome="sent"))
        return SendResult(vendor_id=1, message_id="wamid-1", vendor_status="sent", http_status=200)


@pytest.fixture()
def rt(empty_database):  # noqa: ANN001, ANN201
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", AWAL_RATE_LIMIT="1000/s"))
    yield runtime
    runtime.close()


def hhmm(at: datetime) -> str:
    return at.astimezone(RIYADH).strftime("%H:%M")


def queued_in_window(rt, start: str, end: str) -> int:  # noqa: ANN001
    """A running campaign with a Riyadh window and one message whose task is on the broker."""
    now = utcnow()
    with rt.session_factory.begin() as s:
        camp = Campaign(name="w", phone_number_id="1", template=CONTENT, status="running", scheduled_at=now,
                        started_at=now, window_start=start, window_end=end, window_tz="Asia/Riyadh")
        s.add(camp)
        s.flush()
        msg = Message(campaign_id=camp.id, phone_number_id="1", phone="966500000777", content=CONTENT,
                      status="queued", queued_at=now, enqueued_at=now - timedelta(hours=8))
        s.add(msg)
        s.flush()
        return msg.id


def test_a_task_that_comes_off_the_broker_after_the_window_closed_goes_back_unsent(rt, monkeypatch) -> None:
    """Issue 12 item 8: given a window that opens in two hours, when a worker takes the message's
    task now, then nothing reaches the vendor, the row is queued with no task out, due at the window's
    next opening, with no attempt counted; and the dispatcher publishes it once the window is open."""
    now = utcnow()
    opens = now + timedelta(hours=2)
    mid = queued_in_window(rt, hhmm(opens), hhmm(now + timedelta(hours=3)))
    client = RecordingClient()

    assert send_message(mid, dataclasses.replace(send_deps(rt), client=client)) is Outcome.DEFERRED

    assert client.sent == []
    with rt.session_factory() as s:
        row = s.get(Message, mid)
        assert (row.status, row.enqueued_at, row.attempts) == ("queued", None, 0)
        expected = opens.astimezone(RIYADH).replace(second=0, microsecond=0).astimezone(timezone.utc)
        assert row.not_before == expected
        assert s.scalar(sa.select(sa.func.count()).select_from(Attempt).where(Attempt.message_id == mid)) == 0

    published: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, *, queue: published.extend(ids))
    dispatch_tick(rt, now=expected - timedelta(minutes=1))
    assert published == []                      # still closed
    dispatch_tick(rt, now=expected + timedelta(seconds=1))
    assert published == [mid]                   # the window opened: out again


def test_a_task_inside_its_window_is_sent(rt) -> None:
    """Issue 12 item 8: the check costs an in-window message nothing but a few comparisons."""
    now = utcnow()
    mid = queued_in_window(rt, hhmm(now - timedelta(hours=1)), hhmm(now + timedelta(hours=1)))
    client = RecordingClient()
    assert send_message(mid, dataclasses.replace(send_deps(rt), client=client)) is Outcome.SENT
    assert client.sent == ["966500000777"]
