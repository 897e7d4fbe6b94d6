"""A campaign's message as one recipient receives it: the picker of the review step and the campaign
page searches all its recipients by phone (scheduler.recipient_preview) and shows the chosen one's
filled message. `fragment=1` (the page's script, as the person types) answers with the picker's
results alone; without it, a page of its own (the form works without the script)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from scheduler import campaigns, recipient_preview
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.web import allowed, render, runtime
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
VIEW = Depends(allowed(Permission.VIEW))
MATCHES_SHOWN = 8


@router.get("/campaigns/{campaign_id}/preview")
def recipient_preview_page(request: Request, campaign_id: int, phone: str = "", after: str = "", fragment: str = "",
                           person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    """`phone`: the start of a phone number (the matches listed, `after` the last one shown, and the
    first one's message) or a whole one (that recipient's message); empty: the first recipient's."""
    typed = phone.strip()[:40]
    with rt.read_sessions() as session:
        c = campaigns.get_campaign(session, campaign_id)
        matches = recipient_preview.find_by_phone(session, campaign_id, typed, after_phone=after[:20] or None,
                                                  limit=MATCHES_SHOWN + 1) if typed else []
        exact = [m for m in matches if m.phone == recipient_preview.phone_digits(typed)]
        chosen_phone = (exact or matches or [None])[0]   # the whole number typed, else the first match
        chosen_phone = chosen_phone.phone if chosen_phone else None
        picked = recipient_preview.preview(session, campaign_id, chosen_phone) if chosen_phone or not typed else None
    context = {"c": c, "typed": typed, "matches": matches[:MATCHES_SHOWN], "picked": picked,
               "more_after": matches[MATCHES_SHOWN - 1].phone if len(matches) > MATCHES_SHOWN else None}
    return render(request, "_recipient_preview.html" if fragment else "preview.html", **context)
