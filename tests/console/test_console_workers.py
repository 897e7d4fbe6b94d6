"""The Health page's "workers seen recently": one bounded ping, reused for a few seconds, and a
worker that stops answering stays listed with when it was last seen."""

from __future__ import annotations

import threading
import time

from worker.console.workers import WorkerRoll, celery_ping


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_second_look_within_the_cache_time_sends_no_ping_and_a_later_one_does() -> None:
    clock, pings = Clock(), []
    roll = WorkerRoll(lambda: pings.append(1) or ["celery@a"], clock=clock, cache_s=5.0)
    first = roll.roll()
    clock.now += 4.9
    second = roll.roll()
    assert len(pings) == 1 and first == second
    assert [(w.hostname, w.last_seen, w.answering) for w in first.workers] == [("celery@a", 1_000.0, True)]
    clock.now += 0.1
    roll.roll()
    assert len(pings) == 2


def test_a_worker_that_stops_answering_is_listed_as_not_answering_with_its_last_time_then_forgotten() -> None:
    clock = Clock()
    answering = {"celery@a", "celery@b"}
    roll = WorkerRoll(lambda: sorted(answering), clock=clock, cache_s=5.0, forget_s=60.0)
    roll.roll()
    answering.discard("celery@a")
    clock.now += 10
    workers = roll.roll().workers
    assert [(w.hostname, w.answering, w.last_seen) for w in workers] == [("celery@b", True, 1_010.0), ("celery@a", False, 1_000.0)]
    clock.now += 60
    assert [w.hostname for w in roll.roll().workers] == ["celery@b"]


def test_a_ping_that_cannot_be_sent_says_so_and_keeps_the_workers_as_not_answering() -> None:
    clock, broken = Clock(), []

    def ping() -> list[str]:
        if broken:
            raise ConnectionError("broker down at redis://:secret@host")
        return ["celery@a"]

    roll = WorkerRoll(ping, clock=clock, cache_s=1.0)
    roll.roll()
    broken.append(True)
    clock.now += 2
    result = roll.roll()
    assert result.problem == "the ping could not be sent (ConnectionError)"  # the message (a URL) is not shown
    assert [(w.hostname, w.answering) for w in result.workers] == [("celery@a", False)]


def test_viewers_arriving_together_share_one_ping() -> None:
    pings = []

    def slow_ping() -> list[str]:
        pings.append(1)
        time.sleep(0.2)
        return ["celery@a"]

    roll = WorkerRoll(slow_ping, cache_s=5.0)
    threads = [threading.Thread(target=roll.roll) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pings) == 1


def test_celery_ping_asks_with_the_timeout_and_lists_the_hostnames() -> None:
    calls = []

    class Control:
        def ping(self, timeout: float) -> list[dict]:
            calls.append(timeout)
            return [{"celery@a": {"ok": "pong"}}, {"celery@b": {"ok": "pong"}}]

    class App:
        control = Control()

    assert celery_ping(App(), timeout_s=1.0)() == ["celery@a", "celery@b"]
    assert calls == [1.0]
