"""Beat-driven tasks: the dispatcher tick, the recovery sweep and daily retention, on the control queue.

Each runs through `worker.ticks.run_tick`: an outage fails the tick and says so once.
"""

from __future__ import annotations

from scheduler.dispatcher import dispatch_tick
from scheduler.retention import prune_expired
from scheduler.sweeper import sweep
from worker.celery_app import app
from worker.queues import TASK_DISPATCH, TASK_PRUNE, TASK_SWEEP
from worker.ticks import run_tick


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
