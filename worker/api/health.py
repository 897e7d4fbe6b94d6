"""`GET /healthz` (the process answers) and `GET /readyz` (the database and Redis answer), unauthenticated."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from worker.api.deps import runtime
from worker.api.schemas import Health, Readiness
from worker.health import database_state, redis_state
from worker.runtime import Runtime

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(rt: Runtime = Depends(runtime)) -> JSONResponse:
    """200 when the database and Redis (if configured) answer; 503 naming what does not."""
    database, redis_ = database_state(rt), redis_state(rt)
    ready = database == "ok" and redis_ in ("ok", "not configured (embedded mode)")
    body = Readiness(status="ready" if ready else "not ready", database=database, redis=redis_)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
