"""What every console route shares: the logged-in person, the permission and CSRF checks, rendering.

Routes declare `person: Person = Depends(allowed(Permission.SEND))` and, for a POST,
`Depends(csrf_checked)`; both are enforced here on the server, whatever the page showed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from worker.access.roles import Permission
from worker.access.sessions import COOKIE_NAME, resume_session
from worker.access.users import Person
from worker.console import csrf, formats
from worker.console.security import foreign_origin
from worker.runtime import Runtime, get_runtime

PACKAGE_DIR = Path(__file__).parent
templates = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))
templates.env.globals.update(Permission=Permission)
templates.env.filters.update(formats.FILTERS)
templates.env.globals.update(formats.GLOBALS)
FLASH_COOKIE = "bc_flash"


class NotLoggedIn(Exception):
    """No valid session: pages redirect to the login form."""


class Denied(Exception):
    """Logged in, but the role (or a missing/wrong CSRF token) does not allow this: 403."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def runtime() -> Runtime:
    return get_runtime()


def session_token(request: Request) -> str | None:
    return request.cookies.get(COOKIE_NAME)


def current_person(request: Request, rt: Runtime = Depends(runtime)) -> Person:
    cached = getattr(request.state, "person", None)
    if cached is not None:
        return cached
    person = resume_session(rt, session_token(request))   # refused once idle too long; else its idle clock restarts
    if person is None:
        raise NotLoggedIn()
    request.state.person = person
    return person


def allowed(permission: Permission) -> Callable[..., Person]:
    def dependency(person: Person = Depends(current_person)) -> Person:
        if not person.role.allows(permission):
            raise Denied(f"your role ({person.role.value}) cannot do this; it needs {permission.value}")
        return person

    return dependency


async def csrf_checked(request: Request, person: Person = Depends(current_person)) -> None:
    """Every POST comes from a page of this site (its Origin or Referer, worker.console.security) and
    carries the form's token (or the X-CSRF-Token header for scripts)."""
    elsewhere = foreign_origin(request)
    if elsewhere is not None:
        raise Denied(elsewhere)
    given = request.headers.get(csrf.HEADER_NAME)
    if given is None:
        form = await request.form()
        value = form.get(csrf.FIELD_NAME)
        given = value if isinstance(value, str) else None
    if not csrf.matches(csrf.token_for_session(session_token(request) or ""), given):
        raise Denied("the form's CSRF token is missing or wrong; reload the page and try again")


def cookie_secure(request: Request, rt: Runtime) -> bool:
    """CONSOLE_COOKIE_SECURE: always, never, or auto (the request's scheme: uvicorn takes
    X-Forwarded-Proto from the proxies in FORWARDED_ALLOW_IPS, 127.0.0.1 by default)."""
    mode = rt.settings.console_cookie_secure
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    person = getattr(request.state, "person", None)
    token = session_token(request)
    context.setdefault("csrf_token", csrf.token_for_session(token) if token and person else "")
    context.setdefault("console_zone", get_runtime().settings.console_time_zone)   # formats.page_zone's last resort
    flash = unquote(request.cookies.get(FLASH_COOKIE) or "") or None
    response = templates.TemplateResponse(request, name, {"person": person, "flash": flash, **context}, status_code=status_code)
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def redirect(url: str, flash: str | None = None) -> RedirectResponse:
    """After a POST: 303 to the page to show, with a one-time message."""
    response = RedirectResponse(url, status_code=303)
    if flash:
        response.set_cookie(FLASH_COOKIE, quote(flash[:500]), httponly=True, samesite="lax", path="/")
    return response


def not_logged_in(request: Request, _exc: Exception) -> Response:
    if request.method != "GET":
        return HTMLResponse("<p>Log in first: <a href=\"/login\">/login</a></p>", status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def denied(request: Request, exc: Exception) -> Response:
    return render(request, "denied.html", status_code=403, reason=getattr(exc, "reason", str(exc)))
