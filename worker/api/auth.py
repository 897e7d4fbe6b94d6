"""Authentication before anything else, and the typed scope dependency each route declares.

`ApiKeyAuthentication` is a plain ASGI middleware: for every /v1/ request it checks the
`Authorization: Bearer <key>` header (one indexed lookup, one sha256, constant-time compare; a key
verified in the last API_KEY_CACHE_S seconds is trusted without the lookup) *before* the body is read, so an unauthenticated request costs a small, bounded amount of work and
never reaches a body parser. Routes then say which scope they need: `principal: Principal =
Depends(require(Scope.CAMPAIGNS))` gives 403 for a key without it.

Failed authentication is throttled per client address (`FailedAuthThrottle`): past
API_AUTH_FAILURES_PER_MINUTE failures an address gets 429 with Retry-After, before any lookup, so
guessing keys costs the database nothing more. The scope each route needs is also published in the
OpenAPI document (`document_scopes`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any, Callable

import anyio.to_thread
from fastapi import FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from worker.access.keys import Principal, Scope, VerifiedKeys
from worker.api.problems import Problem, problem_response
from worker.runtime import get_runtime

PROTECTED_PREFIX = "/v1/"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="buttoncast"'}
_bearer = HTTPBearer(auto_error=False, description="An API key from `buttoncast apikey create`.")


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    kind, _, token = header.partition(" ")
    return token.strip() if kind.lower() == "bearer" and token.strip() else None


class FailedAuthThrottle:
    """Failed authentications per client address, as a token bucket: `per_minute` failures, refilled
    evenly over a minute. An address whose bucket is empty is refused (429) for as long as the next
    token takes. Memory is bounded: at most MAX_ADDRESSES addresses, the least recently seen forgotten
    first (a forgotten one starts with a full bucket). One per API process: no lock, it runs on the
    event loop."""

    MAX_ADDRESSES = 10_000

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.per_minute, self.clock, self.max_addresses = per_minute, clock, max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # address -> (tokens, as of)

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - at) * self.per_minute / 60.0)

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None if it may now."""
        if self.per_minute <= 0 or address not in self._buckets:
            return None
        tokens = self._tokens(address, self.clock())
        return None if tokens >= 1.0 else max(1, math.ceil((1.0 - tokens) * 60.0 / self.per_minute))

    def failed(self, address: str) -> None:
        if self.per_minute <= 0:
            return
        now = self.clock()
        tokens = self._tokens(address, now)
        self._buckets.pop(address, None)
        while len(self._buckets) >= self.max_addresses:
            self._buckets.popitem(last=False)
        self._buckets[address] = (max(0.0, tokens - 1.0), now)


def client_address(scope: AsgiScope) -> str:
    """The client's address as the server saw it (uvicorn takes X-Forwarded-For only from FORWARDED_ALLOW_IPS)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class ApiKeyAuthentication:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._keys: VerifiedKeys | None = None
        self._throttle: FailedAuthThrottle | None = None

    @property
    def keys(self) -> VerifiedKeys:
        if self._keys is None:
            runtime = get_runtime()
            self._keys = VerifiedKeys(runtime.single_statements, runtime.settings.api_key_cache_s)
        return self._keys

    @property
    def throttle(self) -> FailedAuthThrottle:
        if self._throttle is None:
            self._throttle = FailedAuthThrottle(get_runtime().settings.api_auth_failures_per_minute)
        return self._throttle

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        token = bearer_token(header)
        address = client_address(scope)
        # a key verified moments ago costs nothing and is never throttled
        principal = self.keys.lookup(token) if token is not None else None
        if principal is None:
            wait_s = self.throttle.retry_after(address)
            if wait_s is not None:
                await problem_response(429, "too-many-failed-authentications",
                                       f"too many failed authentications from this address; try again in {wait_s} s",
                                       headers={"Retry-After": str(wait_s)})(scope, receive, send)
                return
            if token is not None:
                principal = await anyio.to_thread.run_sync(self.keys.verify, token)
        if principal is None:
            self.throttle.failed(address)
            detail = ("no API key: send Authorization: Bearer <key>" if token is None
                      else "the API key is unknown or revoked")
            await problem_response(401, "unauthorized", detail, headers=CHALLENGE)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def require(needed: Scope) -> Callable[..., Principal]:
    """A dependency: the request's principal, if its key's scope includes `needed` (else 403).
    (async: it does no I/O, so it runs on the event loop instead of a thread-pool hop.)"""

    # Security(..., scopes=): the operation's security requirement in the OpenAPI document names the scope
    async def dependency(request: Request, _credentials: HTTPAuthorizationCredentials | None = Security(
            _bearer, scopes=[needed.value])) -> Principal:
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:  # only if the middleware was not installed: refuse rather than guess
            raise Problem(401, "unauthorized", "no API key: send Authorization: Bearer <key>", headers=CHALLENGE)
        if not principal.scope.allows(needed):
            raise Problem(403, "forbidden", f"this key has scope {principal.scope.value}; this needs {needed.value}"
                          + (" (or admin)" if needed != Scope.ADMIN else ""))
        return principal

    return dependency


#: what a read open to `send` keys says about whose messages it shows (worker.sending.history.Reader)
SEND_READS = "A `send` key reads only the messages it created itself; `campaigns` and `admin` keys read every message."


def document_scopes(app: FastAPI) -> None:
    """Say in the OpenAPI document which scope each operation needs: its security requirement names
    the scope (`require` declares it; OpenAPI 3.1 allows roles there), `x-required-scope` repeats it
    for tools, and its description says it in words."""
    build = app.openapi
    documented: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        document = build()
        if documented.get("document") is document:
            return document
        for operations in document.get("paths", {}).values():
            for method, operation in operations.items():
                scopes = [Scope(name) for requirement in operation.get("security", [])
                          for name in requirement.get(_bearer.scheme_name, []) if name in Scope._value2member_map_]
                if not scopes:
                    continue
                scope = max(scopes, key=lambda s: s.rank)
                wider = [s.value for s in Scope if s.rank > scope.rank]
                text = f"**Scope:** `{scope.value}`" + (f" (or {', '.join(f'`{w}`' for w in wider)})" if wider else "")
                text += "."
                if method == "get" and scope == Scope.SEND:
                    text += " " + SEND_READS
                operation["x-required-scope"] = scope.value
                operation["description"] = (operation.get("description", "").rstrip() + "\n\n" + text).strip()
        documented["document"] = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
