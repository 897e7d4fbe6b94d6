"""Mount the console on the API's FastAPI app: its routers, its static files, HTML error pages.

The API's problem handlers decide every error's status (404 for a missing campaign, 409 for an
illegal transition, ...); on console paths, to a browser (Accept: text/html), their answer is
shown as a page instead of JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from worker.console import (
    routes_audit,
    routes_campaigns,
    routes_contacts,
    routes_follow_up,
    routes_health,
    routes_keys,
    routes_login,
    routes_messages,
    routes_new,
    routes_opt_outs,
    routes_people,
    routes_preview,
    routes_retry,
    routes_segments,
)
from worker.console.web import PACKAGE_DIR, Denied, NotLoggedIn, denied, not_logged_in, render, templates

log = logging.getLogger(__name__)
API_PATHS = ("/v1/", "/healthz", "/readyz", "/docs", "/openapi.json", "/redoc")
STATIC_PATH = "/static"
WARM_UP_TIMEOUT_S = 10.0


def is_console_path(path: str) -> bool:
    return not path.startswith(API_PATHS)


def install_console(app: FastAPI) -> None:
    """Call after the API's problem handlers are installed."""
    # routes_new first: its /campaigns/new must not be read as /campaigns/{campaign_id}
    for module in (routes_login, routes_new, routes_campaigns, routes_preview, routes_follow_up, routes_segments, routes_messages, routes_contacts, routes_people, routes_keys, routes_health,
                   routes_retry, routes_opt_outs, routes_audit):
        app.include_router(module.router)
    for name in templates.env.list_templates(extensions=["html"]):
        templates.env.get_template(name)  # compiled now, not on the first view after a start (~100 ms)
    _warm_queries()
    _warm_routes(app)
    app.mount(STATIC_PATH, StaticFiles(directory=str(PACKAGE_DIR / "static")), name="console-static")
    app.add_exception_handler(NotLoggedIn, not_logged_in)
    app.add_exception_handler(Denied, denied)
    for exc_class, handler in list(app.exception_handlers.items()):
        if exc_class not in (NotLoggedIn, Denied):
            app.add_exception_handler(exc_class, _as_page(handler))


def _warm_routes(app: FastAPI) -> None:
    """FastAPI prepares a router's routes on the first request that passes them (~70-100 ms for the
    API's and the console's, paid by someone's first page after a start); one request made here
    that matches no route passes them all. Its own thread: uvicorn builds the app inside its loop."""
    path = "/__warm-up__"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict) -> None:
        return None

    def run() -> None:
        try:
            asyncio.run(app.router(scope, receive, send))
        except Exception:  # noqa: BLE001 - only a warm-up: the first real request prepares what this did not
            log.info("console route warm-up skipped", exc_info=True)

    thread = threading.Thread(target=run, name="console-warm-up", daemon=True)
    thread.start()
    thread.join(WARM_UP_TIMEOUT_S)


def _warm_queries() -> None:
    """Run the campaign page's queries once before serving (one-row reads), so the first view after
    a start does not pay for compiling them; a database not up yet is no error here."""
    from scheduler import campaigns, recipient_preview, report, snapshots
    from worker.access.sessions import person_for
    from worker.runtime import get_runtime
    from worker.sending.history import MessageNotFound, list_messages, message_history

    try:
        with get_runtime().read_sessions() as session:
            person_for(session, "warm-up")   # every page's first query: who is asking
            snapshots.load(session, 0)
            report.tally(session, 0)         # the background recount's query (no rows: campaign 0)
            snapshots.load_many(session, [0])
            campaigns.list_campaign_rows(session, after_id=0, limit=1)
            list_messages(session, campaign_id=0, limit=1)
            list_messages(session, campaign_id=0, after_id=0, limit=1)   # the recipients table, in id order
            list_messages(session, limit=1)   # the newest message, if any: loading a row is compiled too
            recipient_preview.preview(session, 0)   # the campaign page's message for its first recipient
            recipient_preview.find_by_phone(session, 0, "9")
            with contextlib.suppress(MessageNotFound):
                message_history(session, 0)   # a message's page
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
