"""The account's rate limits as the limiter sees them: what `buttoncast limits` and `GET /v1/limits` show."""

from __future__ import annotations

from worker.ratelimit.base import LimiterState
from worker.runtime import Runtime


def limit_states(runtime: Runtime) -> list[LimiterState]:
    """One state per scope (workspace and endpoint): this process's own scope and every one seen recently."""
    limiter = runtime.limiter
    return [limiter.state(scope) for scope in sorted(set(limiter.scopes()) | {runtime.scope})]
