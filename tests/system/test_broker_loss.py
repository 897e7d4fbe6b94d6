"""Issue 12 item 12: a lost broker is noticed within a tick, and an unconsumed broker does not fill up.

On a real Redis broker (this run's db index) and both databases: the broker's epoch key vanishes
with its queues on a flush, the next dispatcher tick republishes every `queued` message published
before, each id exactly once however many dispatchers notice; and 30 minutes of sweeps with no
worker consuming leave the queue as long as it was.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler.dispatcher import dispatch_tick
from scheduler.sweeper import sweep
from tests.conftest import make_runtime, stack_env
from tests.scheduler.test_sweeper import published_send_tasks
from worker.models import Message, utcnow
from worker.queues import QUEUE_ADHOC, QUEUE_CAMPAIGN
from worker.sending.broker_epoch import EPOCH_KEY, current_epoch, task_ids_on_broker

CONTENT = {"body_text": "Hello", "buttons": [{"id": "yes", "title": "Yes"}]}
QUEUED_TIMEOUT_S = 600
_phones = iter(range(30_000_000, 99_999_999))


@pytest.fixture()
def redis_rt(empty_database, redis_url):  # noqa: ANN001
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", CELERY_BROKER_URL=redis_url,
                                     AWAL_RATE_LIMIT="1000/s", QUEUED_TASK_TIMEOUT_S=str(QUEUED_TIMEOUT_S)))
    broker = runtime.celery.connection().default_channel.client
    broker.flushdb()
    yield runtime, broker
    broker.flushdb()
    runtime.close()


def add_pending(rt, n: int) -> list[int]:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        rows = [Message(phone_number_id="123456", phone=f"9665{next(_phones)}", content=CONTENT, status="pending") for _ in range(n)]
        s.add_all(rows)
        s.flush()
        return [m.id for m in rows]


def statuses(rt) -> dict[str, int]:  # noqa: ANN001
    with rt.session_factory() as s:
        return dict(s.execute(sa.select(Message.status, sa.func.count()).group_by(Message.status)).all())


def test_issue12_item12_a_flushed_broker_is_republished_on_the_next_tick_once_per_id(redis_rt) -> None:
    """Issue 12 item 12: flush the broker's db; the next dispatcher tick (not QUEUED_TASK_TIMEOUT_S
    later) republishes every queued message, and a second dispatcher noticing the same loss adds no copy."""
    rt, broker = redis_rt
    ids = add_pending(rt, 30)
    dispatch_tick(rt)
    assert sorted(mid for _, mid in published_send_tasks(broker, QUEUE_ADHOC)) == ids

    broker.flushdb()  # Redis restarted without persistence: the queues and the epoch are gone
    other = make_runtime(stack_env(database_url=str(rt.settings.database_url), sandbox_url="http://127.0.0.1:9",
                                   CELERY_BROKER_URL=rt.settings.broker_url, AWAL_RATE_LIMIT="1000/s"))
    try:
        dispatch_tick(rt, now=utcnow() + timedelta(seconds=1))
        dispatch_tick(other, now=utcnow() + timedelta(seconds=2))
        dispatch_tick(rt, now=utcnow() + timedelta(seconds=3))
    finally:
        other.close()

    on_broker = [mid for _, mid in published_send_tasks(broker, QUEUE_ADHOC)]
    assert sorted(on_broker) == ids, "each lost id published exactly once"
    assert statuses(rt) == {"queued": 30}


def test_issue12_item12_a_broker_with_persistence_keeps_its_epoch_and_nothing_is_republished(redis_rt) -> None:
    """Issue 12 item 12: a new dispatcher process on a broker that kept its queues republishes nothing."""
    rt, broker = redis_rt
    ids = add_pending(rt, 5)
    dispatch_tick(rt)
    epoch = current_epoch(rt.celery, utcnow())
    rt.broker_epoch_seen = None   # as a restarted dispatcher sees it
    dispatch_tick(rt, now=utcnow() + timedelta(seconds=5))
    assert current_epoch(rt.celery, utcnow()) == epoch
    assert sorted(mid for _, mid in published_send_tasks(broker, QUEUE_ADHOC)) == ids
    assert task_ids_on_broker(rt.celery, (QUEUE_ADHOC, QUEUE_CAMPAIGN)) == set(ids)


def test_issue12_item12_thirty_minutes_of_sweeps_with_no_worker_leave_the_queue_length_flat(redis_rt) -> None:
    """Issue 12 item 12: no worker consumes; a sweep every 30 s for 30 simulated minutes (three times
    QUEUED_TASK_TIMEOUT_S) and a dispatcher tick after each must not add a copy of the window."""
    rt, broker = redis_rt
    add_pending(rt, 200)
    start = utcnow()
    dispatch_tick(rt, now=start)
    lengths = {broker.llen(QUEUE_ADHOC)}
    for step in range(1, 61):
        now = start + timedelta(seconds=30 * step)
        sweep(rt, now=now)
        dispatch_tick(rt, now=now)
        lengths.add(broker.llen(QUEUE_ADHOC))
    assert lengths == {200}


def test_issue12_item12_a_task_really_missing_from_the_broker_is_still_republished_after_the_timeout(redis_rt) -> None:
    """Issue 12 item 12: the inventory does not hide a task lost alone (not a whole flush)."""
    rt, broker = redis_rt
    ids = add_pending(rt, 3)
    start = utcnow()
    dispatch_tick(rt, now=start)
    [(raw, first)] = [(raw, mid) for raw, mid in published_send_tasks(broker, QUEUE_ADHOC) if mid == ids[0]]
    broker.lrem(QUEUE_ADHOC, 0, raw)

    report = sweep(rt, now=start + timedelta(seconds=QUEUED_TIMEOUT_S + 1))
    dispatch_tick(rt, now=start + timedelta(seconds=QUEUED_TIMEOUT_S + 2))

    assert report.republished == 1
    assert sorted(mid for _, mid in published_send_tasks(broker, QUEUE_ADHOC)) == ids
