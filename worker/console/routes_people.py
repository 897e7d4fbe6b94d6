"""People (admins only): who may log in, with which role; create, disable (after a confirmation
step), set a new password. The same functions as `buttoncast user create|list|disable|reset-password`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from worker.access.roles import Permission, Role
from worker.access.users import Person, UserNotFound, create_user, disable_user, list_users, reset_password
from worker.console.routes_campaigns import POSTED
from worker.console.web import allowed, redirect, render, runtime
from worker.errors import MessageInvalid
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
ADMIN = Depends(allowed(Permission.ADMIN))


def _problem(exc: Exception) -> str:
    return "; ".join(str(p) for p in exc.problems) if isinstance(exc, MessageInvalid) else str(exc)


@router.get("/people")
def people_page(request: Request, person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    with rt.read_sessions() as session:
        people = list_users(session)
    return render(request, "people.html", people=people, roles=[r.value for r in Role])


@router.post("/people", dependencies=POSTED)
def create(email: str = Form(""), role: str = Form(""), password: str = Form(""), person: Person = ADMIN,
           rt: Runtime = Depends(runtime)) -> Response:
    try:
        created = create_user(rt, email=email, role=role, password=password, actor=person.actor)
    except MessageInvalid as exc:
        return redirect("/people", f"Not done: {_problem(exc)}")
    return redirect("/people", f"{created.email} ({created.role.value}) can log in now.")


@router.get("/people/disable")
def disable_page(request: Request, email: str = "", person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    """The confirmation step of Disable (console.js shows it in a dialog)."""
    wanted = email.strip().lower()
    with rt.read_sessions() as session:
        who = next((p for p in list_users(session) if p.email == wanted), None)
    if who is None or who.disabled:
        return redirect("/people", f"Not done: {email or 'nobody'} is not an active person here.")
    if who.email == person.email:
        return redirect("/people", "Not done: you cannot disable yourself.")
    return render(request, "confirm.html", kind="disable", who=who, action="/people/disable", back="/people",
                  fields={"email": who.email})


@router.post("/people/disable", dependencies=POSTED)
def disable(email: str = Form(""), person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    if email.strip().lower() == person.email:
        return redirect("/people", "Not done: you cannot disable yourself.")
    try:
        done = disable_user(rt, email, actor=person.actor)
    except (UserNotFound, MessageInvalid) as exc:
        return redirect("/people", f"Not done: {_problem(exc)}")
    return redirect("/people", f"{done.email} is disabled; their sessions ended.")


@router.post("/people/reset-password", dependencies=POSTED)
def reset(email: str = Form(""), password: str = Form(""), person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    try:
        done = reset_password(rt, email, password, actor=person.actor)
    except (UserNotFound, MessageInvalid) as exc:
        return redirect("/people", f"Not done: {_problem(exc)}")
    return redirect("/people", f"{done.email} has a new password (sessions ended; failed logins forgotten).")
