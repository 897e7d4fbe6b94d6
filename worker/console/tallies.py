"""The campaign page's counts: the stored tally snapshot, served at once and refreshed behind it.

The campaign page and its live fragment (polled every second by every viewer) need one scan of
the campaign's rows (`report.tally`): ~400 ms on a million recipients. So no viewer waits for one:

- a snapshot younger than FRESH_S, or than SCAN_SHARE_FACTOR times its own scan's duration (a
  big campaign is recounted less often: the database spends at most 1/SCAN_SHARE_FACTOR of a core
  on it, however many people watch), is served as is;
- an older one is served too, while one background scan replaces it (for all viewers of the
  campaign in this process); before scanning, the stored snapshot is read again, since another
  api process or beat's sweep may have just taken one (scheduler.snapshots);
- a process that has none yet reads the stored one (one primary-key lookup): beat's sweep keeps
  those of active campaigns recent, so a freshly started api shows counts at once;
- a campaign never counted waits up to FIRST_WAIT_S for its first scan (small campaigns make it),
  then the page says "counting" and its live fragment fills in when the scan ends.

Counts older than CURRENT_S, or taken before an action on this page (pause, cancel, retry: `forget`),
are shown with their time ("counts as of HH:MM:SS"), never as if they were now. The campaign row
itself (status, pause reason) is never cached: the page reads it per request.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

from scheduler import snapshots
from scheduler.snapshots import Snapshot
from worker.models import utcnow

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

FRESH_S = 1.0        # served without a rescan; about the live poll's period
CURRENT_S = 5.0      # older counts are labelled with their time
SCAN_SHARE_FACTOR = 4.0   # a snapshot is fresh for at least this many times its scan's duration
FIRST_WAIT_S = 0.05  # a campaign never counted: how long its first view waits for the scan
FORGET_S = 60.0      # a campaign nobody asked about this long is dropped from this process
_NEVER = datetime.min.replace(tzinfo=utcnow().tzinfo)


@dataclass(frozen=True)
class Counts:
    """What the page shows: the snapshot (None while the first count runs) and whether it is current."""

    snapshot: Snapshot | None
    current: bool


@dataclass
class _Entry:
    snapshot: Snapshot | None = None
    loaded: bool = False                   # the stored snapshot was read once
    refreshing: bool = False
    refreshed: threading.Event = field(default_factory=threading.Event)
    asked_at: datetime = _NEVER
    changed_at: datetime = _NEVER          # an action here changed the rows: older counts are not current


class TallyCache:
    """`get(campaign_id)`: the counts to show, as the module docstring says.

    `load(id)`: the stored snapshot or None; `refresh(id)`: a new scan, stored."""

    def __init__(self, load: Callable[[int], Snapshot | None], refresh: Callable[[int], Snapshot], *,
                 fresh_s: float = FRESH_S, current_s: float = CURRENT_S, first_wait_s: float = FIRST_WAIT_S,
                 forget_s: float = FORGET_S, clock: Callable[[], datetime] = utcnow,
                 background: Callable[[Callable[[], None]], None] | None = None) -> None:
        self._load, self._refresh_one, self._clock = load, refresh, clock
        self._fresh, self._current = timedelta(seconds=fresh_s), timedelta(seconds=current_s)
        self._first_wait_s, self._forget = first_wait_s, timedelta(seconds=forget_s)
        self._background = background or _thread
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}

    def get(self, key: int) -> Counts:
        now = self._clock()
        with self._lock:
            self._forget_idle(now)
            entry = self._entries.setdefault(key, _Entry())
            entry.asked_at = now
            must_load = not entry.loaded
        if must_load:
            self._adopt(entry, self._load(key))
            entry.loaded = True
        with self._lock:
            snapshot = entry.snapshot
            if snapshot is not None and now - snapshot.taken_at < self._fresh_for(snapshot) and snapshot.taken_at >= entry.changed_at:
                return Counts(snapshot, True)
            if not entry.refreshing:
                entry.refreshing = True
                entry.refreshed.clear()
                self._background(lambda: self._refresh(key, entry))
            refreshed = entry.refreshed
        if snapshot is None:
            refreshed.wait(self._first_wait_s)
            with self._lock:
                snapshot = entry.snapshot
        return Counts(snapshot, self._is_current(entry, snapshot))

    def forget(self, key: int) -> None:
        """After an action changed `key`'s rows: what is kept predates it, so it is refreshed and,
        until then, shown with its time."""
        with self._lock:
            now = self._clock()
            entry = self._entries.setdefault(key, _Entry(asked_at=now))
            entry.changed_at = now

    def _fresh_for(self, snapshot: Snapshot) -> timedelta:
        return max(self._fresh, timedelta(milliseconds=SCAN_SHARE_FACTOR * snapshot.scan_ms))

    def _is_current(self, entry: _Entry, snapshot: Snapshot | None) -> bool:
        return (snapshot is not None and self._clock() - snapshot.taken_at < self._current
                and snapshot.taken_at >= entry.changed_at)

    def _adopt(self, entry: _Entry, snapshot: Snapshot | None) -> None:
        with self._lock:
            if snapshot is not None and (entry.snapshot is None or snapshot.taken_at > entry.snapshot.taken_at):
                entry.snapshot = snapshot

    def _refresh(self, key: int, entry: _Entry) -> None:
        try:
            stored = self._load(key)  # another process or beat's sweep may have just counted it
            if stored is not None and self._clock() - stored.taken_at < self._fresh_for(stored) and stored.taken_at >= entry.changed_at:
                self._adopt(entry, stored)
            else:
                self._adopt(entry, self._refresh_one(key))
        except Exception:  # noqa: BLE001 - viewers keep the older counts, labelled with their time; the next view retries
            log.warning("background tally of campaign %s failed", key, exc_info=True)
        finally:
            with self._lock:
                entry.refreshing = False
                entry.refreshed.set()

    def _forget_idle(self, now: datetime) -> None:
        for key in [k for k, e in self._entries.items() if now - e.asked_at > self._forget and not e.refreshing]:
            del self._entries[key]


def _thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="console-tally", daemon=True).start()


_caches: "weakref.WeakKeyDictionary[object, TallyCache]" = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def tallies_for(rt: "Runtime") -> TallyCache:
    """The process's tally cache for `rt`'s database: snapshots read and scans run on the read
    sessions, stored through the primary."""
    with _caches_lock:
        cache = _caches.get(rt)
        if cache is None:
            def load(campaign_id: int) -> Snapshot | None:
                with rt.read_sessions() as session:
                    return snapshots.load(session, campaign_id)

            def refresh(campaign_id: int) -> Snapshot:
                snapshot = snapshots.take(rt.read_sessions, campaign_id, serial=True)   # people are served meanwhile
                try:
                    snapshots.store(rt, snapshot)
                except Exception:  # noqa: BLE001 - this process still shows it; beat or the next scan stores one
                    log.warning("could not store the tally of campaign %s", campaign_id, exc_info=True)
                return snapshot

            cache = _caches[rt] = TallyCache(load, refresh)
        return cache
