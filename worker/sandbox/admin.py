"""Test and admin endpoints under `/_sandbox/`.

Never open to an unauthenticated caller off loopback: with an admin token configured
(`--admin-token`, SANDBOX_ADMIN_TOKEN) every call must carry it in X-Sandbox-Admin-Token (403
otherwise); without one, only loopback peers get in (403 for the rest).

GET  /_sandbox/received[?phone=]  -> {"received": [record, ...]}  (answered 200 or stalled)
GET  /_sandbox/stats              -> {"counts": {...}, "accepted": n, "requests": n,
                                      "fault_events": {phone: [...]}, "webhooks": {...},
                                      "late_failures": {code: n}, "stop_replies": n,
                                      "taps": {wamid: button id} (taps planned),
                                      "scripts_pending": {phone: [...]}, "config": {...}}
POST /_sandbox/reset              -> forget records, counts, scripts, the rate window, forced 429s
POST /_sandbox/config             -> JSON of runtime options (config.RUNTIME_OPTIONS), plus the
                                      actions force_429_for_s (seconds) with optional retry_after
POST /_sandbox/script             -> {"phone": "...", "responses": ["503", "503"]}
GET  /_sandbox/limit              -> {"sandbox": true, "rate_limit": "50/s" or null (none)}; open to every
                                     caller (the limit is in every answer's X-RateLimit-Limit too): how
                                     `buttoncast run` learns the pace of a sandbox on this machine
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from worker.errors import ConfigError
from worker.sandbox.config import ADMIN_TOKEN_HEADER, SandboxConfig, is_loopback
from worker.sandbox.faults import FaultPlan, ScriptError

ADMIN_PREFIX = "/_sandbox"
_HIDDEN = {"secret", "webhook_secret", "admin_token", "parsed_rate"}
Handler = Callable[[web.Request], Awaitable[web.Response]]


class SandboxApp(Protocol):
    """What the admin routes reach of the running sandbox (worker.sandbox.server.SandboxApp)."""

    config: SandboxConfig
    state: Any      # worker.sandbox.state.SandboxState
    limiter: Any    # worker.sandbox.state.FixedWindowLimiter
    faults: FaultPlan
    webhooks: Any   # worker.sandbox.webhooks.WebhookEmitter


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


def _bad(message: str) -> web.Response:
    return _json({"error": "bad_request", "message": message}, status=400)


def public_config(sandbox: SandboxApp) -> dict[str, Any]:
    """The configuration without its secrets."""
    return {k: v for k, v in vars(sandbox.config).items() if k not in _HIDDEN}


def admin_refusal(request: web.Request, token: str | None) -> str | None:
    """Why this caller may not use /_sandbox/* (None: it may)."""
    if token:
        given = request.headers.get(ADMIN_TOKEN_HEADER, "")
        if hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            return None
        return f"the sandbox's admin endpoints need the admin token in {ADMIN_TOKEN_HEADER}"
    if is_loopback(request.remote):
        return None
    return "the sandbox's admin endpoints answer loopback only; start it with --admin-token to allow others"


def _guarded(sandbox: SandboxApp, handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.Response:
        refusal = admin_refusal(request, sandbox.config.admin_token)
        if refusal is not None:
            return _json({"error": "forbidden", "message": refusal}, status=403)
        return await handler(request)

    return guarded


def add_admin_routes(app: web.Application, sandbox: SandboxApp) -> None:
    async def received(request: web.Request) -> web.Response:
        return _json({"received": sandbox.state.received(request.query.get("phone"))})

    async def stats(_request: web.Request) -> web.Response:
        out = sandbox.state.stats()
        out["scripts_pending"] = sandbox.faults.pending()
        out["config"] = public_config(sandbox)
        return _json(out)

    async def reset(_request: web.Request) -> web.Response:
        sandbox.webhooks.cancel_pending()
        sandbox.state.reset()
        sandbox.limiter.reset()
        sandbox.faults.reset(sandbox.config.seed)
        return _json({"reset": True})

    async def configure(request: web.Request) -> web.Response:
        try:
            options = await request.json()
        except ValueError:
            return _bad("the body must be a JSON object of options")
        if not isinstance(options, dict):
            return _bad("the body must be a JSON object of options")
        force_s = options.pop("force_429_for_s", None)
        retry_after = options.pop("retry_after", None)
        try:
            changed = sandbox.config.update(options)
        except ConfigError as exc:
            return _bad(str(exc))
        if "seed" in options:
            sandbox.faults.reseed(sandbox.config.seed)
        if force_s is not None:
            sandbox.limiter.force(float(force_s), int(retry_after) if retry_after is not None else None)
            changed.append("force_429_for_s")
        return _json({"changed": changed, "config": public_config(sandbox)})

    async def script(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            phone, responses = str(data["phone"]), data["responses"]
            if not isinstance(responses, list):
                raise TypeError
            sandbox.faults.script(phone, responses)
        except ScriptError as exc:  # a ValueError too: catch it first
            return _bad(str(exc))
        except (ValueError, KeyError, TypeError):
            return _bad('send {"phone": "...", "responses": ["503", ...]}')
        return _json({"scripted": sandbox.faults.pending().get(phone, [])})

    async def limit(_request: web.Request) -> web.Response:
        rate = sandbox.config.parsed_rate
        return _json({"sandbox": True, "rate_limit": str(rate) if rate else None})

    app.router.add_get(ADMIN_PREFIX + "/limit", limit)
    app.router.add_get(ADMIN_PREFIX + "/received", _guarded(sandbox, received))
    app.router.add_get(ADMIN_PREFIX + "/stats", _guarded(sandbox, stats))
    app.router.add_post(ADMIN_PREFIX + "/reset", _guarded(sandbox, reset))
    app.router.add_post(ADMIN_PREFIX + "/config", _guarded(sandbox, configure))
    app.router.add_post(ADMIN_PREFIX + "/script", _guarded(sandbox, script))
