"""Messages: find one by id or a phone's messages; one message with its trail as `message show` prints it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from scheduler import campaigns
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.formats import campaign_zone
from worker.console.web import allowed, redirect, render, runtime
from worker.errors import MessageInvalid
from worker.failures import explain
from worker.runtime import Runtime
from worker.sending.history import list_messages, message_history, trail

router = APIRouter(include_in_schema=False)
VIEW = Depends(allowed(Permission.VIEW))
PAGE_SIZE = 50


@router.get("/messages")
def messages_page(request: Request, q: str = "", person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    """`q` is a message id (opens it) or a phone number (its messages, newest first)."""
    q = q.strip()
    if q.isdigit() and len(q) < 8:  # ids are short; phone numbers have at least 8 digits
        return redirect(f"/messages/{q}")
    found, problem = [], None
    if q:
        try:
            with rt.read_sessions() as session:
                found = list_messages(session, phone=q, limit=PAGE_SIZE)
        except MessageInvalid as exc:
            problem = "; ".join(str(p) for p in exc.problems)
    return render(request, "messages.html", q=q, found=found, problem=problem)


@router.get("/messages/{message_id}")
def message_page(request: Request, message_id: int, person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    with rt.read_sessions() as session:
        history = message_history(session, message_id)
        # a campaign's message shows its times in the campaign's zone; an ad-hoc one in the console's
        source = campaigns.get_campaign(session, history.message.campaign_id) if history.message.campaign_id else None
    m = history.message   # a late failure: its vendor code, class and the vendor's words, as a person reads them
    late = explain(m.failure_code, m.failure_class, m.delivery_error) if m.failure_class else None
    return render(request, "message.html", m=m, history=history, trail=trail(history), late=late,
                  zone=campaign_zone(source) if source else None)
