"""The recipients a campaign made opt out (scheduler.caused_opt_outs): who, when and how, in the
order they came, one keyset page at a time; its count is on the campaign's page."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from scheduler import campaigns, caused_opt_outs
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.web import allowed, render, runtime
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
VIEW = Depends(allowed(Permission.VIEW))


@router.get("/campaigns/{campaign_id}/opt-outs")
def opt_outs_page(request: Request, campaign_id: int, after: int = 0, person: Person = VIEW,
                  rt: Runtime = Depends(runtime)) -> Response:
    with rt.read_sessions() as session:
        c = campaigns.get_campaign(session, campaign_id)
        rows = caused_opt_outs.caused_page(session, campaign_id, after=max(0, after))
    full = len(rows) == caused_opt_outs.PAGE_SIZE
    return render(request, "opt_outs.html", c=c, rows=rows, definition=caused_opt_outs.DEFINITION, paged=after > 0,
                  next_after=rows[-1].event_id if full else None)
