"""`buttoncast worker` on every core: a small supervisor of Celery worker processes.

A Celery worker process runs Python on at most one core at a time (the GIL), and Celery's own
multi-process pool (prefork) runs one task per child, which cannot hide the vendor's latency. So
`buttoncast worker` starts WORKER_PROCESSES Celery worker processes (0, the default: one per core
this process may run on), each a threads pool of WORKER_CONCURRENCY threads, exactly what

    celery -A worker.celery_app worker --pool threads --concurrency T -n worker1@%h ...   # once per core

would start by hand (the README gives the lines). The supervisor itself does no work. It:

- passes SIGTERM and SIGINT on to every child as SIGTERM: Celery's warm shutdown, each child
  finishes the tasks it is running (prefetched ones go back to the broker unacknowledged, and the
  database says what each message is), then exits; a second signal sends SIGQUIT (cold shutdown);
- restarts a child that exits while no stop was asked for, after a back-off (1 s, doubling to 30 s,
  back to 1 s once a child has lived a minute), so one crashing process cannot spin the machine;
- exits 0 once every child has stopped after a stop, 1 if any of them failed to stop cleanly.

Nothing is lost when a child dies mid-task: the send path's guarantees are per message in the
database (claim tokens, the sweep, the outcome journal), not per process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("buttoncast.supervisor")

RESTART_BACKOFF_MIN_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0      # a child that lived this long resets its back-off
POLL_S = 0.2


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def process_count(setting: int, *, sqlite: bool) -> int:
    """How many worker processes `buttoncast worker` starts: WORKER_PROCESSES, or one per core.
    On SQLite every write takes the one database lock, so more processes only queue up: one."""
    if setting > 0:
        return setting
    return 1 if sqlite else usable_cores()


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the supervisor dies, even by SIGKILL, so a
    killed supervisor never leaves workers behind that a restarted one would double."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    backoff_s: float = RESTART_BACKOFF_MIN_S
    due_at: float = 0.0          # when a crashed child may be started again
    restarts: int = 0


@dataclass
class Supervisor:
    """Keeps `count` children running `command(index)` until told to stop."""

    count: int
    command: Callable[[int], list[str]]
    env: Callable[[int], dict[str, str]] = lambda _i: dict(os.environ)
    clock: Callable[[], float] = time.monotonic
    children: list[_Child] = field(default_factory=list)
    stopping: bool = False
    signals_seen: int = 0

    def run(self) -> int:
        self._install_signals()
        self.children = [_Child(i) for i in range(self.count)]
        for child in self.children:
            self._start(child)
        log.info("supervising %d worker processes: %s", self.count, ", ".join(str(c.proc.pid) for c in self.children if c.proc))
        while True:
            self.step()
            if self.stopping and all(c.proc is None or c.proc.poll() is not None for c in self.children):
                break
            time.sleep(POLL_S)
        failed = [c for c in self.children if c.proc is not None and c.proc.returncode not in (0, -signal.SIGTERM)]
        for child in failed:
            log.warning("worker process %d (pid %d) stopped with exit code %s", child.index, child.proc.pid, child.proc.returncode)
        return 1 if failed else 0

    def step(self) -> None:
        """One look at the children: restart the ones that died (unless stopping)."""
        now = self.clock()
        for child in self.children:
            if child.proc is None:
                if not self.stopping and now >= child.due_at:
                    self._start(child)
                continue
            code = child.proc.poll()
            if code is None or self.stopping:
                continue
            lived = now - child.started_at
            child.backoff_s = RESTART_BACKOFF_MIN_S if lived >= HEALTHY_AFTER_S else min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
            child.due_at = now + child.backoff_s
            log.error("worker process %d (pid %d) exited with code %s after %.0f s; restarting it in %.0f s",
                      child.index, child.proc.pid, code, lived, child.backoff_s)
            child.proc = None
            child.restarts += 1

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """First call: warm shutdown of every child (SIGTERM). Any later call: cold (SIGQUIT)."""
        self.signals_seen += 1
        self.stopping = True
        send = signal.SIGTERM if self.signals_seen == 1 else signal.SIGQUIT
        log.warning("%s: %s shutdown of %d worker processes", signal.Signals(sig).name,
                    "warm (finishing running tasks)" if send == signal.SIGTERM else "cold", self.count)
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(send)

    def _start(self, child: _Child) -> None:
        child.proc = subprocess.Popen(self.command(child.index), env=self.env(child.index), preexec_fn=_die_with_parent)
        child.started_at = self.clock()

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _frame: self.stop(s))
