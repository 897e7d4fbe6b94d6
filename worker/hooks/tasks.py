"""The delivery tick as a Celery task on its own queue (buttoncast.hooks), scheduled by beat."""

from __future__ import annotations

from functools import cache

from worker.celery_app import app
from worker.hooks.delivery import DeliveryReport, Poster, deliver_due
from worker.queues import TASK_DELIVER_HOOKS
from worker.runtime import Runtime
from worker.ticks import run_tick


@cache
def _poster(runtime: Runtime) -> Poster:
    return Poster(runtime.settings)


def deliver_tick(runtime: Runtime) -> DeliveryReport:
    """Start lanes for the due rows and return: the POSTs run on the Poster's threads, not this one."""
    return deliver_due(runtime.session_factory, runtime.settings, _poster(runtime), wait=False)


@app.task(name=TASK_DELIVER_HOOKS, ignore_result=True, acks_late=False)
def deliver_hooks_task() -> dict | None:
    return run_tick("hooks", deliver_tick)
