"""What keeps other sites out: the security headers on every answer, and the same-origin check of
every console POST.

The headers (`SecurityHeaders`, outermost middleware of the one app, so the API's answers and its
401/413/429 carry them too; JSON stays JSON):

- Content-Security-Policy: scripts, styles, fonts and fetches only from this site, no inline script
  and no inline style (the console's one script is /static/console.js, the progress bars are SVG
  rectangles sized by attributes, not `style=`); images from here or `data:` (Swagger UI's icons);
  no plugins; no framing (`frame-ancestors 'none'`); no `<base>`; forms post only here.
- X-Frame-Options: DENY (frame-ancestors for browsers that predate it), X-Content-Type-Options:
  nosniff, Referrer-Policy: same-origin. Not stricter (`no-referrer`): with it a browser sends
  `Origin: null` on the console's own POSTs, which the check below would refuse.

A route may set its own value of one of these headers; the middleware only adds what is missing.

The origin check (`foreign_origin`, called by web.csrf_checked and the login form) is OWASP's
"verifying origin with standard headers", a second defence next to the CSRF token: a POST whose
Origin (or, without one, Referer) is not this site is refused, whatever its token. This site is the
request's own scheme and host, as for the session cookie's Secure flag (web.cookie_secure): uvicorn
takes the scheme from X-Forwarded-Proto only from the proxies in FORWARDED_ALLOW_IPS, and the proxy
must pass the Host header on. A POST with neither header is let through to the token check (and
logged): every browser sends Origin on every POST (the Fetch standard), so a request without it was
not sent by a browser on behalf of a logged-in person, and refusing it would protect no one; the
token still has to be right.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
))
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SecurityHeaders:
    """Add HEADERS to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL, or None if it has none (`null`, garbage)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or _DEFAULT_PORTS[scheme]


def site_origin(request: Request) -> tuple[str, str, int] | None:
    """This site as the request reached it: its scheme (uvicorn's, behind a trusted proxy the
    forwarded one) and its Host."""
    return _origin(f"{request.url.scheme}://{request.url.netloc}")


def foreign_origin(request: Request) -> str | None:
    """Why this POST was not sent from a page of this site, or None if it may have been."""
    given = request.headers.get("origin")
    source = "Origin"
    if given is None:
        given, source = request.headers.get("referer"), "Referer"
    if given is None:
        log.info("a console POST to %s came with neither Origin nor Referer: the CSRF token alone decides",
                 request.url.path)
        return None
    if _origin(given) is not None and _origin(given) == site_origin(request):
        return None
    log.warning("refused a console POST to %s: its %s %r is not this site", request.url.path, source, given[:200])
    return "this form was sent from another site, not from a page of this console; open the page here and try again"
