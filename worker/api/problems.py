"""Every error the API gives, in one shape: RFC 9457 problem details (`application/problem+json`).

`{"type", "title", "status", "detail"}`, plus `errors: [{"field", "problem"}]` for invalid input
(the same field names and wording as the CLI: they come from the same validation in
worker.message), and `rejected: [{"line", "reason"}]` when an import was refused. Our own
exceptions are mapped to a status here, once; a handler never builds an error response itself.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler.campaigns import CampaignNotFound, IllegalTransition, NoRecipients
from scheduler.experiments import ExperimentError
from scheduler.importer import ImportRefused, RecipientsFileError
from scheduler.retry import RetryRefused
from worker.access.keys import ApiKeyNotFound
from worker.contacts.segments import SegmentNotFound
from worker.errors import ButtoncastError, ConfigError, MessageInvalid
from worker.hooks.service import HookNotFound
from worker.sending.history import MessageNotFound
from worker.sending.idempotency import IdempotencyKeyReused
from worker.window import WindowInvalid

log = logging.getLogger("buttoncast.api")
PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:buttoncast:problem:"
MAX_REJECTED_SHOWN = 1_000
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
           409: "Conflict", 413: "Content too large", 415: "Unsupported media type", 422: "Unprocessable content",
           429: "Too many requests", 500: "Internal server error", 503: "Service unavailable"}


class BodyTooLarge(Exception):
    """The body passed its limit while it was being read (raised by worker.api.bodylimit)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {limit} bytes")
        self.limit = limit


class Problem(Exception):
    """Raise from anywhere in a request to answer with this problem."""

    def __init__(self, status: int, code: str, detail: str | None = None, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail or code)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra


def problem_response(status: int, code: str, detail: str | None = None, *, instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": TYPE_BASE + code, "title": _TITLES.get(status, "Error"), "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def invalid(problems: list[dict[str, str]], detail: str = "the request is invalid; see errors") -> JSONResponse:
    return problem_response(422, "validation-failed", detail, errors=problems)


def _field(loc: tuple[Any, ...]) -> str:
    """pydantic's ("query", "limit") -> "limit"; ("body", "buttons", 0, "title") -> "buttons[0].title"."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "request"


def _pydantic_problem(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "int_parsing":
        return "must be a whole number"
    if kind == "missing":
        return "is required"
    if kind in ("enum", "literal_error"):
        return "must be one of " + str(error.get("ctx", {}).get("expected", "the listed values"))
    message = str(error.get("msg", "is invalid"))
    return message[:1].lower() + message[1:]


def _unreadable_json(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not parse a JSON body (its 400 "error parsing the body" hides the cause):
    nesting deeper than Python's recursion limit, or an integer longer than Python reads (4,300 digits)."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, RecursionError):
        return "is nested too deeply to read"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "has a number too long to read"
    return None


def install_problem_handlers(app: FastAPI) -> None:
    """Map every exception to its problem; an unexpected one is logged and answered 500 without detail."""

    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extra)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unreadable = _unreadable_json(exc)
        if unreadable is not None:   # FastAPI's own body parsing gave up: say why, as our parser does
            return invalid([{"field": "body", "problem": unreadable}])
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, f"http-{exc.status_code}")
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail not in _TITLES.values() else None
        return problem_response(exc.status_code, code, detail or f"{request.method} {request.url.path}: {_TITLES.get(exc.status_code, 'error').lower()}",
                                headers=getattr(exc, "headers", None))

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid([{"field": _field(tuple(e.get("loc", ()))), "problem": _pydantic_problem(e)} for e in exc.errors()])

    async def on_message_invalid(request: Request, exc: MessageInvalid) -> JSONResponse:
        return invalid(exc.as_dict())

    async def on_import_refused(request: Request, exc: ImportRefused) -> JSONResponse:
        rejected = [{"line": p.line, "reason": p.reason} for p in exc.result.problems[:MAX_REJECTED_SHOWN]]
        return problem_response(422, "import-refused", str(exc), rejected=rejected, rejected_total=exc.result.rejected)

    async def on_ours(request: Request, exc: ButtoncastError) -> JSONResponse:
        if isinstance(exc, (CampaignNotFound, MessageNotFound, ApiKeyNotFound, HookNotFound, SegmentNotFound)):
            return problem_response(404, "not-found", str(exc))
        if isinstance(exc, (RecipientsFileError, WindowInvalid)):
            return problem_response(422, "recipients-invalid" if isinstance(exc, RecipientsFileError) else "window-invalid", str(exc))
        if isinstance(exc, IdempotencyKeyReused):
            return problem_response(422, "idempotency-key-reused", str(exc))
        if isinstance(exc, (IllegalTransition, RetryRefused, NoRecipients, ExperimentError)):
            return problem_response(409, "conflict", str(exc))
        if isinstance(exc, ConfigError):
            log.error("configuration: %s", exc)
            return problem_response(503, "not-configured", str(exc))
        return problem_response(409, "refused", str(exc))

    async def on_too_large(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(413, "too-large", str(exc))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal", "an unexpected error; it was logged")

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(MessageInvalid, on_message_invalid)
    app.add_exception_handler(ImportRefused, on_import_refused)
    app.add_exception_handler(ButtoncastError, on_ours)
    app.add_exception_handler(BodyTooLarge, on_too_large)
    app.add_exception_handler(Exception, on_unexpected)
