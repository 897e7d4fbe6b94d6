"""Embedded mode (`buttoncast run`): broker, worker, beat and the in-memory rate limiter in one process.

The broker is kombu's in-memory transport, so only this process can consume what it publishes;
`buttoncast send` from another shell stores the message as queued and the dispatcher tick here
publishes it. The database (SQLite by default) is still the source of truth: stopping and starting
again resumes where it was.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from celery import beat

from worker.queues import ALL_QUEUES
from worker.runtime import Runtime

log = logging.getLogger("buttoncast.embedded")
IDLE_CHECK_INTERVAL_S = 1.0
IDLE_CHECKS_BEFORE_EXIT = 2


def worker_argv(concurrency: int, queues: tuple[str, ...] = ALL_QUEUES, loglevel: str = "INFO",
                hostname: str | None = None) -> list[str]:
    """The Celery worker line each worker process runs (threads: the work is I/O-bound)."""
    return ["worker", "--pool", "threads", "--concurrency", str(concurrency), "--queues", ",".join(queues),
            "--loglevel", loglevel, "--without-gossip", "--without-mingle", *(["--hostname", hostname] if hostname else [])]


def is_idle(runtime: Runtime) -> bool:
    """No campaign running or scheduled, and no message pending, queued or sending."""
    from scheduler.report import nothing_left_to_send

    with runtime.read_sessions() as session:
        return nothing_left_to_send(session)


def _stop_when_idle(runtime: Runtime, stop: threading.Event) -> None:
    quiet = 0
    while not stop.wait(IDLE_CHECK_INTERVAL_S):
        try:
            quiet = quiet + 1 if is_idle(runtime) else 0
        except Exception:  # noqa: BLE001 - a busy database: check again next second
            quiet = 0
        if quiet >= IDLE_CHECKS_BEFORE_EXIT:
            log.info("nothing left to send; stopping")
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's own warm shutdown
            return


def run_embedded(runtime: Runtime, *, concurrency: int, until_idle: bool = False, loglevel: str = "INFO",
                 quiet: bool = False) -> None:
    """Block running worker + beat in this process until SIGTERM/SIGINT (or idle, if asked).

    `quiet` leaves out Celery's startup banner (the demo draws its own progress on stdout).
    """
    import scheduler.tasks  # noqa: F401 - register tasks on the app
    import worker.sending.tasks  # noqa: F401

    runtime.in_process_worker = True
    app = runtime.celery
    clock = beat.EmbeddedService(app, thread=True, scheduler_cls="celery.beat:Scheduler")
    clock.start()
    stop = threading.Event()
    if until_idle:
        threading.Thread(target=_stop_when_idle, args=(runtime, stop), name="idle-watch", daemon=True).start()
    try:
        app.worker_main((["--quiet"] if quiet else []) + worker_argv(concurrency, ALL_QUEUES, loglevel))
    except SystemExit:
        pass
    finally:
        stop.set()
        clock.stop()
        time.sleep(0.1)
