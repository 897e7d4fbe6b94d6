"""`/v1/hooks` (admin keys): outbound event webhooks, as `buttoncast hooks add|list|remove|redeliver`.

No Idempotency-Key on create: the stored first response would hold the endpoint's signing secret,
and no secret is kept in the database. A repeated create makes a second endpoint; remove it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from worker.access.keys import Principal, Scope
from worker.api.auth import require
from worker.api.deps import ID_MAX, runtime
from worker.api.schemas import HookCreated, HookIn, HookList, HookOut, RedeliverIn, RedeliverOut
from worker.hooks import service
from worker.runtime import Runtime

router = APIRouter(prefix="/v1/hooks", tags=["hooks"])
HookId = Annotated[int, Path(ge=1, le=ID_MAX)]


@router.get("", response_model=HookList)
def list_hooks(_: Principal = Depends(require(Scope.ADMIN)), rt: Runtime = Depends(runtime)) -> HookList:
    """Every endpoint: its events and its pending / delivered / dead-lettered deliveries."""
    with rt.read_sessions() as session:
        return HookList(data=[HookOut.of(view) for view in service.list_endpoints(session)])


@router.post("", status_code=201, response_model=HookCreated)
def add_hook(body: HookIn, principal: Principal = Depends(require(Scope.ADMIN)), rt: Runtime = Depends(runtime)) -> HookCreated:
    """Add an endpoint; the response carries its signing secret, which is never shown again. A URL
    hooks may not reach (not https, a loopback / private / link-local / reserved target) is a 422
    naming `url`."""
    view, secret = service.add_hook(rt, body.url, body.events, actor=principal.actor)
    return HookCreated(**HookOut.of(view).model_dump(), secret=secret.reveal())


@router.delete("/{hook_id}", status_code=204, response_class=Response)
def remove_hook(hook_id: HookId, principal: Principal = Depends(require(Scope.ADMIN)), rt: Runtime = Depends(runtime)) -> Response:
    """Remove an endpoint and the events not yet delivered to it."""
    service.remove_hook(rt, hook_id, actor=principal.actor)
    return Response(status_code=204)


@router.post("/redeliver", response_model=RedeliverOut)
def redeliver(body: RedeliverIn, principal: Principal = Depends(require(Scope.ADMIN)),
              rt: Runtime = Depends(runtime)) -> RedeliverOut:
    """One event again (same id and body), or every dead-lettered event of `endpoint_id`."""
    due = service.redeliver_hooks(rt, event_id=body.event_id, endpoint_id=body.endpoint_id, actor=principal.actor)
    return RedeliverOut(due=due)
