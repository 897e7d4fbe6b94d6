"""The sandbox's send endpoint: `POST {prefix}/w/message/button?phone_number_id=<id>`.

A request goes through, in this order:
1. `latency_ms` (an async sleep: concurrency is unaffected);
2. a random `drop_rate` fault: the transport is closed before the body is read (nothing recorded);
3. authentication (auth.py) -> 401 `authentication_failed`;
4. the rate limit -> 429 `rate_limit_exceeded`. Only requests that pass authentication count
   against the window (a forged request should not spend the account's budget); every response,
   errors included, carries X-RateLimit-Limit/Remaining/Reset when a rate limit is configured;
5. the body: JSON -> 400 `validation_failed`; missing/unknown phone_number_id -> 400/404;
   the fields (worker.message.ButtonMessage.build) -> 400 `validation_failed` with details
   {field: problem}, or 400 `invalid_phone_number` when the phone is the only problem or matches a
   `fail_phone_prefixes` entry, or is not a string of digits only (no '+': the contract);
6. a scripted fault for the phone, else a random one (500 / 503 / timeout), see faults.py;
7. accept: record, answer 200, schedule webhooks.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from worker.errors import MessageInvalid
from worker.message import ButtonMessage
from worker.sandbox.auth import check_request
from worker.sandbox.config import FIRST_VENDOR_ID, FORCED_RETRY_AFTER_S, SandboxConfig
from worker.sandbox.faults import FaultPlan
from worker.sandbox.state import (
    OUTCOME_SENT,
    OUTCOME_TIMEOUT,
    FixedWindowLimiter,
    RateWindow,
    SandboxState,
    new_request_id,
)
from worker.sandbox.webhooks import WebhookEmitter

SEND_PATH = "/w/message/button"
BODY_FIELDS = ("phone", "body_text", "buttons", "header_text", "footer_text")
_STATUS_CODES = {400: "validation_failed", 401: "authentication_failed", 404: "resource_not_found",
                 429: "rate_limit_exceeded", 500: "internal_error", 503: "service_unavailable"}


class ConnectionDropped(Exception):
    """Raised after the transport was closed on purpose: there is nothing left to answer."""


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   *, request_id: str | None = None) -> web.Response:
    body = {"error": code, "message": message, "details": details or {},
            "request_id": request_id or new_request_id()}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


class SandboxApp:
    """The aiohttp application and the state behind it; one per running sandbox."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.state = SandboxState(FIRST_VENDOR_ID)
        self.limiter = FixedWindowLimiter()
        self.faults = FaultPlan(config.seed)
        self.webhooks = WebhookEmitter(config, self.state, self.faults)
        self.stopping = asyncio.Event()
        self._secret = config.secret.encode("utf-8")

    def build(self) -> web.Application:
        from worker.sandbox.admin import add_admin_routes

        app = web.Application(middlewares=[self._drop_middleware])
        app.router.add_post(self.config.path_prefix + SEND_PATH, self.send_button)
        add_admin_routes(app, self)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.stopping.set()  # ends read-timeout stalls, so shutdown does not wait for them
        self.webhooks.cancel_pending()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.webhooks.close()

    @web.middleware
    async def _drop_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ConnectionDropped:
            # Nothing may be written: hand aiohttp an exception it treats as a lost client.
            raise asyncio.CancelledError from None

    # --- the send endpoint ----------------------------------------------------------------
    async def send_button(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000.0)
        if self.faults.chance(cfg.drop_rate):
            self._drop(request, None, "random")
        body = await request.read()
        now = time.time()
        raw_path, _, query = request.raw_path.partition("?")
        failure = check_request(
            headers=request.headers, method=request.method, raw_path=raw_path, query_string=query,
            body=body, secret=self._secret, client_id=cfg.client_id, domain=cfg.domain,
            now=now, tolerance_s=cfg.timestamp_tolerance_s,
        )
        if failure is not None:
            return self._error(401, "authentication_failed", failure.message, failure.details, self._peek(now))
        window, refused = self._take(now)
        if refused is not None:
            return refused
        return await self._handle_authentic(request, body, window)

    async def _handle_authentic(self, request: web.Request, body: bytes, window: RateWindow | None) -> web.StreamResponse:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._error(400, "validation_failed", "the body is not valid JSON", {"body": str(exc)}, window)
        if not isinstance(payload, dict):
            return self._error(400, "validation_failed", "the body must be a JSON object", {"body": "must be an object"}, window)
        sender = request.query.get("phone_number_id", "")
        if not sender:
            return self._error(400, "validation_failed", "phone_number_id is required",
                               {"phone_number_id": "is required (query parameter)"}, window)
        allowed = self.config.phone_number_ids
        if allowed is not None and sender not in allowed:
            return self._error(404, "resource_not_found", f"phone_number_id {sender} not found",
                               {"phone_number_id": sender}, window)
        refused = self._validate(payload, window)
        if refused is not None:
            return refused
        phone = str(payload["phone"])
        fault, source = self.faults.scripted(phone), "script"
        if fault is None:
            cfg = self.config
            fault, source = self.faults.random_fault(error_rate_500=cfg.error_rate_500,
                                                     error_rate_503=cfg.error_rate_503,
                                                     timeout_rate=cfg.timeout_rate), "random"
        if fault is not None:
            self.state.fault(phone, fault, source)
            return await self._inject(request, fault, phone, sender, payload, window)
        record = self.state.accept(phone=phone, phone_number_id=sender, body=payload,
                                   outcome=OUTCOME_SENT, request_id=new_request_id())
        self.state.count("200")
        self.webhooks.schedule(record)
        answer = {"status": True, "message": {"id": record.id, "messageId": record.message_id, "status": "sent"}}
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json",
                            headers=self._rate_headers(window))

    def _validate(self, payload: dict[str, Any], window: RateWindow | None) -> web.Response | None:
        details = {str(k): "is not a field of a button message" for k in payload if k not in BODY_FIELDS}
        try:
            ButtonMessage.build(**{k: payload.get(k) for k in BODY_FIELDS})
        except MessageInvalid as exc:
            details.update({p.field: p.problem for p in exc.problems})
        except TypeError as exc:  # e.g. buttons is a number: not iterable
            details["buttons"] = f"must be a list of buttons ({exc})"
        phone = payload.get("phone")
        if details and set(details) != {"phone"}:
            return self._error(400, "validation_failed", "the message breaks the contract's limits", details, window)
        if details:
            return self._error(400, "invalid_phone_number", f"phone: {details['phone']}", {"phone": details["phone"]}, window)
        if not (isinstance(phone, str) and phone.isascii() and phone.isdigit()):
            # The contract: a string of digits only, no '+' or separators (worker.message accepts
            # those and normalizes them away; the vendor is stricter, so the sandbox is too).
            return self._error(400, "invalid_phone_number", f"phone {phone!r} must be a string of digits only",
                               {"phone": "must be a string of digits only, no '+' or separators"}, window)
        if phone.startswith(self.config.fail_phone_prefixes or ("\0",)):
            return self._error(400, "invalid_phone_number", f"{phone} is not a WhatsApp number",
                               {"phone": "is not registered on WhatsApp"}, window)
        return None

    async def _inject(self, request: web.Request, fault: str, phone: str, sender: str,
                      payload: dict[str, Any], window: RateWindow | None) -> web.StreamResponse:
        if fault == "drop":
            self._drop(request, phone, None)
        if fault == "timeout":
            record = self.state.accept(phone=phone, phone_number_id=sender, body=payload,
                                       outcome=OUTCOME_TIMEOUT, request_id=new_request_id())
            self.state.count("timeout")
            self.webhooks.schedule(record)  # the vendor did send it: its status events still come
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=self.config.stall_s)
            except asyncio.TimeoutError:
                pass
            self._drop(request, phone, None, count=False)
        if fault == "429":
            return self._too_many(window, FORCED_RETRY_AFTER_S)
        status = int(fault)
        message = {400: "scripted validation failure", 401: "scripted authentication failure",
                   500: "internal server error", 503: "service temporarily unavailable"}[status]
        return self._error(status, _STATUS_CODES[status], message, {"injected": True}, window)

    # --- helpers ----------------------------------------------------------------------------
    def _drop(self, request: web.Request, phone: str | None, source: str | None, *, count: bool = True) -> None:
        if count:
            self.state.count("drop")
        if source is not None:
            self.state.fault(phone, "drop", source)
        if request.transport is not None:
            request.transport.abort() if hasattr(request.transport, "abort") else request.transport.close()
        raise ConnectionDropped

    def _peek(self, now: float) -> RateWindow | None:
        rate = self.config.parsed_rate
        return self.limiter.peek(rate, now) if rate else None

    def _take(self, now: float) -> tuple[RateWindow | None, web.Response | None]:
        rate = self.config.parsed_rate
        window = None
        if rate is not None:
            fits, window = self.limiter.take(rate, now)
            if not fits:
                return window, self._too_many(window, window.retry_after_s)
        forced = self.limiter.forced(now)
        if forced is not None:
            return window, self._too_many(window, forced)
        return window, None

    def _too_many(self, window: RateWindow | None, retry_after_s: int) -> web.Response:
        response = self._error(429, "rate_limit_exceeded", f"rate limit exceeded; retry after {retry_after_s}s",
                               {"retry_after": retry_after_s}, window)
        response.headers["Retry-After"] = str(max(1, int(retry_after_s)))
        return response

    def _error(self, status: int, code: str, message: str, details: dict[str, Any],
               window: RateWindow | None) -> web.Response:
        self.state.count(str(status) if status in (429, 500, 503) else f"{status}:{code}")
        response = error_response(status, code, message, details)
        response.headers.update(self._rate_headers(window))
        return response

    def _rate_headers(self, window: RateWindow | None) -> dict[str, str]:
        if window is None:
            return {}
        remaining = window.remaining
        if self.config.remaining_override is not None:
            remaining = min(remaining, self.config.remaining_override)
        return {"X-RateLimit-Limit": str(window.limit), "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(window.reset_at)}
