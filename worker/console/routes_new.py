"""New campaign, in steps: the form (CSV, message, sender, timing) -> the import report and
pre-flight counts of a *draft* (nothing is sent) -> confirm (schedule), or discard the draft.

The draft is made by `campaigns.create_from_options`, the function `campaign create --draft` and
`POST /v1/campaigns` call; schedule and discard are service calls too.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import Response

from scheduler import campaigns, report
from scheduler.importer import ImportRefused, RecipientsFileError
from scheduler.window import WindowInvalid
from worker import message as limits
from worker.console.roles import Permission
from worker.console.routes_campaigns import POSTED
from worker.console.users import Person
from worker.console.web import allowed, redirect, render, runtime
from worker.errors import MessageInvalid
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
SEND = Depends(allowed(Permission.SEND))
COPY_CHUNK_BYTES = 1 << 20
BUTTON_SLOTS = limits.BUTTONS_MAX
LIMITS = {"header_text": limits.HEADER_TEXT_MAX_CHARS, "body_text": limits.BODY_TEXT_MAX_CHARS,
          "footer_text": limits.FOOTER_TEXT_MAX_CHARS, "button_title": limits.BUTTON_TITLE_MAX_CHARS,
          "button_id": limits.BUTTON_ID_MAX_CHARS}


def _form_page(request: Request, rt: Runtime, values: dict, problems: list[str] | None = None, status_code: int = 200,
               rejected: list | None = None) -> Response:
    return render(request, "new.html", status_code=status_code, v=values, problems=problems or [], limits=LIMITS,
                  slots=range(1, BUTTON_SLOTS + 1), default_sender=rt.settings.awal_phone_number_id or "",
                  rejected=rejected or [])


@router.get("/campaigns/new")
def new_campaign_form(request: Request, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    return _form_page(request, rt, {})


def _template(form: dict[str, str]) -> dict:
    """The form's fields as message.json (empty optional fields left out, empty button rows skipped)."""
    template: dict = {"body_text": form.get("body_text", "")}
    for name in ("header_text", "footer_text"):
        if form.get(name):
            template[name] = form[name]
    template["buttons"] = [{"id": form.get(f"button_id_{i}", ""), "title": form.get(f"button_title_{i}", "")}
                           for i in range(1, BUTTON_SLOTS + 1) if form.get(f"button_id_{i}") or form.get(f"button_title_{i}")]
    return template


@router.post("/campaigns/new", dependencies=POSTED)
async def create_draft(request: Request, recipients: UploadFile, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    directory = tempfile.mkdtemp(prefix="buttoncast-console-")
    try:
        path = os.path.join(directory, "recipients.csv")
        with open(path, "wb") as out:
            while chunk := await recipients.read(COPY_CHUNK_BYTES):
                out.write(chunk)
        try:
            campaign, result = campaigns.create_from_options(
                rt, path, name=form.get("name", ""), template=_template(form), at=form.get("at") or None,
                window=form.get("window") or None, tz=form.get("tz") or None,
                phone_number_id=form.get("phone_number_id") or None, draft=True, actor=person.actor)
        except MessageInvalid as exc:
            return _form_page(request, rt, form, [str(p) for p in exc.problems], 422)
        except ImportRefused as exc:
            return _form_page(request, rt, form, [str(exc)], 422, rejected=exc.result.problems)
        except (RecipientsFileError, WindowInvalid) as exc:
            return _form_page(request, rt, form, [str(exc).replace(path, recipients.filename or "the file")], 422)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    with rt.read_sessions() as session:
        progress = report.progress(session, campaign.id, rt.settings.rate_limit.per_second)
    return render(request, "review.html", c=campaign, result=result, p=progress, rate=rt.settings.rate_limit)


@router.post("/campaigns/{campaign_id}/discard", dependencies=POSTED)
def discard(campaign_id: int, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    try:
        campaigns.discard_draft(rt.session_factory, campaign_id, actor=person.actor)
    except campaigns.IllegalTransition as exc:
        return redirect(f"/campaigns/{campaign_id}", f"Not done: {exc}")
    return redirect("/", f"Draft {campaign_id} discarded; nothing was sent.")
