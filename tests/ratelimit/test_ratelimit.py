"""The shared rate limiter: the same test bodies run against the in-memory and the Redis limiter.

Time-dependent tests drive an injected clock, so they are exact; the contention tests use real
time (and, for Redis, the server's clock) with many threads and OS processes.
"""

from __future__ import annotations

import multiprocessing
import random
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from worker.errors import LimiterUnavailable
from worker.ratelimit import (
    LimiterState,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    Reservation,
    build_rate_limiter,
)
from worker.ratelimit.base import VENDOR_REPORT_DEFER_MAX_S
from worker.ratelimit.redis import SCOPES_KEY, _Report, hash_tag, processes_key, scope_keys
from worker.settings import RateLimit, Settings

HOUR_RATE = "1000/h"        # the documented plan: a slot every 3.6 s
SLOT_S = 3.6
CONTENTION_RATE = "50/s"
CONTENTION_DURATION_S = 3.0
SPAWN_DEADLINE_S = 120.0   # how long the contention processes may take to all be ready


class FakeClock:
    """Unix time that moves only when told; starts at the real time so Redis TTLs stay sane."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """Builds limiters of one kind; `peer` is another worker's view of the same shared state."""

    kind: str
    redis_url: str | None
    clock: FakeClock

    def limiter(self, rate: str = HOUR_RATE, burst: int = 1, *, real_clock: bool = False, scopes: tuple[str, ...] = ()) -> RateLimiter:
        clock = None if real_clock else self.clock
        if self.kind == "memory":
            return MemoryRateLimiter(rate=RateLimit.parse(rate), burst=burst, scopes=scopes, clock=clock or time.time)
        client = redis.Redis.from_url(self.redis_url)
        return RedisRateLimiter(client, rate=RateLimit.parse(rate), burst=burst, scopes=scopes, clock=clock)

    def peer(self, limiter: RateLimiter, rate: str = HOUR_RATE, burst: int = 1) -> RateLimiter:
        # In memory, "every worker" is every thread of one process: the same object.
        return limiter if self.kind == "memory" else self.limiter(rate, burst)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Backend(kind=request.param, redis_url=url, clock=FakeClock())


@pytest.fixture
def scope() -> str:
    # Tests share one Redis db per run: each gets its own workspace.
    return f"ws-{uuid.uuid4().hex[:8]}:button"


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-4)


def test_paces_at_the_configured_rate(backend: Backend, scope: str) -> None:
    # Given 1000/h with burst 1, when three workers ask at once,
    # then the first goes now, the second in 3.6 s, the third (7.2 s away) is told to come back.
    limiter = backend.limiter()
    first = limiter.acquire(scope, max_wait_s=5)
    second = limiter.acquire(scope, max_wait_s=5)
    third = limiter.acquire(scope, max_wait_s=5)
    assert (first.granted, first.wait_s, first.reason) == (True, 0.0, "ok")
    assert (second.granted, second.wait_s, second.reason) == (True, approx(SLOT_S), "paced")
    assert (third.granted, third.wait_s, third.reason) == (False, approx(2 * SLOT_S), "paced")
    # One slot every 3.6 s from then on.
    backend.clock.advance(2 * SLOT_S)
    assert limiter.acquire(scope, max_wait_s=0) == Reservation(True, 0.0, "ok")
    backend.clock.advance(SLOT_S)
    assert limiter.acquire(scope, max_wait_s=0) == Reservation(True, 0.0, "ok")
    assert limiter.acquire(scope, max_wait_s=0).wait_s == approx(SLOT_S)


def test_burst_goes_back_to_back_then_paces(backend: Backend, scope: str) -> None:
    limiter = backend.limiter(burst=3)
    assert [limiter.acquire(scope, max_wait_s=0).granted for _ in range(3)] == [True, True, True]
    fourth = limiter.acquire(scope, max_wait_s=0)
    assert (fourth.granted, fourth.wait_s) == (False, approx(SLOT_S))
    # An idle period refills the burst, but never beyond it.
    backend.clock.advance(100 * SLOT_S)
    assert [limiter.acquire(scope, max_wait_s=0).granted for _ in range(4)] == [True, True, True, False]


def test_not_granted_reserves_nothing(backend: Backend, scope: str) -> None:
    # Given one slot taken, when many callers refuse to wait, the next slot is still 3.6 s away.
    limiter = backend.limiter()
    limiter.acquire(scope, max_wait_s=0)
    refused = [limiter.acquire(scope, max_wait_s=1.0) for _ in range(20)]
    assert all(not r.granted and r.wait_s == approx(SLOT_S) for r in refused)
    granted = limiter.acquire(scope, max_wait_s=SLOT_S)
    assert (granted.granted, granted.wait_s) == (True, approx(SLOT_S))


def test_scopes_have_separate_budgets(backend: Backend, scope: str) -> None:
    limiter = backend.limiter()
    other = scope.replace(":button", ":text")
    assert limiter.acquire(scope, max_wait_s=0).granted
    assert limiter.acquire(other, max_wait_s=0).granted


def test_block_stops_every_worker_until_it_expires(backend: Backend, scope: str) -> None:
    limiter = backend.limiter()
    other_worker = backend.peer(limiter)
    now = backend.clock.now
    limiter.block(scope, until=now + 60)
    refused = other_worker.acquire(scope, max_wait_s=5)
    assert (refused.granted, refused.wait_s, refused.reason) == (False, approx(60), "blocked")
    # A later, shorter block never shortens the longer one.
    other_worker.block(scope, until=now + 10)
    assert limiter.acquire(scope, max_wait_s=5).wait_s == approx(60)
    # Within max_wait_s: granted, with the wait.
    backend.clock.advance(58)
    waiting = other_worker.acquire(scope, max_wait_s=5)
    assert (waiting.granted, waiting.wait_s, waiting.reason) == (True, approx(2), "blocked")
    # After it passes, pacing alone decides (the slot above went at the block's end).
    backend.clock.advance(2 + SLOT_S)
    assert limiter.acquire(scope, max_wait_s=0) == Reservation(True, 0.0, "ok")
    assert limiter.state(scope).blocked_until is None


def test_a_longer_block_extends_the_shorter_one(backend: Backend, scope: str) -> None:
    limiter = backend.limiter()
    limiter.block(scope, until=backend.clock.now + 10)
    limiter.block(scope, until=backend.clock.now + 3600, reason="429")
    assert limiter.acquire(scope, max_wait_s=0).wait_s == approx(3600)


def test_vendor_exhausted_waits_for_reset(backend: Backend, scope: str) -> None:
    # Given the vendor says 0 left until reset in 100 s (another system shares the account),
    limiter = backend.limiter()
    reset_at = backend.clock.now + 100
    limiter.observe(scope, limit=1000, remaining=0, reset_at=reset_at)
    # then nobody sends before the reset, although our own pacing would allow it,
    refused = limiter.acquire(scope, max_wait_s=5)
    assert (refused.granted, refused.wait_s, refused.reason) == (False, approx(100), "vendor_exhausted")
    # a caller willing to wait gets the first slot of the new window, and pacing follows it,
    first = limiter.acquire(scope, max_wait_s=200)
    assert (first.granted, first.wait_s, first.reason) == (True, approx(100), "vendor_exhausted")
    second = limiter.acquire(scope, max_wait_s=200)
    assert (second.granted, second.wait_s) == (True, approx(100 + SLOT_S))
    # and once the reset passes, the old window's zero no longer counts.
    backend.clock.advance(100 + 2 * SLOT_S)
    assert limiter.acquire(scope, max_wait_s=0) == Reservation(True, 0.0, "ok")


def test_vendor_remaining_lower_than_ours_is_spread_until_reset(backend: Backend, scope: str) -> None:
    # Given 10 left and 360 s to reset (our pacing would allow 100), the 10 are spread 36 s apart
    # rather than burnt in 36 s, and the 11th waits for the reset.
    limiter = backend.limiter()
    reset_at = backend.clock.now + 360
    limiter.observe(scope, limit=1000, remaining=10, reset_at=reset_at)
    waits = [limiter.acquire(scope, max_wait_s=1000) for _ in range(11)]
    assert [w.wait_s for w in waits[:10]] == [approx(36 * k) for k in range(10)]
    assert [w.reason for w in waits[:2]] == ["ok", "paced"]
    assert (waits[10].wait_s, waits[10].reason) == (approx(360), "vendor_exhausted")
    assert limiter.state(scope).vendor_remaining == 0


def test_vendor_remaining_is_spread_as_time_passes(backend: Backend, scope: str) -> None:
    # The send task does not queue 10 sleepers: it asks again later. The spacing holds.
    limiter = backend.limiter()
    limiter.observe(scope, limit=1000, remaining=4, reset_at=backend.clock.now + 100)
    assert limiter.acquire(scope, max_wait_s=5).granted
    refused = limiter.acquire(scope, max_wait_s=5)
    assert (refused.granted, refused.wait_s, refused.reason) == (False, approx(25), "paced")
    backend.clock.advance(25)
    assert limiter.acquire(scope, max_wait_s=0).granted
    # The vendor reports fewer left (someone else sent): the spacing slows further.
    limiter.observe(scope, limit=1000, remaining=1, reset_at=backend.clock.now + 75)
    assert limiter.acquire(scope, max_wait_s=0).wait_s == approx(75 / 2)


def test_plentiful_vendor_remaining_leaves_our_pacing_alone(backend: Backend, scope: str) -> None:
    limiter = backend.limiter(burst=3)
    limiter.observe(scope, limit=1000, remaining=900, reset_at=backend.clock.now + 3000)
    assert [limiter.acquire(scope, max_wait_s=0).granted for _ in range(3)] == [True, True, True]
    assert limiter.acquire(scope, max_wait_s=0).wait_s == approx(SLOT_S)
    assert limiter.state(scope).vendor_remaining == 897


def test_out_of_order_reports_never_raise_remaining(backend: Backend, scope: str) -> None:
    limiter = backend.limiter()
    reset_at = backend.clock.now + 1800
    limiter.observe(scope, limit=1000, remaining=50, reset_at=reset_at)
    limiter.observe(scope, limit=1000, remaining=60, reset_at=reset_at)   # an older response, late
    assert limiter.state(scope).vendor_remaining == 50
    limiter.observe(scope, limit=1000, remaining=40, reset_at=reset_at)
    assert limiter.state(scope).vendor_remaining == 40
    limiter.observe(scope, limit=None, remaining=45, reset_at=None)       # headers missing a reset
    assert limiter.state(scope).vendor_remaining == 40


def test_a_new_window_starts_from_the_reported_remaining(backend: Backend, scope: str) -> None:
    limiter = backend.limiter()
    reset_at = backend.clock.now + 30
    limiter.observe(scope, limit=1000, remaining=0, reset_at=reset_at)
    limiter.observe(scope, limit=1000, remaining=999, reset_at=reset_at + 3600)
    assert limiter.acquire(scope, max_wait_s=0) == Reservation(True, 0.0, "ok")
    # A straggler from the old window says nothing about the new one.
    limiter.observe(scope, limit=1000, remaining=0, reset_at=reset_at)
    state = limiter.state(scope)
    assert (state.vendor_remaining, state.vendor_reset_at) == (998, approx(reset_at + 3600))


def test_state_reports_everything(backend: Backend, scope: str) -> None:
    limiter = backend.limiter(burst=2, scopes=("configured:button",))
    now = backend.clock.now
    fresh = limiter.state(scope)
    assert fresh == LimiterState(
        scope=scope, limit="1000/h", burst=2, vendor_limit=None, vendor_remaining=None,
        vendor_reset_at=None, blocked_until=None, next_free_at=approx(now), as_of=approx(now),
    )
    limiter.observe(scope, limit=1000, remaining=700, reset_at=now + 3000)
    for _ in range(3):
        limiter.acquire(scope, max_wait_s=10)
    limiter.block(scope, until=now + 30, reason="429")
    state = limiter.state(scope)
    assert (state.vendor_limit, state.vendor_remaining, state.vendor_reset_at) == (1000, 697, approx(now + 3000))
    assert (state.blocked_until, state.blocked_reason) == (approx(now + 30), "429")
    assert state.next_free_at == approx(now + 30)
    backend.clock.advance(40)
    # Three slots went at 0, 0 and 3.6 s: the next is free now.
    assert limiter.state(scope).next_free_at == approx(now + 40)
    assert {"configured:button", scope} <= set(limiter.scopes())


def test_build_rate_limiter_picks_redis_when_configured(redis_url: str) -> None:
    settings = Settings(rate_limit=RateLimit.parse("80/s"), rate_burst=4)
    assert isinstance(build_rate_limiter(settings), MemoryRateLimiter)
    shared = build_rate_limiter(settings.replace(redis_url=redis_url))
    assert isinstance(shared, RedisRateLimiter)
    # the vendor's whole limit per window; AWAL_RATE_HEADROOM keeps the end of each window free instead
    assert (shared.state("ws:button").limit, shared.state("ws:button").burst) == ("80/s", 4)
    assert shared.pacing.guard_s == approx(settings.rate_headroom)


def test_raising_the_configured_rate_takes_effect_at_once(redis_url: str, scope: str) -> None:
    # Given a worker under 1/h took a slot: the next one is an hour away
    clock = FakeClock()
    slow = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse("1/h"), burst=1, clock=clock)
    assert slow.acquire(scope, max_wait_s=5).granted
    assert not slow.acquire(scope, max_wait_s=5).granted
    # When workers restart with AWAL_RATE_LIMIT=100/s
    fast = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse("100/s"), burst=1, clock=clock)
    # Then they wait at most one reservation horizon (max wait + an interval), not the old rate's hour
    reservation = fast.acquire(scope, max_wait_s=5)
    assert reservation.wait_s <= 5 + 0.01 + 1e-6
    clock.advance(reservation.wait_s)
    assert fast.acquire(scope, max_wait_s=5).granted


def test_redis_keys_expire_when_idle(redis_url: str, scope: str) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, rate=RateLimit.parse(HOUR_RATE), burst=1)
    limiter.acquire(scope, max_wait_s=0)
    limiter.observe(scope, limit=1000, remaining=10, reset_at=time.time() + 60)
    limiter.block(scope, until=time.time() + 5)
    keys = [key for key in scope_keys(scope) if client.exists(key)]
    assert len(keys) == 4
    assert all(0 < client.pttl(key) for key in keys)
    assert client.pttl(scope_keys(scope).windows) <= 3600 * 1000   # the end of the slot's window
    assert client.pttl(scope_keys(scope).tat) <= SLOT_S * 1000


def test_redis_unreachable_raises_limiter_unavailable_a_transient_error(scope: str) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(dead, rate=RateLimit.parse(HOUR_RATE), burst=1)
    for call in (lambda: limiter.acquire(scope, max_wait_s=5), lambda: limiter.state(scope), limiter.scopes):
        with pytest.raises(LimiterUnavailable) as info:
            call()
        assert info.value.retryable and isinstance(info.value.__cause__, redis.exceptions.ConnectionError)


# --- Redis Cluster: one scope, one slot (issue 12 item 18) ---------------------------------------

@pytest.mark.parametrize("scope_name", ["shop.example:button", "default:button", "a:b:c", "", "{x}:button",
                                        "}odd{:button", "ws-{a}-{b}", "scopes"])
def test_every_key_of_one_scope_maps_to_one_cluster_slot(scope_name: str) -> None:
    """Issue 12 item 18: the keys one gcra.lua call is handed share a hash tag, so Redis Cluster
    puts them in one slot (CRC16 as redis-py computes it), whatever braces the scope holds."""
    keys = scope_keys(scope_name)
    assert len({key_slot(key.encode()) for key in keys}) == 1, keys
    assert len(set(keys)) == 4
    assert key_slot(processes_key(scope_name).encode()) == key_slot(keys[0].encode())
    tag = hash_tag(scope_name)
    assert tag and "{" not in tag and "}" not in tag
    assert all(f"{{{tag}}}" in key for key in keys)


def test_different_scopes_have_different_keys() -> None:
    """Issue 12 item 18: the hash tag keeps scopes apart (a digest only for scopes with braces)."""
    scopes = ["shop.example:button", "shop.example:text", "{shop.example}:button", "shop.example}:button", ""]
    assert len({scope_keys(s).tat for s in scopes}) == len(scopes)


def test_every_script_touches_only_the_keys_it_is_handed() -> None:
    """Issue 12 item 18: no Lua script builds a key name itself. Redis Cluster routes a script by
    its KEYS; a key made up inside (a string or a concatenation) may live on another node."""
    from worker import beatlock

    sources = {path.name: path.read_text() for path in Path(beatlock.__file__).parent.rglob("*.lua")}
    sources["beatlock._RENEW"] = beatlock._RENEW
    assert {"gcra.lua", "scopes.lua"} <= set(sources)
    for name, source in sources.items():
        code = re.sub(r"--\[\[.*?\]\]|--[^\n]*", "", source, flags=re.S)
        calls = re.findall(r"redis\.call\(\s*'(\w+)'\s*(?:,\s*([^,)]+))?", code)
        assert calls, f"{name}: no redis.call found"
        for command, first in calls:
            if command.upper() == "TIME":
                continue
            assert re.fullmatch(r"KEYS\[\d+\]", first.strip()), f"{name}: {command} on {first!r}"


def _free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000, which Redis Cluster also binds) is free
    too: an ephemeral port above 55535 has no bus port, and redis-server exits at once."""
    for port in random.sample(range(20000, 30000), 200):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise AssertionError("no free port pair for a Redis Cluster node")


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[redis.Redis]:
    """A one-node Redis Cluster holding all 16384 slots: it refuses a script whose KEYS span slots
    (CROSSSLOT), as every cluster does."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = _free_cluster_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", str(tmp_path / "nodes.conf"), "--dir", str(tmp_path),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
                break
            except redis.ConnectionError:
                if process.poll() is not None:   # it could not start (e.g. the port was taken meanwhile)
                    pytest.fail(f"redis-server --cluster-enabled exited {process.returncode}: "
                                f"{process.stdout.read().decode(errors='replace')[-2000:]}")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            time.sleep(0.05)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def test_limiter_works_on_redis_cluster(cluster_node: redis.Redis) -> None:
    """Issue 12 item 18: on a Redis Cluster node every limiter call runs (before: CROSSSLOT, the
    scopes index was handed to the script with the scope's keys) and the accounting is the same
    as on one Redis: pacing, vendor window, block, state and the scopes index."""
    clock = FakeClock()
    limiter = RedisRateLimiter(cluster_node, rate=RateLimit.parse(HOUR_RATE), burst=1, clock=clock)
    scope = "shop.example:button"
    assert limiter.acquire(scope, max_wait_s=0).granted
    second = limiter.acquire(scope, max_wait_s=5)
    assert (second.granted, second.wait_s, second.reason) == (True, approx(SLOT_S), "paced")
    limiter.observe(scope, limit=1000, remaining=0, reset_at=clock.now + 60)
    assert limiter.acquire(scope, max_wait_s=5).reason == "vendor_exhausted"
    limiter.block(scope, until=clock.now + 120)
    state = limiter.state(scope)
    assert (state.vendor_remaining, state.blocked_until, state.next_free_at) == (0, approx(clock.now + 120), approx(clock.now + 120))
    assert limiter.scopes() == [scope]
    assert {key_slot(key) for key in cluster_node.keys("buttoncast:ratelimit:{*")} == {key_slot(scope_keys(scope).tat.encode())}
    assert cluster_node.zscore(SCOPES_KEY, scope) == approx(clock.now)


def test_scopes_index_is_marked_once_per_interval_not_per_call(redis_url: str, scope: str) -> None:
    """Issue 12 item 18: the scopes index (another slot) is written by its own script, once per
    SCOPES_TOUCH_INTERVAL_S per process, so the send path stays one round trip per acquire."""
    client = redis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, rate=RateLimit.parse("100/s"), burst=100)
    limiter.acquire(scope, max_wait_s=0)
    assert scope in limiter.scopes()
    client.zrem(SCOPES_KEY, scope)
    for _ in range(5):
        assert limiter.acquire(scope, max_wait_s=0).granted
    assert scope not in {s.decode() for s in client.zrange(SCOPES_KEY, 0, -1)}   # not re-marked per call
    other = RedisRateLimiter(client, rate=RateLimit.parse("100/s"), burst=100)
    other.block(scope, until=time.time() + 1)
    assert scope in {s.decode() for s in client.zrange(SCOPES_KEY, 0, -1)}        # a fresh process marks it


# --- contention: real time, many threads and processes ------------------------------------------

def _hammer(acquire: Callable[[], Reservation], stop_at: float, slots: list[tuple[float, float]]) -> None:
    """Ask for slots until stop_at; record when each granted slot is due, as (earliest, latest).

    The limiter's clock read happens somewhere inside the call, so the slot lies between
    before + wait and after + wait (local and Redis clocks are the same machine's here).
    """
    while time.time() < stop_at:
        before = time.time()
        reservation = acquire()
        after = time.time()
        if reservation.granted:
            slots.append((before + reservation.wait_s, after + reservation.wait_s))
            time.sleep(reservation.wait_s)
        else:
            time.sleep(min(reservation.wait_s, 0.01))


def _hammer_process(args: tuple[str, str, object, int]) -> list[tuple[float, float]]:
    """One worker process: its own RedisRateLimiter, four threads. All start together at `ready`
    (a barrier shared by the processes), however long a busy machine takes to spawn them."""
    redis_url, scope, ready, threads = args
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse(CONTENTION_RATE), burst=1)
    limiter.state(scope)  # connect and load the script before the start
    slots: list[tuple[float, float]] = []
    ready.wait(SPAWN_DEADLINE_S)
    _run_threads(lambda: limiter.acquire(scope, max_wait_s=0.1), time.time() + CONTENTION_DURATION_S, slots, threads)
    return slots


def _run_threads(acquire: Callable[[], Reservation], stop_at: float, slots: list[tuple[float, float]], count: int) -> None:
    workers = [threading.Thread(target=_hammer, args=(acquire, stop_at, slots)) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _assert_within_rate(slots: list[tuple[float, float]], per_second: float, burst: int) -> None:
    """Never more than rate * span + burst in total, nor rate + burst in any 1-second window.

    Only slots certainly inside a window count against it (their whole uncertainty interval is),
    so scheduling jitter in the test cannot fail it, while an over-grant still does. How close to
    the rate the callers get is a speed, which a busy machine lowers (issue 25: 107 of 150 slots
    with the 2 cores shared): `bench/ratelimit_contention.py` prints it.
    """
    assert slots, "no slot was granted"
    span = max(latest for _, latest in slots) - min(earliest for earliest, _ in slots)
    assert len(slots) <= per_second * span + burst + 1
    busiest = max(
        1 + sum(1 for earliest, latest in slots if earliest >= start_latest and latest < start_earliest + 1.0)
        for start_earliest, start_latest in slots
    )
    print(f"{len(slots)} slots over {span:.2f} s, busiest second {busiest}")
    assert busiest <= per_second + burst, f"{busiest} slots in one second"


def test_contention_memory_threads() -> None:
    limiter = MemoryRateLimiter(rate=RateLimit.parse(CONTENTION_RATE), burst=1)
    slots: list[tuple[float, float]] = []
    _run_threads(lambda: limiter.acquire("ws:button", max_wait_s=0.1), time.time() + CONTENTION_DURATION_S, slots, 8)
    _assert_within_rate(slots, per_second=50, burst=1)


def test_contention_redis_processes(redis_url: str, scope: str) -> None:
    # Four OS processes, each with its own connection and four threads, on the server's clock.
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        ready = manager.Barrier(4)   # spawning takes a moment (many on a busy machine): everyone starts together
        per_process = pool.map(_hammer_process, [(redis_url, scope, ready, 4)] * 4)
    assert all(per_process), "every process got slots"
    _assert_within_rate([slot for slots in per_process for slot in slots], per_second=50, burst=1)


# --- Deferred vendor reports (issue 16 goal 3: one limiter round trip per message, same accounting) ---


class CountingScript:
    """Wraps a limiter's registered script and counts its calls (each is one Redis round trip)."""

    def __init__(self, script: Callable) -> None:
        self.script, self.ops = script, []

    def __call__(self, *, keys: list, args: list) -> object:
        self.ops.append(args[0])
        return self.script(keys=keys, args=args)


class ImmediateRedisLimiter(RedisRateLimiter):
    """The reference: every vendor report goes to Redis at once (what the limiter did before)."""

    def observe(self, scope: str, *, limit: int | None, remaining: int | None, reset_at: float | None) -> None:
        self._run("observe", scope, *_Report(limit, remaining, reset_at).argv())


def _counting(limiter: RedisRateLimiter) -> CountingScript:
    counting = CountingScript(limiter._script)
    limiter._script = counting
    return counting


def test_a_plentiful_report_in_the_same_window_travels_with_the_next_acquire(redis_url: str, scope: str) -> None:
    clock = FakeClock()
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse(HOUR_RATE), burst=5, clock=clock)
    peer = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse(HOUR_RATE), burst=5, clock=clock)
    calls = _counting(limiter)
    reset_at = clock.now + 3000
    limiter.observe(scope, limit=1000, remaining=900, reset_at=reset_at)   # a window this process had not reported
    assert calls.ops == ["observe"]
    # Given a later answer of the same window with plenty left, it costs no round trip of its own
    limiter.observe(scope, limit=1000, remaining=850, reset_at=reset_at)
    limiter.observe(scope, limit=1000, remaining=870, reset_at=reset_at)   # out of order: the lowest wins
    assert calls.ops == ["observe"]
    assert peer.state(scope).vendor_remaining == 900                       # not in Redis yet
    # and the next acquire carries it: applied first, then the slot counted against it.
    assert limiter.acquire(scope, max_wait_s=0).granted
    assert calls.ops == ["observe", "observe+acquire"]
    assert peer.state(scope).vendor_remaining == 849
    # A held report is also sent with this process's own `state` (what `limits` and the send path read).
    limiter.observe(scope, limit=1000, remaining=700, reset_at=reset_at)
    assert limiter.state(scope).vendor_remaining == 700
    assert calls.ops[-1] == "observe+state"


@pytest.mark.parametrize("report", [
    dict(limit=1000, remaining=99, reset_at=+3000),     # under VENDOR_REPORT_DEFER_MIN_REMAINING
    dict(limit=5000, remaining=400, reset_at=+3000),    # a changed limit, and under a tenth of it
    dict(limit=1000, remaining=0, reset_at=+3000),      # exhausted: every worker must stop now
    dict(limit=1000, remaining=900, reset_at=+3600),    # a new window
    dict(limit=1000, remaining=900, reset_at=None),     # no reset time
])
def test_a_report_that_could_change_an_answer_is_sent_at_once(redis_url: str, scope: str, report: dict) -> None:
    clock = FakeClock()
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse(HOUR_RATE), burst=1, clock=clock)
    limiter.observe(scope, limit=1000, remaining=950, reset_at=clock.now + 3000)
    limiter.observe(scope, limit=1000, remaining=940, reset_at=clock.now + 3000)   # held
    calls = _counting(limiter)
    offset = report["reset_at"]
    limiter.observe(scope, **dict(report, reset_at=None if offset is None else clock.now + offset))
    # the held report goes first, then this one: the order the script would have seen them in
    assert calls.ops == ["observe", "observe"]


def test_a_report_is_never_held_longer_than_the_limit(redis_url: str, scope: str) -> None:
    clock = FakeClock()
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse(HOUR_RATE), burst=1, clock=clock)
    monotonic = [100.0]
    limiter._monotonic = lambda: monotonic[0]
    reset_at = clock.now + 3000
    limiter.observe(scope, limit=1000, remaining=950, reset_at=reset_at)
    calls = _counting(limiter)
    limiter.observe(scope, limit=1000, remaining=940, reset_at=reset_at)
    monotonic[0] += VENDOR_REPORT_DEFER_MAX_S / 2
    limiter.observe(scope, limit=1000, remaining=930, reset_at=reset_at)
    assert calls.ops == []
    monotonic[0] += VENDOR_REPORT_DEFER_MAX_S / 2
    limiter.observe(scope, limit=1000, remaining=935, reset_at=reset_at)   # the first was held a full second
    assert calls.ops == ["observe"]
    assert limiter._held == {}
    fresh = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse(HOUR_RATE), burst=1, clock=clock)
    assert fresh.state(scope).vendor_remaining == 930


# Weighted towards what gets held (the same window, the same limit, plenty left), so that most
# examples hold reports; the rest are what must never be held.
_REPORTS = st.tuples(
    st.sampled_from([1000, 1000, 1000, None]),
    st.sampled_from([None, 0, 40, 99, 100, 150, 600, 700, 900, 1000]),
    st.sampled_from([3000.0, 3000.0, 3000.0, 3600.0, 30.0, None]),
)
_OPS = st.lists(st.one_of(
    st.tuples(st.just("observe"), _REPORTS),
    st.tuples(st.just("observe"), _REPORTS),
    st.tuples(st.just("observe"), _REPORTS),
    st.tuples(st.just("acquire"), st.sampled_from([0.0, 5.0, 400.0])),
    st.tuples(st.just("state"), st.none()),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 3.6, 40.0])),
    st.tuples(st.just("block"), st.sampled_from([2.0, 60.0])),
), min_size=1, max_size=30)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_deferring_reports_changes_no_answer_and_no_state(redis_url: str, ops: list) -> None:
    """Property: for any sequence of reports, acquires, reads, blocks and time, the deferring limiter
    returns the same reservations and shows the same state as one that sends every report at once."""
    clock = FakeClock()
    scope_a, scope_b = f"ws-{uuid.uuid4().hex[:8]}:button", f"ws-{uuid.uuid4().hex[:8]}:button"
    deferring = RedisRateLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse(HOUR_RATE), burst=3, clock=clock)
    reference = ImmediateRedisLimiter(redis.Redis.from_url(redis_url), rate=RateLimit.parse(HOUR_RATE), burst=3, clock=clock)
    base = clock.now
    for op, arg in ops:
        if op == "observe":
            limit, remaining, reset_in = arg
            report = dict(limit=limit, remaining=remaining, reset_at=None if reset_in is None else base + reset_in)
            deferring.observe(scope_a, **report)
            reference.observe(scope_b, **report)
        elif op == "acquire":
            assert deferring.acquire(scope_a, max_wait_s=arg) == reference.acquire(scope_b, max_wait_s=arg)
        elif op == "state":
            assert replace(deferring.state(scope_a), scope="") == replace(reference.state(scope_b), scope="")
        elif op == "block":
            deferring.block(scope_a, until=clock.now + arg)
            reference.block(scope_b, until=clock.now + arg)
        else:
            clock.advance(arg)
    assert replace(deferring.state(scope_a), scope="") == replace(reference.state(scope_b), scope="")
