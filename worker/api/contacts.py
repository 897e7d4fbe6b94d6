"""`/v1/contacts/{phone}` (consent, the 24-hour window, attributes and tags), opt-out / opt-in, the
attributes' and tags' edit (PATCH), and `/v1/optouts` (admin keys)."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Query

from worker.access.keys import Principal, Scope
from worker.api.auth import require
from worker.api.deps import decode_cursor, encode_cursor, runtime
from worker.api.problems import Problem
from worker.api.schemas import (
    ConsentChangeOut,
    ContactOut,
    ContactPatchIn,
    ContactSummary,
    OptOutIn,
    OptOutPage,
    RecentMessageOut,
)
from worker.contacts import service as contacts
from worker.contacts.attributes import edit_contact
from worker.message import normalize_phone
from worker.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["contacts"])
ADMIN = Depends(require(Scope.ADMIN))
PAGE_SIZE_MAX = 500


def _view(rt: Runtime, phone: str, changed: bool | None = None) -> ContactOut:
    with rt.read_sessions() as session:
        view = contacts.get_contact(session, phone)
    if view is None:
        raise Problem(404, "not-found", f"no contact {phone}: nothing was sent to or received from it")
    return ContactOut(
        **ContactSummary.of(view).model_dump(), first_seen_at=view.first_seen_at, last_inbound_at=view.last_inbound_at,
        last_sent_at=view.last_sent_at, window_open_until=view.window_open_until, window_open=view.window_open(),
        history=[ConsentChangeOut(**vars(c)) for c in view.history],
        recent_messages=[RecentMessageOut(**vars(m)) for m in view.recent_messages], attributes=view.attributes,
        tags=view.tags, changed=changed)


@router.get("/contacts/{phone}", response_model=ContactOut)
def get_contact(phone: str, _: Principal = ADMIN, rt: Runtime = Depends(runtime)) -> ContactOut:
    """Consent state and its history, the 24-hour window, the recent messages."""
    return _view(rt, normalize_phone(phone, default_region=rt.settings.default_country_code))


@router.patch("/contacts/{phone}", response_model=ContactOut)
def edit_attributes(phone: str, body: ContactPatchIn, principal: Principal = ADMIN,
                    rt: Runtime = Depends(runtime)) -> ContactOut:
    """Set or remove attributes (null or "" removes one), add and remove tags, in one transaction; a
    phone not yet a contact becomes one. Consent is never changed here. 422 names each bad field."""
    number = normalize_phone(phone, default_region=rt.settings.default_country_code)
    edited = edit_contact(rt, number, attributes=body.attributes, tags_add=body.tags_add, tags_remove=body.tags_remove,
                          actor=principal.actor)
    return _view(rt, number, edited.changed)


@router.post("/contacts/{phone}/optout", response_model=ContactOut)
def opt_out(phone: str, body: OptOutIn | None = Body(None), principal: Principal = ADMIN,
            rt: Runtime = Depends(runtime)) -> ContactOut:
    """Never message this phone again (until an opt-in); `changed` is false if it already was opted out."""
    number = normalize_phone(phone, default_region=rt.settings.default_country_code)
    changed = bool(contacts.operator_opt_out(rt, [number], reason=body.reason if body else None, actor=principal.actor))
    return _view(rt, number, changed)


@router.post("/contacts/{phone}/optin", response_model=ContactOut)
def opt_in(phone: str, principal: Principal = ADMIN, rt: Runtime = Depends(runtime)) -> ContactOut:
    """The phone may be messaged again; `changed` is false if it was not opted out."""
    number = normalize_phone(phone, default_region=rt.settings.default_country_code)
    changed = bool(contacts.operator_opt_in(rt, [number], actor=principal.actor))
    return _view(rt, number, changed)


@router.get("/optouts", response_model=OptOutPage)
def optouts(cursor: str | None = None, limit: int = Query(100, ge=1, le=PAGE_SIZE_MAX), _: Principal = ADMIN,
            rt: Runtime = Depends(runtime)) -> OptOutPage:
    """Every opted-out phone in phone order; follow `next_cursor`."""
    with rt.read_sessions() as session:
        rows = contacts.opted_out_page(session, after=decode_cursor(cursor, "phone") or "", limit=limit)
        data = [ContactSummary.of(c) for c in rows]
    return OptOutPage(data=data, next_cursor=encode_cursor(data[-1].phone, "phone") if len(data) == limit else None)
