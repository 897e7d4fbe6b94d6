"""`GET /healthz` (the process answers) and `GET /readyz` (the database and Redis answer), unauthenticated."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from worker.api.deps import runtime
from worker.api.schemas import Health, Readiness
from worker.runtime import Runtime

router = APIRouter(tags=["health"])
REDIS_TIMEOUT_S = 2.0


def database_state(rt: Runtime) -> str:
    try:
        with rt.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; the type says which
        return f"unreachable ({type(exc).__name__})"


def redis_state(rt: Runtime) -> str:
    if not rt.settings.redis_url:
        return "not configured (embedded mode)"
    import redis

    try:
        client = redis.Redis.from_url(rt.settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"unreachable ({type(exc).__name__})"


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
