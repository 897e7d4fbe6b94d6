"""Contacts: look one up (consent state, history, window, recent messages); admins opt out / opt in
with a reason, import a suppression list and export it. The same functions as `buttoncast contacts`."""

from __future__ import annotations

import csv
import io
from typing import Iterator

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import Response, StreamingResponse

from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.routes_campaigns import POSTED
from worker.console.web import allowed, redirect, render, runtime
from worker.contacts import service as contacts
from worker.contacts.importer import OptOutFileError, import_optouts
from worker.errors import MessageInvalid
from worker.message import normalize_phone
from worker.runtime import Runtime
from worker.uploads import upload_on_disk

router = APIRouter(include_in_schema=False)
VIEW = Depends(allowed(Permission.VIEW))
ADMIN = Depends(allowed(Permission.ADMIN))
EXPORT_BATCH_ROWS = 1000


def _phone(text: str) -> tuple[str | None, str | None]:
    try:
        return normalize_phone(text), None
    except MessageInvalid as exc:
        return None, "; ".join(str(p) for p in exc.problems)


@router.get("/contacts")
def contacts_page(request: Request, phone: str = "", person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    number, problem = _phone(phone) if phone.strip() else (None, None)
    contact = None
    if number:
        with rt.read_sessions() as session:
            contact = contacts.get_contact(session, number)
    return render(request, "contacts.html", phone=phone, number=number, problem=problem, contact=contact)


@router.post("/contacts/optout", dependencies=POSTED)
def opt_out(phone: str = Form(""), reason: str = Form(""), person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    number, problem = _phone(phone)
    if number is None:
        return redirect("/contacts", f"Not done: {problem}")
    changed = contacts.operator_opt_out(rt, [number], reason=reason.strip() or None, actor=person.actor)
    return redirect(f"/contacts?phone={number}", f"{number} opted out." if changed else f"{number} was already opted out.")


@router.post("/contacts/optin", dependencies=POSTED)
def opt_in(phone: str = Form(""), person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    number, problem = _phone(phone)
    if number is None:
        return redirect("/contacts", f"Not done: {problem}")
    changed = contacts.operator_opt_in(rt, [number], actor=person.actor)
    return redirect(f"/contacts?phone={number}", f"{number} opted back in." if changed else f"{number} was not opted out.")


@router.post("/contacts/import", dependencies=POSTED)
async def import_suppression_list(request: Request, optouts: UploadFile, person: Person = ADMIN,
                                  rt: Runtime = Depends(runtime)) -> Response:
    async with upload_on_disk(optouts, "optouts.csv", prefix="buttoncast-optouts-") as path:
        try:
            result = import_optouts(rt, path, actor=person.actor)
        except OptOutFileError as exc:
            return render(request, "contacts.html", status_code=422, phone="", number=None, contact=None,
                          problem=str(exc).replace(path, optouts.filename or "the file"))
    return render(request, "contacts.html", phone="", number=None, contact=None, problem=None, imported=result)


@router.get("/contacts/optouts.csv")
def export_suppression_list(person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    """Everyone opted out now, as `buttoncast contacts list --opted-out` writes it (streamed)."""
    def chunks() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(contacts.EXPORT_COLUMNS)
        with rt.read_sessions() as session:
            for count, c in enumerate(contacts.iter_contacts(session, opted_out_only=True), 1):
                writer.writerow(contacts.export_cells(contacts.export_row(c)))
                if count % EXPORT_BATCH_ROWS == 0:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="opted-out.csv"'})
