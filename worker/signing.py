"""The vendor's request signature (AWAL_API.md, "The signature"), in one place.

string_to_sign = METHOD + PATH + QUERY_STRING + TIMESTAMP + BODY, no separators;
header value = "sha256=" + lowercase hex HMAC-SHA256(secret, string_to_sign).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Awal-Signature-256"
TIMESTAMP_HEADER = "X-Timestamp"
DOMAIN_HEADER = "X-Domain"
CLIENT_ID_HEADER = "X-Client-ID"
SIGNATURE_PREFIX = "sha256="


def sign_request(
    *, secret: bytes, method: str, path: str, query_string: str, timestamp: str, body: bytes
) -> str:
    """Return the `X-Awal-Signature-256` header value for one request.

    `query_string` includes its leading `?` (or is empty); `body` is the exact bytes sent.
    """
    message = (method.upper() + path + query_string + timestamp).encode("utf-8") + body
    return SIGNATURE_PREFIX + hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_body(*, secret: bytes, body: bytes) -> str:
    """Webhook signature (assumption in AWAL_API.md): HMAC-SHA256 of the raw body."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signatures_match(expected: str, received: str | None) -> bool:
    """Constant-time comparison; a missing header never matches."""
    if not received:
        return False
    return hmac.compare_digest(expected.encode("ascii", "replace"), received.strip().encode("ascii", "replace"))
