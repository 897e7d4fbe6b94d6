"""Contacts: look one up (consent state, history, window, recent messages, attributes and tags);
admins opt out / opt in with a reason, edit attributes and tags, import a suppression list and
export it. The same functions as `buttoncast contacts`."""

from __future__ import annotations

import csv
import io
from typing import Any, Iterator

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import Response

from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.routes_campaigns import POSTED
from worker.console.web import allowed, redirect, render, runtime
from worker.contacts import service as contacts
from worker.contacts.attributes import TAG_SEPARATOR, edit_contact
from worker.contacts.importer import OptOutFileError, import_optouts
from worker.db import streamed_read
from worker.downloads import DownloadResponse
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


@router.post("/contacts/attributes", dependencies=POSTED)
def edit_attributes(phone: str = Form(""), name: str = Form(""), value: str = Form(""), tags_add: str = Form(""),
                    tag_remove: str = Form(""), person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    """The contact page's small forms: set an attribute (an empty value removes it), add tags
    (`;`-separated), remove a tag; one call of the service, as PATCH /v1/contacts/{phone}."""
    number, problem = _phone(phone)
    if number is None:
        return redirect("/contacts", f"Not done: {problem}")
    try:
        edited = edit_contact(rt, number, attributes={name.strip(): value} if name.strip() else None,
                              tags_add=[t for t in tags_add.split(TAG_SEPARATOR) if t.strip()],
                              tags_remove=[tag_remove] if tag_remove else None, actor=person.actor)
    except MessageInvalid as exc:
        return redirect(f"/contacts?phone={number}", f"Not done: {exc}")
    return redirect(f"/contacts?phone={number}", "Saved." if edited.changed else "Nothing changed.")


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
    """Everyone opted out now, as `buttoncast contacts list --opted-out` writes it (streamed; the read
    session closes when the response ends, however it ends)."""
    def chunks(rows: Iterator[Any]) -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(contacts.EXPORT_COLUMNS)
        for count, row in enumerate(rows, 1):
            writer.writerow(contacts.export_cells(row))
            if count % EXPORT_BATCH_ROWS == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    source = streamed_read(rt.read_sessions, lambda session: contacts.export_rows(session, opted_out_only=True), chunks)
    return DownloadResponse(source, media_type="text/csv; charset=utf-8", filename="opted-out.csv")
