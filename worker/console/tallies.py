"""The campaign page's counts, kept a moment per campaign (in this process).

The campaign page and its live fragment (polled every second by every viewer) need one scan of the
campaign's rows (`report.tally`): ~400 ms on a million recipients. Here a tally younger than
FRESH_S is served as is; one up to STALE_S old is served too while one background scan replaces
it; only an older or missing one (the first viewer) waits for a scan, and viewers arriving together
share that scan. So counts are at most ~STALE_S plus a scan old, the database sees about one scan
per campaign per FRESH_S however many people watch, and a viewer waits ~ms instead of a scan.

The campaign row itself (status, pause reason) is never cached: the page reads it per request, and
an action taken here (pause, cancel, retry) drops the campaign's tally so the next view rescans.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, TypeVar

from scheduler import report

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")

FRESH_S = 1.0      # served without a rescan; about the live poll's period
STALE_S = 5.0      # served while a background rescan runs; older waits for a scan
FORGET_S = 60.0    # a tally nobody asked for this long is dropped (campaigns no one watches)


@dataclass
class _Entry(Generic[T]):
    value: T | None = None
    at: float | None = None          # when the scan that made `value` started
    refreshing: bool = False
    asked_at: float = 0.0
    lock: threading.Lock | None = None


class TallyCache(Generic[T]):
    """`get(key)`: `scan(key)`'s result, reused and refreshed as the module docstring says."""

    def __init__(self, scan: Callable[[int], T], *, fresh_s: float = FRESH_S, stale_s: float = STALE_S,
                 forget_s: float = FORGET_S, clock: Callable[[], float] = time.monotonic,
                 background: Callable[[Callable[[], None]], None] | None = None) -> None:
        self._scan, self._fresh_s, self._stale_s, self._forget_s, self._clock = scan, fresh_s, stale_s, forget_s, clock
        self._background = background or _thread
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry[T]] = {}

    def get(self, key: int) -> T:
        now = self._clock()
        with self._lock:
            self._forget_idle(now)
            entry = self._entries.setdefault(key, _Entry(lock=threading.Lock()))
            entry.asked_at = now
            age = None if entry.at is None else now - entry.at
            if age is not None and age < self._fresh_s:
                return entry.value  # type: ignore[return-value]
            if age is not None and age < self._stale_s:
                if not entry.refreshing:
                    entry.refreshing = True
                    self._background(lambda: self._refresh(key, entry))
                return entry.value  # type: ignore[return-value]
        with entry.lock:  # type: ignore[union-attr]  # one scan for everyone waiting on this key
            with self._lock:
                if entry.at is not None and self._clock() - entry.at < self._fresh_s:
                    return entry.value  # type: ignore[return-value]
            return self._scan_into(key, entry)

    def forget(self, key: int) -> None:
        """Drop `key`'s tally (after an action changed its rows): the next get scans."""
        with self._lock:
            self._entries.pop(key, None)

    def _scan_into(self, key: int, entry: _Entry[T]) -> T:
        started = self._clock()
        value = self._scan(key)
        with self._lock:
            if entry.at is None or started > entry.at:
                entry.value, entry.at = value, started
            return entry.value  # type: ignore[return-value]

    def _refresh(self, key: int, entry: _Entry[T]) -> None:
        try:
            with entry.lock:  # type: ignore[union-attr]
                self._scan_into(key, entry)
        except Exception:  # noqa: BLE001 - the viewer keeps the older tally; the next view past STALE_S scans itself
            log.warning("background tally of campaign %s failed", key, exc_info=True)
        finally:
            with self._lock:
                entry.refreshing = False

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if now - e.asked_at > self._forget_s and not e.refreshing]:
            del self._entries[key]


def _thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="console-tally", daemon=True).start()


_caches: "weakref.WeakKeyDictionary[object, TallyCache]" = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def tallies_for(rt: "Runtime") -> "TallyCache[report.Tally]":
    """The process's tally cache for `rt`'s database: scans run on the read sessions."""
    with _caches_lock:
        cache = _caches.get(rt)
        if cache is None:
            def scan(campaign_id: int) -> report.Tally:
                with rt.read_sessions() as session:
                    return report.tally(session, campaign_id)
            cache = _caches[rt] = TallyCache(scan)
        return cache
