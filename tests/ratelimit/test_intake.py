"""Issue 26 item 4: a worker process takes from the broker no more than its share of the limit can
send within RATE_WAIT_MAX_S, so no message it takes goes back to the database for want of a slot."""

from __future__ import annotations

import time
import uuid

import pytest
from kombu.common import QoS

from worker.ratelimit import build_rate_limiter
from worker.ratelimit.base import WAIT_FLOORS
from worker.ratelimit.intake import HEARTBEAT_TTL_S, PREFETCH_MULTIPLIER, TICK_RESERVE, intake_step, plan_intake
from worker.ratelimit.scope import workspace_scope
from worker.settings import RATE_WAIT_MAX_S, WORKER_CONCURRENCY, RateLimit, Settings

MAX_PREFETCH = WORKER_CONCURRENCY * PREFETCH_MULTIPLIER   # what Celery took before: 256 a process


@pytest.fixture
def scope() -> str:
    return f"ws-{uuid.uuid4().hex[:8]}:button"


@pytest.mark.parametrize("rate, processes", [("20/s", 6), ("1/s", 6), ("2000/s", 2)])
def test_what_every_live_process_takes_gets_a_slot_without_going_back_to_the_database(redis_url, scope, rate,
                                                                                         processes):
    # Given `processes` worker processes on one scope, each registered with its heartbeat
    settings = Settings(rate_limit=RateLimit.parse(rate), redis_url=redis_url)
    limiters = [build_rate_limiter(settings) for _ in range(processes)]
    live = [limiter.register(scope, f"p{i}", ttl_s=HEARTBEAT_TTL_S) for i, limiter in enumerate(limiters)]
    assert live[-1] == processes
    plans = [plan_intake(limiter.pacing, RATE_WAIT_MAX_S, live[-1], MAX_PREFETCH) for limiter in limiters]
    WAIT_FLOORS[scope] = plans[0].wait_floor_s   # what each process's intake sets for itself
    share = int(RATE_WAIT_MAX_S * settings.rate_limit.per_second * (1 - settings.rate_headroom)) // processes
    # Then each takes its share of what the limit sends within RATE_WAIT_MAX_S (at least one), plus
    # the reserve for ticks, and at a high limit enough to keep every thread busy
    assert all(p.prefetch == min(MAX_PREFETCH, max(1, share + TICK_RESERVE)) for p in plans)
    if share >= WORKER_CONCURRENCY:
        assert all(p.prefetch >= WORKER_CONCURRENCY for p in plans)
    # When every process asks a slot for each message it holds, taking turns
    grants = [limiter.acquire(scope, max_wait_s=RATE_WAIT_MAX_S)
              for _ in range(plans[0].prefetch) for limiter in limiters]
    # Then every one is granted: nothing goes back to the database, and nothing waits past the plan's bound
    assert all(r.granted for r in grants), [r for r in grants if not r.granted][:3]
    assert max(r.wait_s for r in grants) <= max(RATE_WAIT_MAX_S, plans[0].wait_floor_s)
    del WAIT_FLOORS[scope]


def test_a_process_stops_counting_when_its_heartbeat_lapses(redis_url, scope):
    limiter = build_rate_limiter(Settings(rate_limit=RateLimit.parse("20/s"), redis_url=redis_url))
    limiter.register(scope, "gone", ttl_s=0.001)
    time.sleep(0.01)   # its heartbeat lapses
    assert limiter.register(scope, "here", ttl_s=HEARTBEAT_TTL_S) == 1
    limiter.unregister(scope, "here")
    assert limiter.live_processes(scope) == 0


def test_the_bootstep_sets_the_consumers_prefetch_to_its_share(redis_url):
    # Given a worker process at 20/s with 64 threads (Celery's prefetch 256) and two others alive
    settings = Settings(rate_limit=RateLimit.parse("20/s"), redis_url=redis_url, awal_domain=f"d{uuid.uuid4().hex[:8]}")
    scope = workspace_scope(settings)
    others = build_rate_limiter(settings)
    for other in ("a", "b"):
        others.register(scope, other, ttl_s=HEARTBEAT_TTL_S)
    applied: list[int] = []
    consumer = type("Consumer", (), {})()
    consumer.initial_prefetch_count = MAX_PREFETCH
    consumer.qos = QoS(lambda prefetch_count: applied.append(prefetch_count), MAX_PREFETCH)
    step = intake_step(settings)(consumer)
    # When its consumer starts
    step.start(consumer)
    step.shutdown(consumer)
    # Then its prefetch is a third of the 98 messages 20/s sends in 5 s, plus the reserve
    assert applied == [98 // 3 + TICK_RESERVE]
    assert others.live_processes(scope) == 2   # it left the count on shutdown
