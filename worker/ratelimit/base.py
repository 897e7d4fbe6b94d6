"""The rate-limiter protocol the send task depends on, and the value types it returns.

One budget per scope ("<workspace>:<endpoint>", built by the caller): the Awal limit belongs to the
account, so every worker process on every machine draws from the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from worker.settings import RateLimit

REASON_OK = "ok"                          # granted, no wait
REASON_PACED = "paced"                    # our pacing (or the vendor-remaining spread) sets the wait
REASON_BLOCKED = "blocked"                # a 429 told every worker to stop until a time
REASON_VENDOR_EXHAUSTED = "vendor_exhausted"  # the vendor reported remaining=0 until its reset

SCOPES_TTL_S = 7 * 86400                  # a scope unused this long drops out of `scopes()`
VENDOR_GRACE_S = 3600.0                   # keep a finished vendor window this long, for `limits`
VENDOR_NO_RESET_TTL_S = 86400.0           # vendor numbers that came without a reset time

# Deferred vendor reports (RedisRateLimiter): a report in the window this process last reported,
# with plenty left, changes no answer soon, so it travels with the process's next acquire instead
# of costing a round trip of its own; one held this long goes out with the next report, and none
# is held below this much remaining.
VENDOR_REPORT_DEFER_MAX_S = 1.0
VENDOR_REPORT_DEFER_MIN_REMAINING = 100   # and at least a tenth of the vendor's limit
UNCOUNTED = 2**31                         # the window count of a limit that names no whole count per window

#: scope -> how long a slot may wait in this process when that is longer than the caller's
#: max_wait_s: set by this process's intake (worker.ratelimit.intake) when one message per live
#: worker process is already more than the scope sends within RATE_WAIT_MAX_S; read by `acquire`
WAIT_FLOORS: dict[str, float] = {}


@dataclass(frozen=True)
class Reservation:
    """The answer to `acquire`.

    granted: a slot is yours; sleep `wait_s` (never more than the caller's max_wait_s), then send.
    Not granted: nothing was reserved; `wait_s` is how long until a slot could be had, so the caller
    puts the message back with not_before = now + wait_s.
    """

    granted: bool
    wait_s: float
    reason: str


@dataclass(frozen=True)
class LimiterState:
    """One scope as the limiter sees it, for `buttoncast limits`.

    Times are unix seconds on the limiter's clock (the Redis server's, for RedisRateLimiter);
    `as_of` is "now" on that clock. `vendor_remaining` is the last vendor report minus the slots
    granted since. `next_free_at` is when an acquire would get its slot, all constraints counted.
    """

    scope: str
    limit: str
    burst: int
    vendor_limit: int | None
    vendor_remaining: int | None
    vendor_reset_at: float | None
    blocked_until: float | None
    next_free_at: float
    as_of: float | None = None
    blocked_reason: str | None = None


class RateLimiter(Protocol):
    def acquire(self, scope: str, *, max_wait_s: float) -> Reservation:
        """Reserve the next slot if it is at most max_wait_s away; otherwise reserve nothing."""
        ...

    def observe(self, scope: str, *, limit: int | None, remaining: int | None, reset_at: float | None) -> None:
        """Feed in a vendor response's X-RateLimit-* headers (None where a header was missing)."""
        ...

    def block(self, scope: str, *, until: float, reason: str = "429") -> None:
        """A 429: every worker stops until `until` (unix time). Never shortens a longer block."""
        ...

    def state(self, scope: str) -> LimiterState:
        ...

    def scopes(self) -> list[str]:
        """Scopes configured or used recently, sorted."""
        ...


#: the longest free end of a vendor window (Pacing.guard_s): far above a request's delay on its way
#: (thread wake-up, the claim, the network: tens of ms), far below a window of an hour
GUARD_MAX_S = 1.0


@dataclass(frozen=True)
class Pacing:
    """How slots are spread: at most the limit's count per vendor window, one every `interval_s`.

    Assumption (AWAL_API.md says only "X-RateLimit-Reset: Unix time when the window resets"): the
    vendor counts requests in FIXED windows of the limit's period, aligned to the epoch (a 20/s
    limit: each whole second; 1000/h: each clock hour). This is the one place that choice is made.
    So the limiter grants at most `window_limit` slots per window and none in its last `guard_s`
    (the headroom's share of the window): a request granted late in a window and delayed on its way
    (thread wake-up, the claim, the network) still arrives inside it. The slots of a window are
    spread `interval_s` apart over the rest, so the headroom costs no rate: every window still
    gets the whole limit. (Pacing 2 % under the limit with GCRA alone, as before, put 20 slots in
    6 of 10 one-second windows at 20/s, ~25 ms from an edge on average: a little jitter made it 21
    and a 429; docs/ratelimit.md.) `tolerance_s` lets `burst` go back to back, still within the
    window's count.
    """

    rate: RateLimit
    burst: int
    headroom: float = 0.0

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        if not 0.0 <= self.headroom < 0.5:
            raise ValueError(f"headroom must be a share of the window in [0, 0.5), got {self.headroom}")

    @property
    def window_s(self) -> float:
        return self.rate.period_s

    @property
    def whole(self) -> bool:
        """A whole count per window ("20/s"); "2.5/s" names none, so it is paced plainly, uncounted."""
        return self.rate.limit == int(self.rate.limit)

    @property
    def window_limit(self) -> int:
        return int(self.rate.limit) if self.whole else UNCOUNTED

    @property
    def guard_s(self) -> float:
        """The free end of each window: the headroom's share, at most GUARD_MAX_S (a request's delay
        on its way is milliseconds; 2 % of an hourly window would hold every send back 72 s an hour)."""
        return min(self.headroom * self.rate.period_s, GUARD_MAX_S) if self.whole else 0.0

    @property
    def interval_s(self) -> float:
        if not self.whole:
            return self.rate.period_s / self.rate.limit
        return (self.window_s - self.guard_s) / self.window_limit

    @property
    def tolerance_s(self) -> float:
        return (self.burst - 1) * self.interval_s

    def script_args(self) -> tuple[float, float, float, int, float]:
        """interval, tolerance, window, window limit, guard: gcra.lua's pacing arguments, in order."""
        return self.interval_s, self.tolerance_s, self.window_s, self.window_limit, self.guard_s
