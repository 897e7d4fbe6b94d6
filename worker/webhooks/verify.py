"""Webhook signature check (AWAL_API.md assumption: HMAC-SHA256 of the raw body), in one place.

Verification challenges are answered signed or unsigned (VERIFICATION_NEEDS_SIGNATURE): the vendor's
docs do not say whether the challenge is signed, answering it has no side effect, and refusing an
unsigned one could make the dashboard setup fail. A challenge that carries a signature must carry a
right one, though: a wrong signature there means the secret is wrong, and saying so at setup time
beats silently rejecting every event afterwards.
"""

from __future__ import annotations

from typing import Mapping

from worker.signing import SIGNATURE_HEADER, sign_body, signatures_match

VERIFICATION_NEEDS_SIGNATURE = False
#: the header as WSGI presents it in `environ`
SIGNATURE_ENVIRON_KEY = "HTTP_" + SIGNATURE_HEADER.upper().replace("-", "_")


class BodySigner:
    """Holds the webhook secret (never logged) and checks a request's signature in constant time."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the webhook secret is empty; set AWAL_WEBHOOK_SECRET")
        self._secret = secret.encode("utf-8")

    def __repr__(self) -> str:
        return "BodySigner(secret='***')"

    def valid(self, body: bytes, received: str | None) -> bool:
        """True when `received` is `sha256=<hex HMAC-SHA256(secret, body)>`; a missing one is not."""
        return signatures_match(sign_body(secret=self._secret, body=body), received)


def signature_from(environ: Mapping[str, object]) -> str | None:
    """The X-Awal-Signature-256 header of a WSGI request, or None when it is absent."""
    value = environ.get(SIGNATURE_ENVIRON_KEY)
    return value if isinstance(value, str) and value else None
