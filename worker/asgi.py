"""The one ASGI app: `uvicorn --factory worker.asgi:create_app` (what `buttoncast api` runs).

The one place the two faces meet: the HTTP API's routers (worker/api/) with the web console
(worker/console/) mounted at /. Neither face imports the other.

Middleware, outermost first: the security headers on every answer (worker.console.security: CSP,
no framing, nosniff, Referrer-Policy), the body-size limit (413 before a byte is read when
Content-Length says so), then the client's address for the audit trail (worker.audit.RecordClientAddress), then
API-key authentication (401 before the body is read; 429 for an address past
API_AUTH_FAILURES_PER_MINUTE failures), then the routers. /docs is Swagger UI from its package
(worker.api.docs).
"""

from __future__ import annotations

from fastapi import FastAPI

from worker.api import campaigns, contacts, health, hooks, limits, messages, retry, segments
from worker.api.auth import ApiKeyAuthentication, document_scopes
from worker.api.bodylimit import BodySizeLimit
from worker.api.docs import install_docs
from worker.api.problems import install_problem_handlers
from worker.api.schemas import CampaignJsonIn, CampaignMultipartIn, CampaignSegmentIn, MessageIn, ProblemDetail
from worker.audit import RecordClientAddress
from worker.console.app import install_console
from worker.console.security import SecurityHeaders
from worker.logs import configure_logging
from worker.runtime import get_runtime
from worker.sending.idempotency import IDEMPOTENCY_PROMISE

ERROR_RESPONSES = {status: {"model": ProblemDetail, "content": {"application/problem+json": {}}}
                   for status in (400, 401, 403, 404, 409, 413, 415, 422, 429)}


def create_app() -> FastAPI:
    """Build the app; settings come from the environment once, as everywhere (worker.runtime)."""
    settings = get_runtime().settings
    configure_logging(settings.log_format)
    app = FastAPI(
        title="buttoncast API",
        version="1",
        summary="Bulk WhatsApp button messages through the Awal Chat API: messages, campaigns, retry, limits.",
        description="Authenticate with `Authorization: Bearer <key>` (`buttoncast apikey create`); each operation "
                    "names the scope it needs (`send` < `campaigns` < `admin`). Errors are RFC 9457 problem details. "
                    + IDEMPOTENCY_PROMISE + " See docs/api.md.",
        responses=ERROR_RESPONSES,
        docs_url=None,    # /docs is served from the installed Swagger UI package (worker.api.docs), not a CDN
        redoc_url=None,
    )
    for module in (messages, campaigns, retry, contacts, segments, hooks, limits, health):
        app.include_router(module.router)
    install_problem_handlers(app)
    install_docs(app)
    install_console(app)  # the web console at / (worker/console/)
    _document_raw_bodies(app)
    document_scopes(app)
    app.add_middleware(ApiKeyAuthentication)
    app.add_middleware(RecordClientAddress)   # every audit row written while serving a request: its address
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.api_max_body_bytes, max_upload_bytes=settings.api_max_upload_bytes)
    app.add_middleware(SecurityHeaders)   # last added, so outermost: the API's own 401/413/429 carry the headers too
    return app


def _document_raw_bodies(app: FastAPI) -> None:
    """The bodies read by our own validation are referenced from `openapi_extra`: add their schemas
    (and the schemas they refer to) to the document's components."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = build()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in (MessageIn, CampaignJsonIn, CampaignSegmentIn, CampaignMultipartIn):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas.setdefault(model.__name__, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
