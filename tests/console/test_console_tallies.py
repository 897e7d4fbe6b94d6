"""The campaign page's counts (worker.console.tallies): a snapshot served at once and refreshed behind
it, the stored one read by a process that has none, a never-counted campaign waited for only
briefly, counts older than CURRENT_S or older than an action labelled as such, viewers sharing
one scan, and a scan another process just stored adopted instead of scanning again."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from scheduler.snapshots import Snapshot
from worker.console.tallies import TallyCache

T0 = datetime(2026, 12, 3, 10, 0, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Store:
    """The stored snapshots (what `campaign_tallies` holds) and a counting scan that stores too."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.rows, self.scans, self.loads = clock, {}, [], 0

    def load(self, key: int) -> Snapshot | None:
        self.loads += 1
        return self.rows.get(key)

    def refresh(self, key: int) -> Snapshot:
        self.scans.append(key)
        snapshot = Snapshot(key, len(self.scans), self.clock(), 400)  # the tally: which scan made it
        self.rows[key] = snapshot
        return snapshot


def cache_for(clock: Clock, store: Store, queued: list | None = None, **kw) -> TallyCache:  # noqa: ANN003
    background = queued.append if queued is not None else None
    return TallyCache(store.load, store.refresh, fresh_s=1.0, current_s=5.0, clock=clock, background=background, **kw)


def test_a_snapshot_younger_than_fresh_is_served_without_a_scan() -> None:
    clock = Clock()
    store = Store(clock)
    store.refresh(7)
    cache = cache_for(clock, store)
    clock.advance(0.5)
    first, second = cache.get(7), cache.get(7)
    assert first.snapshot.tally == 1 and first.current and second == first
    assert store.scans == [7] and store.loads == 1   # read once, then kept in this process


def test_an_api_that_just_started_shows_the_stored_snapshot_at_once_labelled_with_its_time() -> None:
    # Given beat's sweep stored a snapshot 30 s ago, when a freshly started api is asked for the page
    clock, queued = Clock(), []
    store = Store(clock)
    store.refresh(7)
    clock.advance(30)
    counts = cache_for(clock, store, queued).get(7)
    # then it shows those counts without waiting for a scan, not as current, and one refresh is queued
    assert counts.snapshot.tally == 1 and not counts.current
    assert store.scans == [7] and len(queued) == 1
    queued.pop()()
    assert store.scans == [7, 7]


def test_a_stale_snapshot_is_served_at_once_while_one_background_scan_replaces_it() -> None:
    clock, queued = Clock(), []
    store = Store(clock)
    store.refresh(7)
    cache = cache_for(clock, store, queued)
    cache.get(7)
    clock.advance(2)
    a, b = cache.get(7), cache.get(7)
    assert a.snapshot.tally == b.snapshot.tally == 1 and a.current     # 2 s old: current enough, no label
    assert len(queued) == 1                                             # one refresh asked for, not two
    queued.pop()()
    assert cache.get(7).snapshot.tally == 2


def test_a_campaign_whose_scan_is_slow_is_recounted_less_often() -> None:
    # Given a snapshot whose scan took 1 s (a big campaign), it is reused for 4 s, not 1 s
    clock, queued = Clock(), []
    store = Store(clock)
    store.rows[7] = Snapshot(7, 1, clock(), 1000)
    cache = cache_for(clock, store, queued)
    clock.advance(3.5)
    assert cache.get(7).current and queued == []
    clock.advance(1)
    assert cache.get(7).current and len(queued) == 1


def test_a_never_counted_campaign_waits_briefly_for_its_first_scan() -> None:
    clock = Clock()
    store = Store(clock)
    counts = cache_for(clock, store, first_wait_s=5.0).get(7)   # a small campaign: the scan is quick
    assert counts.snapshot.tally == 1 and counts.current and store.scans == [7]


def test_a_slow_first_scan_shows_counting_then_the_counts() -> None:
    clock = Clock()
    release = threading.Event()

    class SlowStore(Store):
        def refresh(self, key: int) -> Snapshot:
            release.wait(60)
            return super().refresh(key)

    store = SlowStore(clock)
    cache = cache_for(clock, store, first_wait_s=0.05)
    started = time.monotonic()
    counts = cache.get(7)
    # it did not wait for the scan (held until `release`, 60 s at most): half that is a bound no busy machine reaches
    assert counts.snapshot is None and not counts.current and time.monotonic() - started < 30
    release.set()
    deadline = time.monotonic() + 60
    while cache.get(7).snapshot is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get(7).snapshot.tally == 1 and store.scans == [7]


def test_counts_older_than_an_action_are_labelled_until_a_scan_after_it() -> None:
    clock, queued = Clock(), []
    store = Store(clock)
    store.refresh(7)
    cache = cache_for(clock, store, queued)
    assert cache.get(7).current
    clock.advance(0.1)
    cache.forget(7)                        # e.g. cancel: its rows changed
    after = cache.get(7)
    assert after.snapshot.tally == 1 and not after.current and len(queued) == 1
    clock.advance(0.1)
    queued.pop()()
    assert cache.get(7).snapshot.tally == 2 and cache.get(7).current


def test_an_action_before_this_process_looked_still_labels_the_stored_counts() -> None:
    clock = Clock()
    store = Store(clock)
    store.refresh(7)
    cache = cache_for(clock, store, [])
    clock.advance(0.1)
    cache.forget(7)                        # the POST; the redirected GET comes next
    assert not cache.get(7).current


def test_the_refresh_adopts_a_snapshot_another_process_just_stored() -> None:
    clock, queued = Clock(), []
    store = Store(clock)
    store.refresh(7)
    cache = cache_for(clock, store, queued)
    cache.get(7)
    clock.advance(3)
    cache.get(7)
    store.rows[7] = Snapshot(7, 99, clock(), 400)   # the other api process (or beat) scanned meanwhile
    queued.pop()()
    assert cache.get(7).snapshot.tally == 99 and store.scans == [7]


def test_a_failed_refresh_keeps_the_older_counts_and_allows_the_next() -> None:
    clock, queued = Clock(), []
    store = Store(clock)
    store.refresh(7)
    cache = cache_for(clock, store, queued)
    cache.get(7)

    def broken(key: int) -> Snapshot:
        raise ConnectionError("database gone")

    store.refresh = broken  # type: ignore[method-assign]
    cache._refresh_one = broken
    clock.advance(10)
    assert cache.get(7).snapshot.tally == 1
    queued.pop()()                                   # fails, logged
    counts = cache.get(7)
    assert counts.snapshot.tally == 1 and not counts.current and len(queued) == 1


def test_campaigns_are_kept_apart_and_an_unwatched_one_is_dropped() -> None:
    clock = Clock()
    store = Store(clock)
    cache = cache_for(clock, store, forget_s=60.0, first_wait_s=5.0)
    assert cache.get(1).snapshot.campaign_id == 1 and cache.get(2).snapshot.campaign_id == 2
    clock.advance(61)
    cache.get(3)
    assert set(cache._entries) == {3}


def test_viewers_arriving_together_at_a_never_counted_campaign_share_one_scan() -> None:
    clock = Clock()

    class SlowStore(Store):
        def refresh(self, key: int) -> Snapshot:
            time.sleep(0.2)
            return super().refresh(key)

    store = SlowStore(clock)
    cache = cache_for(clock, store, first_wait_s=5.0)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(7))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.scans == [7] and [c.snapshot.tally for c in results] == [1] * 8
