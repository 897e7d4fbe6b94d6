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
import math
import re
import time
from typing import Any

DEFAULT_TOLERANCE_S = 300
HEADER_MAX_CHARS = 4096
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")


class SignatureError(ValueError):
    """The request is not a genuine, recent buttoncast hook: refuse it (the message says why).
    The only error `verify` raises, whatever it is given."""


def verify(payload: bytes, header: str | None, secret: str, tolerance_s: float = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> dict[str, Any]:
    """Check the signature and the timestamp of one request; return the parsed event (a JSON object).
    Raises SignatureError, and nothing else, for any input: a str body is taken as its UTF-8 bytes."""
    body = _bytes(payload)
    if not isinstance(secret, str) or not secret:
        raise SignatureError("no secret to check against (pass the endpoint's whsec_... string)")
    timestamp, candidates = _parse(_text(header))
    try:
        now = time.time() if now is None else float(now)
        tolerance = float(tolerance_s)
    except (TypeError, ValueError, OverflowError):
        raise SignatureError("now and tolerance_s must be numbers") from None
    if not (math.isfinite(now) and math.isfinite(tolerance)):
        raise SignatureError("now and tolerance_s must be finite numbers")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is {abs(now - timestamp):.0f}s from now "
                             f"(tolerance {tolerance:g}s)")
    key = secret.encode("utf-8", "surrogatepass")
    expected = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no v1 signature matches the body (wrong secret, or the body was altered)")
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SignatureError(f"the body is not JSON ({type(exc).__name__})") from None
    if not isinstance(event, dict):
        raise SignatureError("the body is not a JSON object")
    return event


def _bytes(payload: object) -> bytes:
    if isinstance(payload, str):
        try:
            return payload.encode("utf-8")
        except UnicodeEncodeError:
            raise SignatureError("the body is not UTF-8 text") from None
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise SignatureError(f"the body must be the raw request bytes, not {type(payload).__name__}")


def _text(header: object) -> str:
    if isinstance(header, (bytes, bytearray)):
        try:
            header = bytes(header).decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("the Buttoncast-Signature header is not ASCII") from None
    if header is None or header == "":
        raise SignatureError("no Buttoncast-Signature header")
    if not isinstance(header, str):
        raise SignatureError(f"the Buttoncast-Signature header must be text, not {type(header).__name__}")
    if len(header) > HEADER_MAX_CHARS:
        raise SignatureError(f"the Buttoncast-Signature header is longer than {HEADER_MAX_CHARS} characters")
    return header


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        value = value.strip()
        if key == "t":
            if not _TIMESTAMP.match(value):
                raise SignatureError(f"t={value[:20]!r} is not Unix seconds")
            timestamp = int(value)
        elif key == "v1" and _SIGNATURE.match(value.lower()):
            candidates.append(value.lower())
    if timestamp is None:
        raise SignatureError("the header has no t=<timestamp>")
    if not candidates:
        raise SignatureError("the header has no v1=<64 hex digits>")
    return timestamp, candidates
