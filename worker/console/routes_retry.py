"""A campaign's retry: what can be sent again, each group with its count first (refused when sending,
then each reason WhatsApp reported a failure later), and the one the marketer picks.

The same service functions as `buttoncast retry --status failed` and `--reason CLASS [--force]`
(scheduler.retry): the service enforces each reason's rule (opted-out people are never sent again;
reasons a resend cannot help need an explicit "send anyway") and writes the retry to the audit trail
with the person as its actor.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from scheduler import campaigns
from scheduler.retry import ForceNeeded, RetrySelection, retry_messages
from scheduler.retry_choices import AT_SEND, retry_choices
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.routes_campaigns import POSTED
from worker.console.tallies import tallies_for
from worker.console.web import allowed, redirect, render, runtime
from worker.errors import ButtoncastError
from worker.failures import FailureClass
from worker.runtime import Runtime
from worker.status import MessageStatus

router = APIRouter(include_in_schema=False)
VIEW = Depends(allowed(Permission.VIEW))
SEND = Depends(allowed(Permission.SEND))


@router.get("/campaigns/{campaign_id}/retry")
def retry_page(request: Request, campaign_id: int, person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    """The dry run: every group a retry can send again and how many, before anything happens."""
    with rt.read_sessions() as session:
        c = campaigns.get_campaign(session, campaign_id)
        choices = retry_choices(session, campaign_id)
    return render(request, "retry.html", c=c, choices=choices)


def _selection(campaign_id: int, reason: str, anyway: bool) -> RetrySelection | None:
    if reason == AT_SEND:
        return RetrySelection(campaign_id=campaign_id, status=MessageStatus.FAILED)
    klass = FailureClass.parse(reason)
    return None if klass is None else RetrySelection(campaign_id=campaign_id, reason=klass, force=anyway)


@router.post("/campaigns/{campaign_id}/retry", dependencies=POSTED)
def retry(campaign_id: int, reason: str = Form(AT_SEND), anyway: str = Form(""), person: Person = SEND,
          rt: Runtime = Depends(runtime)) -> Response:
    """Send one group again: `reason` is `failed` (refused when sending) or a late failure's class;
    `anyway` is the "send anyway" box of the reasons a resend cannot help."""
    back = f"/campaigns/{campaign_id}/retry"
    selection = _selection(campaign_id, reason, anyway == "yes")
    if selection is None:
        return redirect(back, "Not done: choose which failed messages to send again.")
    try:
        _plan, result = retry_messages(rt, selection, actor=person.actor)
    except ForceNeeded as exc:
        if exc.reason is FailureClass.OPTED_OUT:
            return redirect(back, "Not sent again: these people stopped marketing messages, and nobody opted out is "
                                  "ever sent a message.")
        return redirect(back, f"Not sent again: {exc.reason.advice}. Tick “Send anyway” to send them regardless.")
    except ButtoncastError as exc:
        return redirect(back, f"Not done: {exc}")
    finally:
        tallies_for(rt).forget(campaign_id)   # its rows may have changed: older counts are shown with their time
    requeued = result.requeued if result else 0
    if selection.reason is None:
        return redirect(f"/campaigns/{campaign_id}", f"{requeued} failed message(s) requeued.")
    what = f"{selection.reason.title} ({selection.reason.value})"
    return redirect(f"/campaigns/{campaign_id}", f"{requeued} message(s) WhatsApp reported failed later, {what}, "
                                                 "will be sent again.")
