"""The shared rate limit with real worker processes against the sandbox enforcing its own limit.

Scenarios from the rate-limit issue: 1, 2 and 4 workers together never exceed the vendor's limit;
a 429 stops every worker until Retry-After; a vendor that reports fewer remaining requests than we
counted slows the workers down; a long wait goes back to the database, not into a sleeping task.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env, wait_until
from worker.models import Message, utcnow
from worker.queues import QUEUE_ADHOC
from worker.sending.enqueue import enqueue_message

pytestmark = pytest.mark.slow
BUTTONS = [{"id": "yes", "title": "Yes"}]
RATE = "10/s"


def enqueue_many(rt, n: int, prefix: str) -> list[int]:  # noqa: ANN001
    return [enqueue_message(phone=f"{prefix}{i:04d}", body_text="Limit test", buttons=BUTTONS, runtime=rt) for i in range(n)]


def statuses(rt, ids: list[int]) -> dict[str, int]:  # noqa: ANN001
    with rt.session_factory() as s:
        rows = s.execute(sa.select(Message.status, sa.func.count()).where(Message.id.in_(ids)).group_by(Message.status)).all()
    return dict(rows)


def all_sent(rt, ids: list[int]) -> bool:  # noqa: ANN001
    return statuses(rt, ids).get("sent", 0) == len(ids)


@pytest.fixture()
def env(clean_postgres, redis_url, sandbox):  # noqa: ANN001
    base_url, vendor = sandbox
    vendor.configure(rate_limit=RATE)
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # a fresh limiter state per test
    return stack_env(database_url=clean_postgres, sandbox_url=base_url, broker_url=redis_url,
                     AWAL_RATE_LIMIT=RATE, AWAL_RATE_BURST="1", SEND_READ_TIMEOUT_S="2", RATE_WAIT_MAX_S="5",
                     DISPATCH_INTERVAL_S="0.5")


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_workers_together_never_exceed_the_vendors_limit(env, sandbox, spawn, workers: int) -> None:
    # Given the sandbox enforcing 10/s and N workers with 4 threads each sharing one Redis limiter
    _, vendor = sandbox
    for _ in range(workers):
        spawn(env, "worker", "--processes", "1", "--concurrency", "4")
    spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")
    rt = make_runtime(env)
    # When 40 messages are enqueued at once
    ids = enqueue_many(rt, 40, f"96650{workers}00")
    started = time.monotonic()
    wait_until(lambda: all_sent(rt, ids), 60, what="all 40 sent")
    elapsed = time.monotonic() - started
    # Then every one was accepted, none met a 429, and the pace stayed within the limit
    stats = vendor.stats()
    # (pacing runs 2 % under the limit, so a 429 needs > 20 ms of jitter at a window edge: allow one)
    assert stats["counts"].get("429", 0) <= 1, stats["counts"]
    assert stats["counts"].get("200") == 40
    assert elapsed >= 40 / 10 - 1.5, f"{elapsed:.1f}s is faster than 10/s allows"
    rt.close()


def test_a_429_stops_every_worker_until_retry_after(env, sandbox, spawn) -> None:
    # Given two workers and a vendor that answers 429 with Retry-After: 3 for the next 3 seconds
    _, vendor = sandbox
    spawn(env, "worker", "--processes", "1", "--concurrency", "4")
    spawn(env, "worker", "--processes", "1", "--concurrency", "4")
    spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")  # re-publishes what was put back
    rt = make_runtime(env)
    vendor.configure(force_429_for_s=3, retry_after=3)
    forced_at = time.time()
    ids = enqueue_many(rt, 12, "96657100")
    # Then the messages wait out the block and all get sent afterwards
    wait_until(lambda: all_sent(rt, ids), 60, what="all 12 sent")
    stats = vendor.stats()
    # only requests already in flight when the first 429 came back could meet one: the block
    # stopped every other worker (without it, 8 threads retrying would hit dozens of 429s)
    from worker.models import Attempt
    with rt.session_factory() as s:
        trail = [(round(a.started_at.timestamp() - forced_at, 3), a.http_status, a.worker) for a in
                 s.scalars(sa.select(Attempt).where(Attempt.message_id.in_(ids)).order_by(Attempt.started_at))]
    assert stats["counts"].get("429", 0) <= 2, (stats["counts"], trail)
    accepted_at = [r["received_at"] for r in vendor.received()]
    assert min(accepted_at) >= forced_at + 3 - 0.2
    with rt.session_factory() as s:
        attempts = s.scalars(sa.select(Message.attempts).where(Message.id.in_(ids))).all()
    assert max(attempts) == 1  # the 429 did not count against any message's retry budget
    rt.close()


def test_a_vendor_reporting_fewer_remaining_than_ours_slows_the_workers(env, sandbox, spawn) -> None:
    # Given our limit is 10/s, but the vendor reports only 1 request left in its 5-second window
    _, vendor = sandbox
    vendor.configure(rate_limit="100/5s", remaining_override=1)
    spawn(env, "worker", "--processes", "1", "--concurrency", "4")
    spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")
    rt = make_runtime(env)
    window_end = (math.floor(time.time() / 5) + 1) * 5
    if window_end - time.time() < 3.5:  # start early in a window, so the test sees one whole
        time.sleep(window_end - time.time() + 0.05)
        window_end += 5
    # When 10 messages are enqueued (10/s alone would send them all within 1 s, inside the window)
    ids = enqueue_many(rt, 10, "96657200")
    wait_until(lambda: all_sent(rt, ids), 60, what="all 10 sent")
    # Then the workers held back until the vendor's window reset. Slots reserved before the first
    # response came back are honoured (at most one per thread: 4), plus the one the vendor said was left.
    in_window = [r for r in vendor.received() if r["received_at"] < window_end]
    assert len(in_window) <= 4 + 1, f"{len(in_window)} of 10 requests went out after the vendor said 1 was left"
    assert vendor.stats()["counts"].get("429", 0) == 0
    rt.close()


def test_a_long_wait_puts_the_message_back_in_the_database_not_in_a_sleeping_task(clean_postgres, redis_url, sandbox, spawn) -> None:
    # Given a limit of 1 per hour: the first message takes the slot
    base_url, vendor = sandbox
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(database_url=clean_postgres, sandbox_url=base_url, broker_url=redis_url,
                    AWAL_RATE_LIMIT="1/h", RATE_WAIT_MAX_S="2")
    spawn(env, "worker", "--processes", "1", "--concurrency", "2")
    rt = make_runtime(env)
    pair = enqueue_many(rt, 2, "96657300")
    # When one of them takes the hour's slot (two threads race for it), the other cannot get one
    wait_until(lambda: statuses(rt, pair).get("sent") == 1, 30, what="one of the two sent")
    with rt.session_factory() as s:
        second = s.scalar(sa.select(Message.id).where(Message.id.in_(pair), Message.status != "sent"))

    def deferred() -> Message | None:
        with rt.session_factory() as s:
            msg = s.get(Message, second)
            return msg if msg.status == "queued" and msg.enqueued_at is None and msg.not_before else None

    msg = wait_until(deferred, 30, what="second message deferred")
    # Then it is back in the database, due in about an hour, with no task left on the broker
    assert msg.not_before > utcnow() + timedelta(minutes=55)
    assert msg.attempts == 0
    client = rt.celery.connection().default_channel.client
    wait_until(lambda: client.llen(QUEUE_ADHOC) == 0 and client.hlen("unacked") == 0, 10, what="no task held")
    assert len(vendor.received()) == 1
    rt.close()
