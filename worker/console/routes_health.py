"""Health: the account's rate limit as the limiter sees it, any 429 block, the queue, beat, the workers."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from scheduler.report import queue_depth
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.web import allowed, render, runtime
from worker.console.workers import Roll, roll_for
from worker.ratelimit.limits import limit_states
from worker.health import database_state, redis_state
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
REDIS_TIMEOUT_S = 2.0


def _beat(rt: Runtime) -> str:
    if not rt.settings.redis_url:
        return "embedded mode: beat runs inside `buttoncast run`"
    import redis

    from worker.beatlock import lease_left_s

    try:
        client = redis.Redis.from_url(rt.settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        try:
            left = lease_left_s(client)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - the page says Redis is unreachable, whatever the reason
        return f"unknown: Redis unreachable ({type(exc).__name__})"
    return f"ticking (its lease is renewed; {left:.0f} s left)" if left is not None else "NOT ticking: no beat holds the lease"


def _workers(rt: Runtime) -> Roll | None:
    """Workers seen recently (None in embedded mode: `buttoncast run` is the worker)."""
    if rt.settings.embedded:
        return None
    return roll_for(rt.settings.broker_url, lambda: rt.celery).roll()


@router.get("/health")
def health_page(request: Request, person: Person = Depends(allowed(Permission.VIEW)), rt: Runtime = Depends(runtime)) -> Response:
    with rt.read_sessions() as session:
        depth = queue_depth(session)
    states = limit_states(rt)
    return render(request, "health.html", states=states, depth=depth, beat=_beat(rt), database=database_state(rt),
                  redis=redis_state(rt), configured=str(rt.settings.rate_limit), now=time.time(),
                  workers=_workers(rt))
