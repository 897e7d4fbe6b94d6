"""The Celery application, configured from the settings object.

`celery -A worker.celery_app worker` and `celery -A worker.celery_app beat` use the module-level
`app`, built from the environment when this module is imported.
"""

from __future__ import annotations

import warnings

from celery import Celery
from celery.exceptions import SecurityWarning
from kombu import Exchange, Queue

from worker import broker_transport
from worker.beatlock import hold_beat_lease
from worker.queues import (
    ALL_QUEUES,
    QUEUE_CAMPAIGN,
    QUEUE_CONTROL,
    QUEUE_HOOKS,
    TASK_DELIVER_HOOKS,
    TASK_DISPATCH,
    TASK_PRUNE,
    TASK_SWEEP,
)
from worker.ratelimit.intake import PREFETCH_MULTIPLIER, intake_step
from worker.settings import Settings
from worker.watchdog import broker_watchdog_step

# Redis broker: a task not acked within this time is delivered again. Send tasks finish in seconds
# and no task carries a long ETA, so an hour only matters for a worker that died mid-task.
VISIBILITY_TIMEOUT_S = 3600
MEMORY_POLLING_INTERVAL_S = 0.05
PRUNE_INTERVAL_S = 86400.0   # retention runs daily; each run deletes in batches (scheduler/retention.py)

ROOT_WARNING = r"You're running the worker with superuser privileges"


def quiet_root_warning() -> None:
    """Run as root (as containers often are), a Celery worker starts with a screenful of
    SecurityWarning (celery.platforms.check_privileges; C_FORCE_ROOT only concerns pickle). The
    danger it names is a pickled payload running code as root; buttoncast accepts JSON only
    (accept_content below), so that one warning is dropped for our processes. Any other
    SecurityWarning still shows, and pickle as root is still refused by Celery."""
    warnings.filterwarnings("ignore", message=ROOT_WARNING, category=SecurityWarning, module=r"celery\.platforms")


def create_celery(settings: Settings) -> Celery:
    quiet_root_warning()
    broker_transport.install()   # redis://: kombu's Redis transport without its per-call client building
    app = Celery("buttoncast", broker=settings.broker_url, include=["worker.sending.tasks", "scheduler.tasks"])
    uses_redis = settings.broker_url.startswith(("redis://", "rediss://"))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        result_backend=settings.redis_url if uses_redis and settings.redis_url else None,
        result_expires=3600,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=(
            # kombu's in-memory channel sleeps polling_interval (1 s) whenever it is idle or the
            # prefetch window is full: far too coarse for the embedded mode.
            {"polling_interval": MEMORY_POLLING_INTERVAL_S} if settings.embedded
            else {"visibility_timeout": VISIBILITY_TIMEOUT_S}
        ),
        task_default_queue=QUEUE_CAMPAIGN,
        # One direct exchange per queue: queues that shared the default exchange and routing key
        # would each get a copy of every task.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL_QUEUES],
        task_default_exchange=QUEUE_CAMPAIGN,
        task_default_routing_key=QUEUE_CAMPAIGN,
        task_create_missing_queues=True,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "dispatch": {"task": TASK_DISPATCH, "schedule": settings.dispatch_interval_s,
                         "options": {"queue": QUEUE_CONTROL, "expires": settings.dispatch_interval_s * 2}},
            "sweep": {"task": TASK_SWEEP, "schedule": settings.sweep_interval_s,
                      "options": {"queue": QUEUE_CONTROL, "expires": settings.sweep_interval_s * 2}},
            "prune": {"task": TASK_PRUNE, "schedule": PRUNE_INTERVAL_S,
                      "options": {"queue": QUEUE_CONTROL, "expires": PRUNE_INTERVAL_S / 2}},
            "hooks": {"task": TASK_DELIVER_HOOKS, "schedule": settings.hooks_interval_s,
                      "options": {"queue": QUEUE_HOOKS, "expires": settings.hooks_interval_s * 2}},
        },
    )
    if not settings.embedded:
        app.steps["consumer"].add(broker_watchdog_step(settings.broker_stall_exit_s))
        app.steps["consumer"].add(intake_step(settings))   # prefetch = this process's share of the limit
    return app


def _module_app() -> Celery:
    settings = Settings.from_env()
    celery = create_celery(settings)
    if not settings.embedded and settings.redis_url:
        hold_beat_lease(celery, settings.redis_url, settings.beat_lock_ttl_s)  # only one beat ticks
    return celery


app = _module_app()
