"""`/login` and `/logout`.

A login POST must come from this site's login page (its Origin or Referer, worker.console.security)
with the form's double-submit token; the client address is handed to `log_in`, whose throttle
slows an address that keeps failing (429 with Retry-After, the same for every email).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from worker.access.sessions import COOKIE_NAME, end_session, start_session
from worker.access.users import LoginRefused, TooManyFailures, log_in
from worker.console import csrf
from worker.console.security import foreign_origin
from worker.console.web import cookie_secure, csrf_checked, current_person, redirect, render, runtime, session_token
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never //host or a scheme): no open redirect."""
    return target if target and target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _login_form(request: Request, rt: Runtime, *, error: str | None = None, email: str = "", status_code: int = 200,
                retry_after_s: int | None = None) -> Response:
    token = csrf.new_login_token()
    response = render(request, "login.html", status_code=status_code, login_csrf=token, error=error, email=email,
                      next=_safe_next(request.query_params.get("next") or request.headers.get("x-next")))
    response.set_cookie(csrf.LOGIN_COOKIE_NAME, token, httponly=True, samesite="lax", secure=cookie_secure(request, rt), path="/login")
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


@router.get("/login")
def login_page(request: Request, rt: Runtime = Depends(runtime)) -> Response:
    return _login_form(request, rt)


@router.post("/login")
def login(request: Request, email: str = Form(""), password: str = Form(""), next: str = Form("/"),
          csrf_token: str = Form(""), rt: Runtime = Depends(runtime)) -> Response:
    elsewhere = foreign_origin(request)
    if elsewhere is not None:
        return _login_form(request, rt, error=_sentence(elsewhere), email=email, status_code=403)
    if not csrf.matches(request.cookies.get(csrf.LOGIN_COOKIE_NAME), csrf_token):
        return _login_form(request, rt, error="The form expired; please log in again.", email=email, status_code=403)
    try:
        person = log_in(rt, email, password, address=request.client.host if request.client else None)
    except LoginRefused as exc:
        status = 429 if isinstance(exc, TooManyFailures) else 401
        return _login_form(request, rt, error=_sentence(str(exc)), email=email, status_code=status,
                           retry_after_s=exc.retry_after_s)
    token = start_session(rt, person, rt.settings.console_session_ttl_s)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE_NAME, token, max_age=int(rt.settings.console_session_ttl_s), httponly=True,
                        samesite="lax", secure=cookie_secure(request, rt), path="/")
    response.delete_cookie(csrf.LOGIN_COOKIE_NAME, path="/login")
    return response


@router.post("/logout", dependencies=[Depends(current_person), Depends(csrf_checked)])
def logout(request: Request, rt: Runtime = Depends(runtime)) -> Response:
    end_session(rt, session_token(request))
    response = redirect("/login")
    response.delete_cookie(COOKIE_NAME, path="/")
    return response
