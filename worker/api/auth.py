"""Authentication before anything else, and the typed scope dependency each route declares.

`ApiKeyAuthentication` is a plain ASGI middleware: for every /v1/ request it checks the
`Authorization: Bearer <key>` header (one indexed lookup, one sha256, constant-time compare; a key
verified in the last API_KEY_CACHE_S seconds is trusted without the lookup) *before* the body is read, so an unauthenticated request costs a small, bounded amount of work and
never reaches a body parser. Routes then say which scope they need: `principal: Principal =
Depends(require(Scope.CAMPAIGNS))` gives 403 for a key without it.
"""

from __future__ import annotations

from typing import Callable

import anyio.to_thread
from fastapi import Depends, Request
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


class ApiKeyAuthentication:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._keys: VerifiedKeys | None = None

    @property
    def keys(self) -> VerifiedKeys:
        if self._keys is None:
            runtime = get_runtime()
            self._keys = VerifiedKeys(runtime.single_statements, runtime.settings.api_key_cache_s)
        return self._keys

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        token = bearer_token(header)
        principal = None
        if token is not None:  # a key verified moments ago costs no thread hop and no round trip
            principal = self.keys.lookup(token) or await anyio.to_thread.run_sync(self.keys.verify, token)
        if principal is None:
            detail = "no API key: send Authorization: Bearer <key>" if token is None else "the API key is unknown or revoked"
            await problem_response(401, "unauthorized", detail, headers=CHALLENGE)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def require(needed: Scope) -> Callable[..., Principal]:
    """A dependency: the request's principal, if its key's scope includes `needed` (else 403).
    (async: it does no I/O, so it runs on the event loop instead of a thread-pool hop.)"""

    async def dependency(request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:  # only if the middleware was not installed: refuse rather than guess
            raise Problem(401, "unauthorized", "no API key: send Authorization: Bearer <key>", headers=CHALLENGE)
        if not principal.scope.allows(needed):
            raise Problem(403, "forbidden", f"this key has scope {principal.scope.value}; this needs {needed.value}"
                          + (" (or admin)" if needed != Scope.ADMIN else ""))
        return principal

    return dependency
