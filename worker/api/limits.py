"""`GET /v1/limits`: what `buttoncast limits` shows, per workspace and endpoint."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends

from worker.access.keys import Principal, Scope
from worker.api.auth import require
from worker.api.deps import runtime
from worker.api.schemas import LimitsOut, ScopeLimit
from worker.ratelimit.limits import limit_states
from worker.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["limits"])


def _at(ts: float | None, now: float | None = None) -> datetime | None:
    if ts is None or (now is not None and ts <= now):
        return None
    return datetime.fromtimestamp(ts, timezone.utc)


@router.get("/limits", response_model=LimitsOut)
def limits(_: Principal = Depends(require(Scope.ADMIN)), rt: Runtime = Depends(runtime)) -> LimitsOut:
    """Configured limit, the vendor's last remaining/reset, and any 429 block (times in the past are null)."""
    scopes = [ScopeLimit(scope=st.scope, paced_at=str(st.limit), burst=st.burst, vendor_limit=st.vendor_limit,
                         vendor_remaining=st.vendor_remaining, vendor_reset_at=_at(st.vendor_reset_at),
                         blocked_until=_at(st.blocked_until, st.as_of), blocked_reason=st.blocked_reason,
                         next_free_at=_at(st.next_free_at, st.as_of))
              for st in limit_states(rt)]
    return LimitsOut(configured_limit=str(rt.settings.rate_limit), scopes=scopes)
