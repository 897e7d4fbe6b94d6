"""A worker whose consumer cannot get back to the broker exits, so its supervisor restarts it.

Seen in the chaos test (Celery 5.7, threads pool, Redis restarted under load): a send task acked
while the consumer was tearing its connection down fails inside kombu ("'NoneType' object has no
attribute 'hostname'"), the consumer's restart never reconnects, and the worker sits alive but
deaf forever. A fresh process reconnects fine. So: when the consumer has been stopped for
BROKER_STALL_EXIT_S, log it loudly and exit (code 70); docker compose, systemd or any supervisor
starts a new worker. By then the tasks it was running have long finished (send timeouts are far
shorter), and nothing it had not claimed is lost: the sweep republishes queued messages.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import bootsteps

log = logging.getLogger("buttoncast.watchdog")
EXIT_CODE_BROKER_STALL = 70
CHECK_INTERVAL_S = 1.0


def broker_watchdog_step(stall_exit_s: float) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep: `start` runs each time the consumer is connected, `stop` when it is not."""

    class BrokerWatchdog(bootsteps.StartStopStep):
        requires = {"celery.worker.consumer.tasks:Tasks"}

        def __init__(self, parent: object, **kwargs: object) -> None:
            super().__init__(parent, **kwargs)
            self._lost_at: float | None = None
            self._thread: threading.Thread | None = None
            self._closing = threading.Event()

        def start(self, parent: object) -> None:
            if self._lost_at is not None:
                log.warning("consumer back on the broker after %.1fs", time.monotonic() - self._lost_at)
            self._lost_at = None
            if self._thread is None and stall_exit_s > 0:
                self._thread = threading.Thread(target=self._watch, name="broker-watchdog", daemon=True)
                self._thread.start()

        def stop(self, parent: object) -> None:
            if self._lost_at is None:
                self._lost_at = time.monotonic()

        def shutdown(self, parent: object) -> None:
            self._closing.set()

        def _watch(self) -> None:
            while not self._closing.wait(CHECK_INTERVAL_S):
                lost_at = self._lost_at
                if lost_at is not None and time.monotonic() - lost_at > stall_exit_s:
                    log.critical("consumer has not been back on the broker for %.0fs (BROKER_STALL_EXIT_S); "
                                 "exiting so the supervisor starts a fresh worker", stall_exit_s)
                    logging.shutdown()
                    os._exit(EXIT_CODE_BROKER_STALL)

    return BrokerWatchdog
