"""Issue 25, "every chaos run, not four in five": the states a chaos run (SIGKILLed workers, then the
broker's Redis db flushed) could leave a recipient in, neither sent nor `unknown`, and the recovery
step that must end each one. Each test builds the state in the database (and the broker) by hand
and runs the step; `bench/chaos.py --sequence --runs 20` is the whole scenario.

1. A task lost in the flush although its row was published after the new epoch's start: the
   epoch's start was the clock of the tick that noticed the loss, read before it reached the
   broker; a tick of another process published in between, and its rows were not handed back
   (only QUEUED_TASK_TIMEOUT_S, 10 minutes by default, would have found them).
2. A message back in the queue of a campaign that completed meanwhile: the sweeper had given up
   on its slow worker (`unknown`), the dispatcher completed the campaign (nothing left), and the
   worker's late answer (a 503 or a 429: not sent, try again) put the message back to `queued` in
   a transaction that did not see the completion, so it did not reopen the campaign; the
   dispatcher serves running campaigns only, and the message waited for ever.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler.dispatcher import dispatch_tick
from scheduler.sweeper import LOST_WORKER_REASON, recover_from_broker_loss, sweep
from tests.conftest import make_runtime, stack_env
from tests.scheduler.test_sweeper import published_send_tasks
from worker.models import Campaign, Message, MessageEvent, utcnow
from worker.queues import QUEUE_ADHOC
from worker.sending.broker_epoch import EPOCH_KEY
from worker.sending.send import Outcome, send_deps, send_message

CONTENT = {"body_text": "Hello", "buttons": [{"id": "yes", "title": "Yes"}]}
DEFAULT_QUEUED_TIMEOUT_S = 600   # the default: the epoch alone must notice a flush
_phones = iter(range(41_000_000, 99_999_999))


def runtime_for(database_url: str, sandbox_url: str, **extra: str):  # noqa: ANN201
    return make_runtime(stack_env(database_url=database_url, sandbox_url=sandbox_url, AWAL_RATE_LIMIT="1000/s",
                                  QUEUED_TASK_TIMEOUT_S=str(DEFAULT_QUEUED_TIMEOUT_S), SENDING_TIMEOUT_S="8", **extra))


def load(rt, mid: int) -> Message:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.get(Message, mid)


@pytest.fixture()
def redis_rt(empty_database, redis_url, sandbox):  # noqa: ANN001
    runtime = runtime_for(empty_database, sandbox[0], CELERY_BROKER_URL=redis_url)
    broker = runtime.celery.connection().default_channel.client
    broker.flushdb()
    yield runtime, broker, sandbox[1]
    broker.flushdb()
    runtime.close()


def test_chaos_a_task_lost_in_a_flush_while_a_slow_tick_read_its_clock_is_republished_and_sent(redis_rt) -> None:
    rt, broker, vendor = redis_rt
    # Given a broker up for an hour, and a message another dispatcher published at 12:00:00.5 (its task on the broker)
    broker.set(EPOCH_KEY, f"old-epoch {(utcnow() - timedelta(hours=1)).isoformat()}")
    rt.broker_epoch_seen = "old-epoch"
    slow_tick_clock = utcnow() - timedelta(seconds=2)     # 12:00:00: a tick (or sweep) read its clock, then waited for the CPU
    with rt.session_factory.begin() as s:
        m = Message(phone_number_id="123456", phone=f"9665{next(_phones)}", content=CONTENT, status="queued",
                    queued_at=slow_tick_clock, enqueued_at=slow_tick_clock + timedelta(milliseconds=500))
        s.add(m)
        s.flush()
        mid = m.id
    dispatch_tick(rt)   # nothing to publish: the row says its task is out
    assert [i for _, i in published_send_tasks(broker, QUEUE_ADHOC)] == []

    # When the broker's db is flushed (the task and the epoch gone) and the slow tick reaches the broker only then
    broker.flushdb()
    handed_back = recover_from_broker_loss(rt, slow_tick_clock)

    # Then the message is handed back at once (not QUEUED_TASK_TIMEOUT_S later), published again exactly once,
    assert handed_back == 1 and load(rt, mid).enqueued_at is None
    dispatch_tick(rt)
    assert [i for _, i in published_send_tasks(broker, QUEUE_ADHOC)] == [mid]
    # and its task sends it: final, received once
    assert send_message(mid, send_deps(rt)) is Outcome.SENT
    assert load(rt, mid).status == "sent"
    assert [r["outcome"] for r in vendor.received() if r["phone"] == load(rt, mid).phone] == ["sent"]


@pytest.fixture()
def rt(database_url, sandbox):  # noqa: ANN001
    runtime = runtime_for(database_url, sandbox[0])
    yield runtime
    runtime.close()


def test_chaos_a_message_back_in_the_queue_of_a_campaign_completed_meanwhile_is_reopened_and_sent(rt, sandbox) -> None:
    # Given a campaign the dispatcher completed while one message was `unknown` (the sweeper gave up on its
    # slow worker), and that worker's late 503 put the message back to `queued` in a transaction that did
    # not see the completion (so nothing reopened the campaign)
    now = utcnow()
    with rt.session_factory.begin() as s:
        camp = Campaign(name="raced", phone_number_id="123456", template=CONTENT, status="completed",
                        scheduled_at=now - timedelta(minutes=2), started_at=now - timedelta(minutes=2),
                        finished_at=now - timedelta(seconds=3))
        s.add(camp)
        s.flush()
        sent = Message(campaign_id=camp.id, phone_number_id="123456", phone=f"9665{next(_phones)}", content=CONTENT,
                       status="sent", vendor_message_id=f"wamid.{camp.id}", sent_at=now, finished_at=now)
        raced = Message(campaign_id=camp.id, phone_number_id="123456", phone=f"9665{next(_phones)}", content=CONTENT,
                        status="queued", attempts=1, queued_at=now - timedelta(seconds=20), enqueued_at=None,
                        not_before=now - timedelta(seconds=1), last_error_code="http_503", claimed_by="host:1")
        s.add_all([sent, raced])
        s.flush()
        s.add_all([MessageEvent(message_id=raced.id, at=now - timedelta(seconds=4), from_status="sending",
                                to_status="unknown", reason=LOST_WORKER_REASON, actor="sweeper")])
        campaign_id, mid = camp.id, raced.id
    dispatch_tick(rt)   # the dispatcher serves running campaigns only: nothing happens
    assert load(rt, mid).status == "queued" and load(rt, mid).enqueued_at is None

    # When the recovery sweep runs
    sweep(rt)

    # Then the campaign is running again, with an event saying why, and the next tick publishes the message,
    with rt.session_factory() as s:
        assert s.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id)) == "running"
        reasons = list(s.scalars(sa.select(MessageEvent.reason).where(MessageEvent.message_id == mid,
                                                                      MessageEvent.actor == "sweeper")))
    assert any("reopened" in r for r in reasons), reasons
    report = dispatch_tick(rt)
    assert report.published == {str(campaign_id): 1} and load(rt, mid).enqueued_at is not None
    # which its task sends: every recipient final, and the campaign completes again
    assert send_message(mid, send_deps(rt)) is Outcome.SENT
    assert load(rt, mid).status == "sent"
    assert dispatch_tick(rt).completed == [campaign_id]
    assert [r["outcome"] for r in sandbox[1].received() if r["phone"] == load(rt, mid).phone] == ["sent"]
