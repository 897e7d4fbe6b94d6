"""Mount the console on the API's FastAPI app: its routers, its static files, HTML error pages.

The API's problem handlers decide every error's status (404 for a missing campaign, 409 for an
illegal transition, ...); on console paths, to a browser (Accept: text/html), their answer is
shown as a page instead of JSON.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from worker.console import (
    routes_campaigns, routes_contacts, routes_health, routes_keys, routes_login, routes_messages, routes_new, routes_people,
)
from worker.console.web import PACKAGE_DIR, Denied, NotLoggedIn, denied, not_logged_in, render, templates

log = logging.getLogger(__name__)
API_PATHS = ("/v1/", "/healthz", "/readyz", "/docs", "/openapi.json", "/redoc")
STATIC_PATH = "/static"


def is_console_path(path: str) -> bool:
    return not path.startswith(API_PATHS)


def install_console(app: FastAPI) -> None:
    """Call after the API's problem handlers are installed."""
    # routes_new first: its /campaigns/new must not be read as /campaigns/{campaign_id}
    for module in (routes_login, routes_new, routes_campaigns, routes_messages, routes_contacts, routes_people, routes_keys, routes_health):
        app.include_router(module.router)
    for name in templates.env.list_templates(extensions=["html"]):
        templates.env.get_template(name)  # compiled now, not on the first view after a start (~100 ms)
    _warm_queries()
    app.mount(STATIC_PATH, StaticFiles(directory=str(PACKAGE_DIR / "static")), name="console-static")
    app.add_exception_handler(NotLoggedIn, not_logged_in)
    app.add_exception_handler(Denied, denied)
    for exc_class, handler in list(app.exception_handlers.items()):
        if exc_class not in (NotLoggedIn, Denied):
            app.add_exception_handler(exc_class, _as_page(handler))


def _warm_queries() -> None:
    """Run the campaign page's queries once before serving (one-row reads), so the first view after
    a start does not pay for compiling them; a database not up yet is no error here."""
    from scheduler import campaigns, snapshots
    from worker.history import list_messages
    from worker.runtime import get_runtime

    try:
        with get_runtime().read_sessions() as session:
            snapshots.load(session, 0)
            snapshots.load_many(session, [0])
            campaigns.list_campaign_rows(session, after_id=0, limit=1)
            list_messages(session, campaign_id=0, limit=1)
            list_messages(session, limit=1)   # the newest message, if any: loading a row is compiled too
    except Exception:  # noqa: BLE001 - the first real request reports a database problem properly
        log.info("console warm-up skipped: the database did not answer", exc_info=True)


def _as_page(handler: Callable[[Request, Any], Awaitable[Response]]) -> Callable[[Request, Any], Awaitable[Response]]:
    async def on_error(request: Request, exc: Any) -> Response:
        response = await handler(request, exc)
        wants_page = "text/html" in request.headers.get("accept", "")  # a browser; API clients keep the problem JSON
        if not is_console_path(request.url.path) or not wants_page or 300 <= response.status_code < 400:
            return response
        try:
            problem = json.loads(bytes(response.body))
        except (ValueError, AttributeError):
            problem = {}
        detail = problem.get("detail") or problem.get("title") or "something went wrong"
        if problem.get("errors"):
            detail += ": " + "; ".join(f"{e.get('field')} {e.get('problem')}" for e in problem["errors"])
        return render(request, "error.html", status_code=response.status_code, status=response.status_code, detail=detail)

    return on_error
