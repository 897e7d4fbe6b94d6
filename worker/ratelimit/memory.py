"""In-process rate limiter: the embedded single-process mode and unit tests.

The same algorithm as gcra.lua (read that file's header for the rules), under a threading.Lock on
time.time(). Keep the two in step: tests/ratelimit/test_ratelimit.py runs the same bodies against both.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from worker.ratelimit.base import (
    REASON_BLOCKED,
    REASON_OK,
    REASON_PACED,
    REASON_VENDOR_EXHAUSTED,
    WAIT_FLOORS,
    LimiterState,
    Pacing,
    Reservation,
)
from worker.settings import RateLimit


@dataclass
class _ScopeState:
    tat: float = 0.0                       # GCRA theoretical arrival time
    vendor_limit: int | None = None
    vendor_remaining: int | None = None
    vendor_reset_at: float | None = None
    vendor_last_at: float | None = None    # the last slot granted inside the current vendor window
    blocked_until: float = 0.0
    blocked_reason: str | None = None
    windows: dict[int, int] = field(default_factory=dict)   # vendor window index -> slots granted in it

    def vendor_window_open(self, now: float) -> bool:
        return self.vendor_remaining is not None and self.vendor_reset_at is not None and self.vendor_reset_at > now


class MemoryRateLimiter:
    """RateLimiter for one process. `clock` returns unix seconds; inject one in tests."""

    def __init__(
        self,
        *,
        rate: RateLimit,
        burst: int,
        headroom: float = 0.0,
        scopes: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pacing = Pacing(rate=rate, burst=burst, headroom=headroom)
        self._clock = clock
        self._lock = threading.Lock()
        self._configured = set(scopes)
        self._states: dict[str, _ScopeState] = {}

    def acquire(self, scope: str, *, max_wait_s: float) -> Reservation:
        with self._lock:
            now = self._clock()
            state = self._state(scope)
            at, reason = self._earliest(state, now)
            wait = at - now
            if wait > max(0.0, max_wait_s, WAIT_FLOORS.get(scope, 0.0)):
                return Reservation(granted=False, wait_s=wait, reason=reason)
            state.tat = max(state.tat, at) + self._pacing.interval_s
            window = math.floor(at / self._pacing.window_s)
            state.windows = {k: n for k, n in state.windows.items() if k >= math.floor(now / self._pacing.window_s)}
            state.windows[window] = state.windows.get(window, 0) + 1
            if state.vendor_window_open(now) and at < state.vendor_reset_at and state.vendor_remaining > 0:  # type: ignore[operator]
                state.vendor_remaining -= 1  # type: ignore[operator]
                state.vendor_last_at = at
            return Reservation(granted=True, wait_s=wait, reason=reason)

    def observe(self, scope: str, *, limit: int | None, remaining: int | None, reset_at: float | None) -> None:
        with self._lock:
            state = self._state(scope)
            if limit is not None:
                state.vendor_limit = limit
            new_window = reset_at is not None and (state.vendor_reset_at is None or reset_at > state.vendor_reset_at)
            if new_window:
                state.vendor_reset_at = reset_at
                state.vendor_remaining = None if remaining is None else max(0, remaining)
                state.vendor_last_at = None
            elif remaining is not None and (reset_at is None or reset_at == state.vendor_reset_at):
                # Same window: responses arrive out of order, so a report can only lower the count.
                if state.vendor_remaining is None or remaining < state.vendor_remaining:
                    state.vendor_remaining = max(0, remaining)
            # else: a report from an older window; it says nothing about this one.

    def block(self, scope: str, *, until: float, reason: str = "429") -> None:
        with self._lock:
            state = self._state(scope)
            if until > self._clock() and until > state.blocked_until:
                state.blocked_until = until
                state.blocked_reason = reason

    def state(self, scope: str) -> LimiterState:
        with self._lock:
            now = self._clock()
            state = self._states.get(scope) or _ScopeState()
            at, _ = self._earliest(state, now)
            blocked = state.blocked_until > now
            return LimiterState(
                scope=scope,
                limit=str(self._pacing.rate),
                burst=self._pacing.burst,
                vendor_limit=state.vendor_limit,
                vendor_remaining=state.vendor_remaining,
                vendor_reset_at=state.vendor_reset_at,
                blocked_until=state.blocked_until if blocked else None,
                next_free_at=at,
                as_of=now,
                blocked_reason=state.blocked_reason if blocked else None,
            )

    def scopes(self) -> list[str]:
        with self._lock:
            return sorted(self._configured | set(self._states))

    def _state(self, scope: str) -> _ScopeState:
        return self._states.setdefault(scope, _ScopeState())

    def _earliest(self, state: _ScopeState, now: float) -> tuple[float, str]:
        """When the next slot could go, and which constraint decides it."""
        at = max(now, state.tat - self._pacing.tolerance_s)
        reason = REASON_PACED
        vendor_at, exhausted = self._vendor_at(state, now)
        if vendor_at > at:
            at, reason = vendor_at, (REASON_VENDOR_EXHAUSTED if exhausted else REASON_PACED)
        if state.blocked_until > now and state.blocked_until >= at:
            at, reason = state.blocked_until, REASON_BLOCKED
        at = self._fit_window(state, at)
        return at, (REASON_OK if at <= now else reason)

    def _fit_window(self, state: _ScopeState, at: float) -> float:
        """The first time at or after `at` in a vendor window with a slot left and outside its guard."""
        p = self._pacing
        for _ in range(1000):
            k = math.floor(at / p.window_s)
            start = k * p.window_s
            if at < start + p.window_s - p.guard_s and state.windows.get(k, 0) < p.window_limit:
                return at
            at = start + p.window_s
        return at

    def register(self, scope: str, member: str, *, ttl_s: float) -> int:
        """One process: it is the only one alive on the scope."""
        return 1

    def unregister(self, scope: str, member: str) -> None:
        return None

    def live_processes(self, scope: str) -> int:
        return 1

    @property
    def pacing(self) -> Pacing:
        return self._pacing

    def _vendor_at(self, state: _ScopeState, now: float) -> tuple[float, bool]:
        """The vendor's constraint: nothing until reset when exhausted; else spread what is left."""
        if not state.vendor_window_open(now):
            return now, False
        remaining, reset_at = state.vendor_remaining, state.vendor_reset_at
        assert remaining is not None and reset_at is not None
        if remaining <= 0:
            return reset_at, True
        if state.vendor_last_at is not None:
            # Even spacing of what is left over the rest of the window; only when slower than ours.
            spread = (reset_at - state.vendor_last_at) / (remaining + 1)
            if spread > self._pacing.interval_s:
                return max(now, state.vendor_last_at + spread), False
        return now, False
