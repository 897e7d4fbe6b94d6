"""The recovery sweep, on SQLite and Postgres: lost tasks are republished, lost workers end `unknown`
with the reason, two sweeps at once change each message once, and a live worker's late answer wins.
"""

from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler import dispatcher
from scheduler.dispatcher import dispatch_tick
from scheduler.sweeper import LOST_WORKER_REASON, sweep
from tests.conftest import make_runtime, stack_env
from worker.models import Attempt, Message, MessageEvent, utcnow
from worker.queues import QUEUE_ADHOC
from worker.sending.broker_epoch import EPOCH_KEY
from worker.sending.client import client_of
from worker.sending.send import Outcome, send_deps, send_message

CONTENT = {"body_text": "Hello", "buttons": [{"id": "yes", "title": "Yes"}]}
QUEUED_TIMEOUT_S, SENDING_TIMEOUT_S = 5, 8
_phones = iter(range(10_000_000, 99_999_999))


def settings_env(database_url: str, sandbox_url: str = "http://127.0.0.1:9", **extra: str) -> dict[str, str]:
    return stack_env(database_url=database_url, sandbox_url=sandbox_url, AWAL_RATE_LIMIT="1000/s",
                     QUEUED_TASK_TIMEOUT_S=str(QUEUED_TIMEOUT_S), SENDING_TIMEOUT_S=str(SENDING_TIMEOUT_S), **extra)


@pytest.fixture()
def rt(database_url):  # noqa: ANN001
    runtime = make_runtime(settings_env(database_url))
    yield runtime
    runtime.close()


def add_message(rt, status: str, *, enqueued_ago_s: float | None = None, sending_ago_s: float | None = None) -> int:  # noqa: ANN001
    now = utcnow()
    with rt.session_factory.begin() as s:
        m = Message(phone_number_id="123456", phone=f"9665{next(_phones)}", content=CONTENT, status=status,
                    queued_at=now, claim_token="token-1" if status == "sending" else None, claimed_by="host:1",
                    enqueued_at=None if enqueued_ago_s is None else now - timedelta(seconds=enqueued_ago_s),
                    sending_at=None if sending_ago_s is None else now - timedelta(seconds=sending_ago_s))
        s.add(m)
        s.flush()
        return m.id


def load(rt, mid: int) -> Message:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.get(Message, mid)


def events_of(rt, mids: list[int]) -> list[MessageEvent]:  # noqa: ANN001
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(MessageEvent).where(MessageEvent.message_id.in_(mids))))


def published_send_tasks(redis_client, queue: str) -> list[tuple[bytes, int]]:  # noqa: ANN001
    """(raw item, message id) for every send task waiting on `queue` in a Redis broker."""
    out = []
    for raw in redis_client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        out.append((raw, int(args[0])))
    return out


def test_a_queued_message_whose_task_was_lost_is_republished_after_the_timeout(database_url, redis_url) -> None:
    # Given a Redis broker, and a message marked queued whose task the broker lost 10 s ago
    rt = make_runtime(settings_env(database_url, CELERY_BROKER_URL=redis_url))
    broker = rt.celery.connection().default_channel.client
    # (a broker up since before these tasks were published: its epoch is older than them)
    broker.set(EPOCH_KEY, f"test-epoch {(utcnow() - timedelta(hours=1)).isoformat()}")
    lost = add_message(rt, "queued", enqueued_ago_s=QUEUED_TIMEOUT_S * 2)
    recent = add_message(rt, "queued", enqueued_ago_s=1)  # its task is still on its way: leave it
    try:
        # When the dispatcher ticks, nothing is republished while the row says its task is out
        dispatch_tick(rt)
        assert lost not in [mid for _, mid in published_send_tasks(broker, QUEUE_ADHOC)]

        # When the sweep runs, then the next dispatch tick publishes it again, exactly once
        sweep(rt)
        assert load(rt, lost).enqueued_at is None and load(rt, recent).enqueued_at is not None
        dispatch_tick(rt)
        on_broker = [mid for _, mid in published_send_tasks(broker, QUEUE_ADHOC)]
        assert on_broker.count(lost) == 1 and recent not in on_broker
        assert load(rt, lost).status == "queued" and load(rt, lost).enqueued_at is not None
    finally:
        for raw, mid in published_send_tasks(broker, QUEUE_ADHOC):
            if mid in (lost, recent):
                broker.lrem(QUEUE_ADHOC, 0, raw)
        with rt.session_factory.begin() as s:  # nothing of this test is left for another test's worker
            s.execute(sa.update(Message).where(Message.id.in_([lost, recent])).values(status="cancelled"))
        rt.close()


def test_a_stale_sending_message_becomes_unknown_with_the_reason_and_an_event(rt) -> None:
    stale = add_message(rt, "sending", sending_ago_s=SENDING_TIMEOUT_S + 2)
    fresh = add_message(rt, "sending", sending_ago_s=1)

    sweep(rt)

    msg = load(rt, stale)
    assert (msg.status, msg.last_error_code, msg.last_error_message) == ("unknown", "worker_lost", LOST_WORKER_REASON)
    assert msg.finished_at is not None
    [event] = events_of(rt, [stale])
    assert (event.from_status, event.to_status, event.actor, event.reason) == ("sending", "unknown", "sweeper", LOST_WORKER_REASON)
    assert load(rt, fresh).status == "sending" and events_of(rt, [fresh]) == []


def test_two_sweeps_at_once_change_each_message_once(rt) -> None:
    # Given 40 lost workers' messages and 40 lost tasks
    sending = [add_message(rt, "sending", sending_ago_s=SENDING_TIMEOUT_S + 5) for _ in range(40)]
    queued = [add_message(rt, "queued", enqueued_ago_s=QUEUED_TIMEOUT_S + 5) for _ in range(40)]
    start, errors = threading.Barrier(4), []

    def one_sweep() -> None:
        try:
            start.wait()
            sweep(rt)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # When four sweeps run at the same moment
    threads = [threading.Thread(target=one_sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    # Then each message changed once: one event each, and every row in its expected state
    assert errors == []
    events = events_of(rt, sending)
    assert sorted(e.message_id for e in events) == sorted(sending)
    assert all(load(rt, mid).status == "unknown" for mid in sending)
    assert all(load(rt, mid).status == "queued" and load(rt, mid).enqueued_at is None for mid in queued)


class SweptMidRequest:
    """A client that lets the sweeper give up on the message while the request is in flight."""

    def __init__(self, rt, real) -> None:  # noqa: ANN001
        self.rt, self.real = rt, real

    def send(self, message, phone_number_id, *, before_request=None, on_attempt=None):  # noqa: ANN001, ANN201
        sweep(self.rt, now=utcnow() + timedelta(seconds=SENDING_TIMEOUT_S + 1))  # the worker looks dead
        return self.real.send(message, phone_number_id, before_request=before_request, on_attempt=on_attempt)


def test_a_worker_whose_answer_comes_after_the_sweep_still_records_sent(database_url, sandbox) -> None:
    # Given a live worker whose request outlasts SENDING_TIMEOUT_S, and the sweep marks it unknown
    base_url, vendor = sandbox
    rt = make_runtime(settings_env(database_url, base_url))
    mid = add_message(rt, "queued")
    deps = send_deps(rt)
    deps.client = SweptMidRequest(rt, client_of(rt))

    # When the vendor's 200 arrives after the sweep
    assert send_message(mid, deps) is Outcome.SENT

    # Then the definite answer wins over the sweeper's guess, and the history shows both
    msg = load(rt, mid)
    [received] = vendor.received(phone=msg.phone)
    assert msg.status == "sent" and msg.vendor_message_id == received["message_id"]
    [event] = events_of(rt, [mid])
    assert (event.from_status, event.to_status, event.actor) == ("sending", "unknown", "sweeper")
    with rt.session_factory() as s:
        assert s.scalars(sa.select(Attempt.http_status).where(Attempt.message_id == mid)).all() == [200]
    rt.close()


def test_the_sweep_hands_back_a_lost_task_without_touching_a_deferred_one(rt, monkeypatch) -> None:
    # A message deferred to later (not_before in the future, no task out) is the dispatcher's, not the sweeper's
    deferred = add_message(rt, "queued")
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Message).where(Message.id == deferred).values(not_before=utcnow() + timedelta(minutes=5)))
    published: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, queue: published.extend(ids))

    sweep(rt)
    dispatch_tick(rt)

    assert deferred not in published and load(rt, deferred).status == "queued"


def test_the_sweep_refreshes_the_queue_depth_gauge(rt) -> None:  # noqa: ANN001
    from worker import metrics

    add_message(rt, "queued")
    add_message(rt, "queued")
    add_message(rt, "pending")
    sweep(rt)
    samples = {(s.labels["campaign"], s.labels["status"]): s.value
               for metric in metrics.QUEUE_DEPTH.collect() for s in metric.samples}
    assert samples[("adhoc", "queued")] >= 2 and samples[("adhoc", "pending")] >= 1
