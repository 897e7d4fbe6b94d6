"""API keys (admins only): list, create (the key shown once, on the answer to the form), revoke
(after a confirmation step). The same functions as `buttoncast apikey create|list|revoke` and the
keys the /v1 API checks."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from worker.access.keys import ApiKeyNotFound, Scope, create_key, list_keys, revoke_key
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.routes_campaigns import POSTED
from worker.console.web import allowed, redirect, render, runtime
from worker.errors import MessageInvalid
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
ADMIN = Depends(allowed(Permission.ADMIN))
SCOPES = {Scope.SEND.value: "messages", Scope.CAMPAIGNS.value: "campaigns and messages",
          Scope.ADMIN.value: "everything: retry, limits, contacts, hooks"}


def _page(request: Request, rt: Runtime, status_code: int = 200, **context: object) -> Response:
    with rt.read_sessions() as session:
        keys = list_keys(session)
    response = render(request, "keys.html", status_code=status_code, keys=keys, scopes=SCOPES, **context)
    response.headers["Cache-Control"] = "no-store"  # the answer to a create holds the key itself
    return response


@router.get("/keys")
def keys_page(request: Request, person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    return _page(request, rt)


@router.post("/keys", dependencies=POSTED)
def create(request: Request, name: str = Form(""), scope: str = Form(""), person: Person = ADMIN,
           rt: Runtime = Depends(runtime)) -> Response:
    """The key is in this answer only: not in a redirect, a cookie or the database (only its hash)."""
    try:
        info, key = create_key(rt, name=name, scope=scope, actor=person.actor)
    except MessageInvalid as exc:
        problems = {p.field: p.problem for p in exc.problems}
        return _page(request, rt, 422, problems=problems, values={"name": name, "scope": scope})
    return _page(request, rt, created=info, secret=key)


@router.get("/keys/{key_id}/revoke")
def revoke_page(request: Request, key_id: int, person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    """The confirmation step of Revoke (console.js shows it in a dialog)."""
    with rt.read_sessions() as session:
        key = next((k for k in list_keys(session) if k.id == key_id), None)
    if key is None or key.revoked_at is not None:
        return redirect("/keys", f"Not done: there is no active API key {key_id}.")
    return render(request, "confirm.html", kind="revoke", key=key, cache_s=rt.settings.api_key_cache_s,
                  action=f"/keys/{key_id}/revoke", back="/keys")


@router.post("/keys/{key_id}/revoke", dependencies=POSTED)
def revoke(key_id: int, person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    try:
        info = revoke_key(rt, key_id, actor=person.actor)
    except ApiKeyNotFound as exc:
        return redirect("/keys", f"Not done: {exc}")
    return redirect("/keys", f"API key {info.prefix} ({info.name}) is revoked: its requests get 401 within seconds.")
