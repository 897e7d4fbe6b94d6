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
from worker.health import beat_state, database_state, redis_state
from worker.ratelimit.limits import limit_states
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)

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
    return render(request, "health.html", states=states, depth=depth, beat=beat_state(rt), database=database_state(rt),
                  redis=redis_state(rt), configured=str(rt.settings.rate_limit), now=time.time(),
                  workers=_workers(rt))
