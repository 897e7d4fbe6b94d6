"""The campaign page's tally cache: fresh tallies reused, stale ones served while one background
scan replaces them, old ones waited for, viewers arriving together sharing one scan, and an action
dropping the campaign's tally."""

from __future__ import annotations

import threading
import time

from worker.console.tallies import TallyCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting_scan():  # noqa: ANN201
    scans: list[int] = []

    def scan(key: int) -> tuple[int, int]:
        scans.append(key)
        return key, len(scans)
    return scan, scans


def test_a_tally_younger_than_fresh_is_served_without_a_scan() -> None:
    clock, (scan, scans) = Clock(), counting_scan()
    cache = TallyCache(scan, fresh_s=1.0, stale_s=5.0, clock=clock)
    assert cache.get(7) == (7, 1)
    clock.now += 0.9
    assert cache.get(7) == (7, 1) and scans == [7]


def test_a_stale_tally_is_served_at_once_while_one_background_scan_replaces_it() -> None:
    clock, (scan, scans) = Clock(), counting_scan()
    queued: list = []
    cache = TallyCache(scan, fresh_s=1.0, stale_s=5.0, clock=clock, background=queued.append)
    cache.get(7)
    clock.now += 2
    assert cache.get(7) == (7, 1) and cache.get(7) == (7, 1)  # the old tally, no waiting
    assert len(queued) == 1 and scans == [7]                  # one refresh asked for, not two
    queued.pop()()
    assert cache.get(7) == (7, 2)


def test_a_tally_older_than_stale_is_waited_for() -> None:
    clock, (scan, scans) = Clock(), counting_scan()
    cache = TallyCache(scan, fresh_s=1.0, stale_s=5.0, clock=clock, background=lambda work: None)
    cache.get(7)
    clock.now += 5
    assert cache.get(7) == (7, 2) and scans == [7, 7]


def test_forget_after_an_action_makes_the_next_view_scan() -> None:
    clock, (scan, scans) = Clock(), counting_scan()
    cache = TallyCache(scan, clock=clock)
    cache.get(7)
    cache.forget(7)
    assert cache.get(7) == (7, 2)


def test_campaigns_are_tallied_apart_and_an_unwatched_one_is_dropped() -> None:
    clock, (scan, scans) = Clock(), counting_scan()
    cache = TallyCache(scan, fresh_s=1.0, stale_s=5.0, forget_s=60.0, clock=clock)
    assert cache.get(1) == (1, 1) and cache.get(2) == (2, 2)
    clock.now += 61
    cache.get(3)
    assert set(cache._entries) == {3}


def test_a_failed_background_scan_keeps_the_older_tally_and_allows_the_next_refresh() -> None:
    clock, fail = Clock(), []
    queued: list = []

    def scan(key: int) -> int:
        if fail:
            raise ConnectionError("database gone")
        return 1

    cache = TallyCache(scan, fresh_s=1.0, stale_s=5.0, clock=clock, background=queued.append)
    cache.get(7)
    fail.append(True)
    clock.now += 2
    assert cache.get(7) == 1
    queued.pop()()                 # fails, logged
    assert cache.get(7) == 1 and len(queued) == 1  # another refresh may start


def test_viewers_arriving_together_at_a_missing_tally_share_one_scan() -> None:
    scans: list[int] = []

    def slow_scan(key: int) -> int:
        scans.append(key)
        time.sleep(0.2)
        return 42

    cache = TallyCache(slow_scan)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(7))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert scans == [7] and results == [42] * 8
