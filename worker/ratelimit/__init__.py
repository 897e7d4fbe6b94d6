"""The shared rate limiter: GCRA pacing per scope, vendor X-RateLimit-* headers and 429 blocks.

`build_rate_limiter(settings)` gives the Redis limiter (shared by every worker on every machine)
when REDIS_URL is set, else the in-process one. See docs/ratelimit.md.
"""

from __future__ import annotations

from worker.ratelimit.base import LimiterState, RateLimiter, Reservation
from worker.ratelimit.memory import MemoryRateLimiter
from worker.ratelimit.redis import RedisRateLimiter
from worker.settings import Settings


def build_rate_limiter(settings: Settings) -> RateLimiter:
    """RedisRateLimiter when settings.redis_url is set, else MemoryRateLimiter (one process)."""
    if settings.redis_url:
        return RedisRateLimiter.from_url(settings.redis_url, rate=settings.rate_limit, burst=settings.rate_burst,
                                         headroom=settings.rate_headroom)
    return MemoryRateLimiter(rate=settings.rate_limit, burst=settings.rate_burst, headroom=settings.rate_headroom)


__all__ = [
    "LimiterState",
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "Reservation",
    "build_rate_limiter",
]
