"""Rate limiter shared by every worker on every machine, in Redis.

All the logic is one Lua script (gcra.lua), run with EVALSHA: each call is one round trip and one
atomic step on the Redis server's clock. A worker never polls: it gets a slot with a wait, or a
time to come back.

Redis Cluster: the keys of one scope share the hash tag `{<scope>}`, so they live in one slot, and
the script touches only the keys it is handed in KEYS. The index of scopes (for `scopes()`) is a
key of its own in another slot: a second small script (scopes.lua) marks a scope in it, at most
once per SCOPES_TOUCH_INTERVAL_S per process, and never inside the accounting script.

Deferred reports: every vendor answer carries X-RateLimit-* headers, and sending each to Redis at
once cost a round trip per message. A report in the same window as the last one this process sent
(same limit and reset time), with at least VENDOR_REPORT_DEFER_MIN_REMAINING and a tenth of the limit
left, is held in the process and goes with its next `acquire` or `state` (one script call,
"observe+acquire"), which applies it first, exactly as an `observe` just before would have. Held
reports merge as the script would apply them (the lowest remaining wins); while reports keep
coming, one held VENDOR_REPORT_DEFER_MAX_S goes out with the next. A process that stops sending
keeps its last held report until its next call: other processes then see a plentiful count a
little high, never a low or exhausted one (those are never held). What a hold delays is a report
that lowers a plentiful count: the same as a vendor answer that arrived a little later, which the
accounting already allows (responses arrive out of order). A new window, a changed limit, a low or
exhausted count, or a report without a reset time is sent at once, with any held one before it.

Errors: when Redis is unreachable every method raises redis.exceptions.ConnectionError or
redis.exceptions.TimeoutError (both redis.exceptions.RedisError); the caller decides what to do.
"""

from __future__ import annotations

import hashlib
import threading
import time
from importlib import resources
from typing import Callable, Iterable, NamedTuple

import redis

from worker.errors import LimiterUnavailable
from worker.ratelimit.base import (
    SCOPES_TTL_S,
    VENDOR_GRACE_S,
    VENDOR_NO_RESET_TTL_S,
    VENDOR_REPORT_DEFER_MAX_S,
    VENDOR_REPORT_DEFER_MIN_REMAINING,
    WAIT_FLOORS,
    LimiterState,
    Pacing,
    Reservation,
)
from worker.settings import RateLimit

KEY_PREFIX = "buttoncast:ratelimit:"
SCOPES_KEY = KEY_PREFIX + "scopes"       # zset; a scope named "scopes" would not clash: its keys are {scope}:...
SCOPES_TOUCH_INTERVAL_S = 300.0           # a process re-marks a scope as used at most this often
REDIS_SOCKET_TIMEOUT_S = 2.0

_SCRIPT = resources.files(__package__).joinpath("gcra.lua").read_text(encoding="utf-8")
_SCOPES_SCRIPT = resources.files(__package__).joinpath("scopes.lua").read_text(encoding="utf-8")


class ScopeKeys(NamedTuple):
    """The Redis keys of one scope, in gcra.lua's KEYS order; one hash tag, so one cluster slot."""

    tat: str
    vendor: str
    blocked: str
    windows: str


def hash_tag(scope: str) -> str:
    """The scope itself; a digest of it when braces in it would end the tag early (or leave it empty)."""
    if scope and "{" not in scope and "}" not in scope:
        return scope
    return "sha256:" + hashlib.sha256(scope.encode("utf-8")).hexdigest()[:32]


def scope_keys(scope: str) -> ScopeKeys:
    prefix = f"{KEY_PREFIX}{{{hash_tag(scope)}}}:"
    return ScopeKeys(tat=prefix + "tat", vendor=prefix + "vendor", blocked=prefix + "blocked", windows=prefix + "windows")


def processes_key(scope: str) -> str:
    """The scope's live worker processes (worker.ratelimit.intake), in the scope's cluster slot."""
    return f"{KEY_PREFIX}{{{hash_tag(scope)}}}:processes"


# KEYS[1] processes zset (member -> expiry); ARGV: now or "", member, ttl_s ("" = leave: remove it)
_PROCESSES_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1e6 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[2]) else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


def _number(value: float | int | None) -> str:
    return "" if value is None else repr(float(value))


def _optional_float(raw: bytes | str) -> float | None:
    return float(raw) if raw not in (b"", "") else None


def _optional_int(raw: bytes | str) -> int | None:
    return int(raw) if raw not in (b"", "") else None


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class _Report(NamedTuple):
    """A vendor's X-RateLimit-* numbers (None where a header was missing)."""

    limit: int | None
    remaining: int | None
    reset_at: float | None

    def argv(self) -> list[str]:
        return ["" if self.limit is None else str(int(self.limit)),
                "" if self.remaining is None else str(int(self.remaining)), _number(self.reset_at)]


class _Held(NamedTuple):
    report: _Report
    since: float           # monotonic time it was first held


def _plentiful(report: _Report) -> bool:
    floor = max(VENDOR_REPORT_DEFER_MIN_REMAINING, (report.limit or 0) / 10)
    return report.remaining is not None and report.remaining >= floor


class RedisRateLimiter:
    """RateLimiter in Redis.

    `clock` is for tests only: None (the default) uses the Redis server's clock so that machines
    with skewed clocks agree; a callable returning unix seconds replaces it.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        rate: RateLimit,
        burst: int,
        headroom: float = 0.0,
        scopes: Iterable[str] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._pacing = Pacing(rate=rate, burst=burst, headroom=headroom)
        self._processes_script = client.register_script(_PROCESSES_SCRIPT)
        self._configured = set(scopes)
        self._clock = clock
        self._script = client.register_script(_SCRIPT)
        self._scopes_script = client.register_script(_SCOPES_SCRIPT)
        self._touched: dict[str, float] = {}   # scope -> monotonic time this process last marked it
        self._monotonic = time.monotonic       # how long a report is held; tests replace it
        self._lock = threading.Lock()          # guards the two below: worker threads share a limiter
        self._held: dict[str, _Held] = {}      # scope -> a deferred vendor report, not yet in Redis
        self._window: dict[str, tuple[int | None, float | None]] = {}   # scope -> (limit, reset_at) last sent

    @classmethod
    def from_url(cls, url: str, *, rate: RateLimit, burst: int, headroom: float = 0.0,
                 scopes: Iterable[str] = ()) -> "RedisRateLimiter":
        client = redis.Redis.from_url(
            url, socket_timeout=REDIS_SOCKET_TIMEOUT_S, socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S
        )
        return cls(client, rate=rate, burst=burst, headroom=headroom, scopes=scopes)

    @property
    def pacing(self) -> Pacing:
        return self._pacing

    def register(self, scope: str, member: str, *, ttl_s: float) -> int:
        """This process is alive on `scope` for ttl_s more seconds; returns how many are."""
        return int(self._processes(scope, member, ttl_s))

    def unregister(self, scope: str, member: str) -> None:
        self._processes(scope, member, "")

    def live_processes(self, scope: str) -> int:
        """Worker processes whose heartbeat on `scope` has not lapsed."""
        now = time.time() if self._clock is None else self._clock()
        try:
            return int(self._client.zcount(processes_key(scope), now, "+inf"))
        except redis.RedisError as exc:
            raise LimiterUnavailable(f"rate limiter unreachable ({type(exc).__name__})") from exc

    def _processes(self, scope: str, member: str, ttl_s: float | str) -> int:
        now = "" if self._clock is None else _number(self._clock())
        try:
            return self._processes_script(keys=[processes_key(scope)], args=[now, member, ttl_s])
        except redis.RedisError as exc:
            raise LimiterUnavailable(f"rate limiter unreachable ({type(exc).__name__})") from exc

    def acquire(self, scope: str, *, max_wait_s: float) -> Reservation:
        self._touch(scope)
        granted, wait, reason = self._run_with_held(
            "acquire", scope, *self._pacing.script_args(), max(max_wait_s, WAIT_FLOORS.get(scope, 0.0))
        )
        return Reservation(granted=bool(granted), wait_s=float(wait), reason=_text(reason))

    def observe(self, scope: str, *, limit: int | None, remaining: int | None, reset_at: float | None) -> None:
        report = _Report(limit, remaining, reset_at)
        with self._lock:
            held = self._held.pop(scope, None)
            if (report.reset_at is not None and (report.limit, report.reset_at) == self._window.get(scope)
                    and _plentiful(report)):
                if held is None:
                    self._held[scope] = _Held(report, self._monotonic())
                    return
                lowest = min(held.report.remaining, report.remaining)   # both plentiful, same window
                merged = _Held(report._replace(remaining=lowest), held.since)
                if self._monotonic() - held.since < VENDOR_REPORT_DEFER_MAX_S:
                    self._held[scope] = merged
                    return
                held, report = None, merged.report   # held long enough: send it now
            if report.reset_at is not None:
                self._window[scope] = (report.limit, report.reset_at)
        self._touch(scope)
        try:
            if held is not None:   # sent first: the order the script would have seen them in
                self._run("observe", scope, *held.report.argv())
            self._run("observe", scope, *report.argv())
        except LimiterUnavailable:
            self._forget_window(scope)
            raise

    def block(self, scope: str, *, until: float, reason: str = "429") -> None:
        self._touch(scope)
        self._run("block", scope, until, reason)

    def state(self, scope: str) -> LimiterState:
        next_free_at, now, limit, remaining, reset_at, blocked_until, blocked_reason = self._run_with_held(
            "state", scope, *self._pacing.script_args()
        )
        return LimiterState(
            scope=scope,
            limit=str(self._pacing.rate),
            burst=self._pacing.burst,
            vendor_limit=_optional_int(limit),
            vendor_remaining=_optional_int(remaining),
            vendor_reset_at=_optional_float(reset_at),
            blocked_until=_optional_float(blocked_until),
            next_free_at=float(next_free_at),
            as_of=float(now),
            blocked_reason=_text(blocked_reason) or None,
        )

    def scopes(self) -> list[str]:
        try:
            used = {_text(s) for s in self._client.zrange(SCOPES_KEY, 0, -1)}
        except redis.RedisError as exc:
            raise LimiterUnavailable(f"rate limiter unreachable ({type(exc).__name__})") from exc
        return sorted(self._configured | used)

    def _touch(self, scope: str) -> None:
        """Mark the scope as used in the index (its own slot), unless this process did lately."""
        seen = time.monotonic()
        last = self._touched.get(scope)
        if last is not None and seen - last < SCOPES_TOUCH_INTERVAL_S:
            return
        now = "" if self._clock is None else _number(self._clock())
        try:
            self._scopes_script(keys=[SCOPES_KEY], args=[now, scope, SCOPES_TTL_S])
        except redis.RedisError as exc:
            raise LimiterUnavailable(f"rate limiter unreachable ({type(exc).__name__})") from exc
        self._touched[scope] = seen

    def _run_with_held(self, op: str, scope: str, *args: object) -> list:
        """`op`, with the scope's held vendor report (if any) applied first in the same call."""
        with self._lock:
            held = self._held.pop(scope, None)
        if held is None:
            return self._run(op, scope, *args)
        try:
            return self._run(f"observe+{op}", scope, *held.report.argv(), *args)
        except LimiterUnavailable:
            self._forget_window(scope)   # the report may be lost: the next one is sent at once
            raise

    def _forget_window(self, scope: str) -> None:
        with self._lock:
            self._window.pop(scope, None)

    def _run(self, op: str, scope: str, *args: object) -> list:
        now = "" if self._clock is None else _number(self._clock())
        argv = [op, now, VENDOR_GRACE_S, VENDOR_NO_RESET_TTL_S]
        argv += [_number(a) if isinstance(a, (int, float)) else a for a in args]
        try:
            return self._script(keys=list(scope_keys(scope)), args=argv)
        except redis.RedisError as exc:
            raise LimiterUnavailable(f"rate limiter unreachable ({type(exc).__name__})") from exc
