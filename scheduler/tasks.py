"""Beat-driven tasks: the dispatcher tick, the recovery sweep and daily retention, on the control queue.

When the broker or database is down a tick fails and says so once; the next tick that works says
it recovered. Nothing is marked sent or failed because of an outage.
"""

from __future__ import annotations

import logging

from scheduler.dispatcher import dispatch_tick
from scheduler.sweeper import sweep
from worker.celery_app import app
from worker.queues import TASK_DISPATCH, TASK_PRUNE, TASK_SWEEP
from scheduler.retention import prune_expired
from worker.runtime import get_runtime

log = logging.getLogger("buttoncast.scheduler")
_failing: dict[str, bool] = {}


def run_tick(name: str, tick) -> dict | None:  # noqa: ANN001
    try:
        result = tick(get_runtime())
    except Exception as exc:  # noqa: BLE001 - an outage fails the tick, not the process
        if not _failing.get(name):
            log.error("%s tick failed (%s: %s); retrying every tick, logged once until it recovers",
                      name, type(exc).__name__, exc)
        _failing[name] = True
        return None
    if _failing.pop(name, False):
        log.warning("%s tick recovered", name)
    return result.__dict__ if result is not None else None


@app.task(name=TASK_DISPATCH, ignore_result=True, acks_late=False)
def dispatch_task() -> dict | None:
    return run_tick("dispatch", dispatch_tick)


@app.task(name=TASK_SWEEP, ignore_result=True, acks_late=False)
def sweep_task() -> dict | None:
    return run_tick("sweep", sweep)


@app.task(name=TASK_PRUNE, ignore_result=True, acks_late=False)
def prune_task() -> dict | None:
    """Daily retention (issue 12 item 15): nothing when RETENTION_DAYS is 0."""
    return run_tick("prune", prune_expired)
