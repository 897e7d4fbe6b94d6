"""Intake tied to the rate limit (issue 26 item 4): a worker process takes from the broker no more
messages than its share of the limit can send within RATE_WAIT_MAX_S.

Each worker process registers itself on its scope in Redis, next to the limiter's keys, with a
heartbeat that lapses HEARTBEAT_TTL_S after it stops; every HEARTBEAT_INTERVAL_S it counts the live
processes and sets its Celery prefetch (acks_late: the unacknowledged tasks it may hold) to
`plan_intake(...).prefetch`: its share of what the scope can send within RATE_WAIT_MAX_S, at least
one, plus TICK_RESERVE, at most its threads x the prefetch multiplier. Before this, each process
took up to 256 tasks (64 threads x 4); at 20/s three `buttoncast worker` (6 processes) took 300,
could send 98 within 5 s and put the rest back in the database, 204 of 400 messages, 84 of them
twice or more (bench/shared_limit.py).

When one message per live process is already more than the scope sends within RATE_WAIT_MAX_S (a
low limit, many processes), a slot may be further away than RATE_WAIT_MAX_S; the limiter then
grants up to `wait_floor_s` (the time the held messages need) instead of sending one back to the
database each time, where it would come back and be sent back again.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import uuid
from dataclasses import dataclass

from celery import bootsteps

from worker.errors import LimiterUnavailable
from worker.ratelimit.base import WAIT_FLOORS, Pacing
from worker.ratelimit.scope import workspace_scope
from worker.settings import Settings

log = logging.getLogger("buttoncast.intake")

#: Celery's worker_prefetch_multiplier: a process's prefetch is at most its threads x this
PREFETCH_MULTIPLIER = 4
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 3 * HEARTBEAT_INTERVAL_S   # a process that stopped beating stops counting after this
#: tasks a process may hold beyond its send share, so a dispatch, sweep or hooks tick is not stuck
#: behind sends sleeping for their slots (those queues share the process's prefetch)
TICK_RESERVE = 2
#: the longest `wait_floor_s` may make a slot wait: far below QUEUED_TASK_TIMEOUT_S (600 s), after
#: which the sweep would republish a message whose task still sleeps
WAIT_FLOOR_MAX_S = 300.0


@dataclass(frozen=True)
class IntakePlan:
    prefetch: int          # tasks this process may hold unacknowledged
    wait_floor_s: float    # 0, or how long a slot may wait when the floor of one message per process needs it


def sendable_within(pacing: Pacing, wait_s: float) -> int:
    """Messages the scope is sure to send within wait_s: the whole limit less the windows' headroom."""
    return max(0, math.floor(wait_s * pacing.rate.per_second * (1.0 - pacing.headroom)))


def slot_wait_bound_s(pacing: Pacing, held: int) -> float:
    """How long the last of `held` messages, each holding one future slot, may wait for it."""
    if held < pacing.window_limit:   # within this window and the next
        return (held + 1) * pacing.interval_s + pacing.guard_s
    return (held // pacing.window_limit + 1) * pacing.window_s


def plan_intake(pacing: Pacing, wait_max_s: float, live: int, max_prefetch: int) -> IntakePlan:
    """One process's prefetch when `live` processes share the scope, and the slot wait that keeps
    every message they hold from going back to the database."""
    live = max(1, live)
    prefetch = max(1, min(max_prefetch, sendable_within(pacing, wait_max_s) // live + TICK_RESERVE))
    bound = slot_wait_bound_s(pacing, live * prefetch)
    return IntakePlan(prefetch=prefetch, wait_floor_s=min(bound, WAIT_FLOOR_MAX_S) if bound > wait_max_s else 0.0)


def intake_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep: registers the process, then keeps its prefetch at its share."""
    wait_max_s = settings.rate_wait_max_s

    class Intake(bootsteps.StartStopStep):
        requires = {"celery.worker.consumer.tasks:Tasks"}

        def __init__(self, parent: object, **kwargs: object) -> None:
            super().__init__(parent, **kwargs)
            self._member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._closing = threading.Event()
            self._thread: threading.Thread | None = None
            self._max_prefetch = 0
            self._consumer = None
            self._limiter = None
            self._scope = workspace_scope(settings)

        @property
        def limiter(self):  # noqa: ANN202 - the RateLimiter: its own Redis client, the scope's registry
            if self._limiter is None:
                from worker.ratelimit import build_rate_limiter

                self._limiter = build_rate_limiter(settings)
            return self._limiter

        def start(self, c) -> None:  # noqa: ANN001 - celery's Consumer
            self._consumer = c
            if not self._max_prefetch:
                self._max_prefetch = max(1, c.initial_prefetch_count or 1)
            self.beat()   # before the consumer takes anything
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
                self._thread.start()

        def shutdown(self, c) -> None:  # noqa: ANN001
            self._closing.set()
            try:
                self.limiter.unregister(self._scope, self._member)
            except LimiterUnavailable:
                pass   # its heartbeat lapses on its own

        def _run(self) -> None:
            while not self._closing.wait(HEARTBEAT_INTERVAL_S):
                self.beat()

        def beat(self) -> None:
            limiter = self.limiter
            try:
                live = limiter.register(self._scope, self._member, ttl_s=HEARTBEAT_TTL_S)
            except LimiterUnavailable as exc:
                log.warning("intake: could not count the live workers (%s); prefetch unchanged", exc.message)
                return
            plan = plan_intake(limiter.pacing, wait_max_s, live, self._max_prefetch)
            WAIT_FLOORS[self._scope] = plan.wait_floor_s
            qos = getattr(self._consumer, "qos", None)
            if qos is not None and qos.value != plan.prefetch:
                with qos._mutex:   # kombu's QoS: value under its lock, then update() applies it
                    qos.value = plan.prefetch
                qos.update()
                log.info("intake: prefetch %s (%s live worker process(es) on %s; slot wait up to %.1fs)",
                         plan.prefetch, live, self._scope, max(wait_max_s, plan.wait_floor_s))

    return Intake

