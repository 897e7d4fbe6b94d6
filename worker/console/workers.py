"""Workers seen recently, for the Health page.

One Celery broadcast ping (`app.control.ping`, at most PING_TIMEOUT_S) answers which workers are
alive; the answer is kept PING_CACHE_S so that many people watching the page cost one ping, and
concurrent requests wait for the ping in flight instead of sending their own. Each hostname's last
answer is remembered in-process, so a worker that stops answering stays on the page (not answering,
last seen at ...) for FORGET_S instead of silently disappearing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

PING_TIMEOUT_S = 1.0     # a worker busy for longer than this still answers: pings are handled by its consumer thread
PING_CACHE_S = 5.0       # the page is not polled faster than this matters
FORGET_S = 3600.0        # a worker silent this long is dropped from the list


@dataclass(frozen=True)
class WorkerSeen:
    hostname: str
    last_seen: float     # epoch seconds of its last answer
    answering: bool      # it answered the latest ping


@dataclass(frozen=True)
class Roll:
    workers: list[WorkerSeen]
    checked_at: float | None
    problem: str | None = None   # why the latest ping could not be sent (the broker unreachable ...)


class WorkerRoll:
    """The workers that answered pings, as of the latest ping (at most one every `cache_s`)."""

    def __init__(self, ping: Callable[[], Iterable[str]], *, clock: Callable[[], float] = time.time,
                 cache_s: float = PING_CACHE_S, forget_s: float = FORGET_S) -> None:
        self._ping, self._clock, self._cache_s, self._forget_s = ping, clock, cache_s, forget_s
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._answered: set[str] = set()
        self._checked_at: float | None = None
        self._problem: str | None = None

    def roll(self) -> Roll:
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._cache_s:
                self._refresh(now)
            workers = sorted((WorkerSeen(name, at, name in self._answered) for name, at in self._seen.items()),
                             key=lambda w: (not w.answering, w.hostname))
            return Roll(workers, self._checked_at, self._problem)

    def _refresh(self, now: float) -> None:
        try:
            answered = set(self._ping())
            self._problem = None
        except Exception as exc:  # noqa: BLE001 - the page says the ping failed, whatever the reason
            answered, self._problem = set(), f"the ping could not be sent ({type(exc).__name__})"
        self._checked_at = self._clock()
        for name in answered:
            self._seen[name] = self._checked_at
        self._answered = answered
        for name in [n for n, at in self._seen.items() if now - at > self._forget_s]:
            del self._seen[name]


def celery_ping(app, timeout_s: float = PING_TIMEOUT_S) -> Callable[[], list[str]]:  # noqa: ANN001 - a Celery app
    """The hostnames answering one broadcast ping of `app`'s workers within `timeout_s`."""
    def ping() -> list[str]:
        return [name for reply in app.control.ping(timeout=timeout_s) or [] for name in reply]
    return ping


_rolls: dict[str, WorkerRoll] = {}
_rolls_lock = threading.Lock()


def roll_for(broker_url: str, app_factory: Callable[[], object]) -> WorkerRoll:
    """The process's one WorkerRoll per broker (the remembered workers outlive a request)."""
    with _rolls_lock:
        if broker_url not in _rolls:
            _rolls[broker_url] = WorkerRoll(celery_ping(app_factory()))
        return _rolls[broker_url]
