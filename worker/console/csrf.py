"""CSRF tokens for every form, checked by the server on every POST.

Logged in, the token is an HMAC of the session token (nothing to store: whoever can read the
session cookie could act anyway; a page on another site can read neither). Before login, the
login form uses a double-submit cookie: a random value in a cookie and the same in the form.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

FIELD_NAME = "csrf_token"
HEADER_NAME = "X-CSRF-Token"
LOGIN_COOKIE_NAME = "bc_login_csrf"


def token_for_session(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"buttoncast console csrf", hashlib.sha256).hexdigest()


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing value never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), given.encode())  # type: ignore[union-attr]
