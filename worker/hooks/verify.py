"""Reference verifier for buttoncast's outbound hooks: copy this file into a receiver as it is.

It imports nothing from buttoncast. Use the raw request body (the bytes received, before any JSON
parsing), the `Buttoncast-Signature` header and the endpoint's secret (`whsec_...`):

    from verify import verify, SignatureError
    try:
        event = verify(request_body, request.headers["Buttoncast-Signature"], secret)
    except SignatureError:
        return 400
    # dedupe on event["id"]: delivery is at least once

The header is `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`; more than one v1 may
appear (any that matches is accepted). A timestamp more than `tolerance_s` from now is refused, so
a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The request is not a genuine, recent buttoncast hook: refuse it (the message says why)."""


def verify(payload: bytes, header: str | None, secret: str, tolerance_s: float = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> dict[str, Any]:
    """Check the signature and the timestamp of one request; return the parsed event."""
    if not header:
        raise SignatureError("no Buttoncast-Signature header")
    timestamp, candidates = _parse(header)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is {abs(now - timestamp):.0f}s from now (tolerance {tolerance_s:g}s)")
    expected = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no v1 signature matches the body (wrong secret, or the body was altered)")
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"the body is not JSON: {exc}") from None


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError(f"t={value!r} is not Unix seconds") from None
        elif key == "v1" and value:
            candidates.append(value.strip())
    if timestamp is None:
        raise SignatureError("the header has no t=<timestamp>")
    if not candidates:
        raise SignatureError("the header has no v1=<signature>")
    return timestamp, candidates
