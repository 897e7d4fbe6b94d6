"""The webhook receiver as a plain WSGI app (served by waitress in `buttoncast webhooks`).

One POST, in order: size limit (413) -> signature (401, nothing written) -> shape (400, logged) ->
INSERT the event and apply it to its message in one transaction -> COMMIT -> 200. The event is
durable before the vendor hears 200; if the database fails we answer 503 so the vendor retries.
Applying inline costs one indexed SELECT and one conditional UPDATE by primary key, so a separate
queue would add a moving part without making the answer measurably faster (bench/webhook_burst.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from worker.contacts.service import DEFAULT_RULES, ConsentRules
from worker.models import utcnow
from worker.settings import WEBHOOK_PATH
from worker.webhooks.apply import Outcome, record_and_apply
from worker.webhooks.breaker import DEFAULT_POLICY, LatePolicy
from worker.webhooks.events import Event, ShapeError, Verification, parse_body
from worker.webhooks.verify import VERIFICATION_NEEDS_SIGNATURE, BodySigner, signature_from

MAX_BODY_BYTES = 1024 * 1024
#: an unsigned body is only parsed (as a possible verification challenge) up to this size, so an
#: unsigned request costs at most one HMAC over the capped body and one tiny JSON parse (item 14)
UNSIGNED_PARSE_MAX_BYTES = 4096
HEALTH_PATH = "/healthz"
log = logging.getLogger("buttoncast.webhooks")

StartResponse = Callable[..., Any]
_REASONS = {200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 404: "404 Not Found",
            405: "405 Method Not Allowed", 411: "411 Length Required", 413: "413 Payload Too Large",
            503: "503 Service Unavailable"}


class WebhookApp:
    """WSGI callable: verification challenges and signed vendor events at `path`."""

    def __init__(
        self, *, session_factory: sessionmaker[Session], signer: BodySigner, path: str = WEBHOOK_PATH,
        max_body_bytes: int = MAX_BODY_BYTES, consent: ConsentRules = DEFAULT_RULES,
        late: LatePolicy = DEFAULT_POLICY,
    ) -> None:
        self._consent = consent
        self._late = late
        self._session_factory = session_factory
        self._signer = signer
        self.path = path
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        route = environ.get("PATH_INFO") or "/"
        if route == HEALTH_PATH and method == "GET":
            return _json(start_response, 200, {"ok": True})
        if route.rstrip("/") != self.path.rstrip("/"):
            return _error(start_response, 404, "not_found", f"no webhook endpoint at {route}; it is {self.path}")
        if method == "GET":
            return self._get(environ, start_response)
        if method != "POST":
            return _error(start_response, 405, "method_not_allowed", "use POST (or GET ?challenge=)", [("Allow", "GET, POST")])
        return self._post(environ, start_response)

    def _get(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """A GET verification: `?challenge=<s>` (with `type=verification` or without)."""
        query = parse_qs(environ.get("QUERY_STRING", ""))
        challenge = (query.get("challenge") or [None])[0]
        if challenge is None:
            return _error(start_response, 400, "invalid_request", "GET needs ?challenge=<string> (events are POSTed)")
        return _json(start_response, 200, {"challenge": challenge})

    def _post(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = self._read_body(environ)
        if body is None:
            return _error(start_response, 413, "payload_too_large", f"body over {self.max_body_bytes} bytes")
        signature = signature_from(environ)
        if signature is None and (VERIFICATION_NEEDS_SIGNATURE or len(body) > UNSIGNED_PARSE_MAX_BYTES):
            return self._unsigned(start_response)
        signed = self._signer.valid(body, signature)
        if signature is not None and not signed:
            log.warning("webhook rejected: signature does not match (wrong secret or altered body)")
            return _error(start_response, 401, "invalid_signature", "X-Awal-Signature-256 does not match the body")
        try:
            parsed = parse_body(body, received_at=utcnow())
        except ShapeError as exc:
            if not signed:
                return self._unsigned(start_response)
            log.warning("webhook rejected (400): %s (%d bytes)", exc, len(body))
            return _error(start_response, 400, "invalid_event", str(exc))
        if isinstance(parsed, Verification):
            if signed or not VERIFICATION_NEEDS_SIGNATURE:
                return _json(start_response, 200, {"challenge": parsed.challenge})
            return self._unsigned(start_response)
        if not signed:
            return self._unsigned(start_response)
        return self._record(start_response, parsed, body)

    def _record(self, start_response: StartResponse, event: Event, body: bytes) -> Iterable[bytes]:
        try:
            with self._session_factory() as session, session.begin():
                outcome = record_and_apply(session, event, body, self._consent, late=self._late)
        except SQLAlchemyError as exc:
            log.error("webhook %s not recorded, answering 503 so the vendor retries: %s",
                      event.event_type, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            return _error(start_response, 503, "unavailable", "the event could not be stored; retry later")
        if outcome is Outcome.PENDING:
            log.info("webhook %s for unknown message %s kept for later matching", event.event_type, event.vendor_message_id)
        return _json(start_response, 200, {"ok": True, "outcome": outcome.value})

    def _read_body(self, environ: dict[str, Any]) -> bytes | None:
        """The raw body, or None when it is over the limit (checked before reading when declared)."""
        try:
            declared = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > self.max_body_bytes:
            return None
        stream = environ["wsgi.input"]
        body = stream.read(declared) if declared else stream.read(self.max_body_bytes + 1)
        return None if len(body) > self.max_body_bytes else body

    @staticmethod
    def _unsigned(start_response: StartResponse) -> Iterable[bytes]:
        log.warning("webhook rejected: no X-Awal-Signature-256 header")
        return _error(start_response, 401, "missing_signature", "X-Awal-Signature-256 header is required")


def create_app(
    *, session_factory: sessionmaker[Session], webhook_secret: str, path: str = WEBHOOK_PATH,
    max_body_bytes: int = MAX_BODY_BYTES, consent: ConsentRules = DEFAULT_RULES, late: LatePolicy = DEFAULT_POLICY,
) -> WebhookApp:
    """The receiver for one database and secret. Raises ValueError when the secret is empty.
    `consent`: the opt-out/opt-in keywords and buttons (ConsentRules.from_settings); `late`: the
    late-failure breaker's thresholds (LatePolicy.from_settings)."""
    return WebhookApp(session_factory=session_factory, signer=BodySigner(webhook_secret), path=path,
                      max_body_bytes=max_body_bytes, consent=consent, late=late)


def _json(start_response: StartResponse, status: int, doc: dict[str, Any],
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    payload = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))] + (extra or [])
    start_response(_REASONS[status], headers)
    return [payload]


def _error(start_response: StartResponse, status: int, code: str, message: str,
           extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    return _json(start_response, status, {"error": code, "message": message}, extra)
