"""The vendor's authentication check, as the sandbox applies it to every send request.

Order: all five headers present (else `missing_headers` lists them), timestamp within the tolerance,
client id, domain, then the signature over the raw path, raw query string (with its `?`), timestamp
and raw body bytes. Every comparison of a credential-derived value is constant-time.

Assumption (stricter than "present"): an `Accept` header that does not name `application/json`
counts as missing, since the contract gives that exact value; `requests`' default `*/*` is caught.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Mapping

from worker.signing import (
    CLIENT_ID_HEADER,
    DOMAIN_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_request,
    signatures_match,
)

REQUIRED_HEADERS = ("Accept", SIGNATURE_HEADER, TIMESTAMP_HEADER, DOMAIN_HEADER, CLIENT_ID_HEADER)


@dataclass(frozen=True)
class AuthFailure:
    """Why a request was refused; never carries the secret or the expected signature."""

    message: str
    details: dict[str, Any] = field(default_factory=dict)


def _same(expected: str, received: str) -> bool:
    return hmac.compare_digest(expected.encode("utf-8"), received.encode("utf-8"))


def missing_headers(headers: Mapping[str, str]) -> list[str]:
    missing = [name for name in REQUIRED_HEADERS if not headers.get(name, "").strip()]
    accept = headers.get("Accept", "")
    if accept.strip() and "application/json" not in accept.lower():
        missing.append("Accept")
    return missing


def check_request(
    *,
    headers: Mapping[str, str],
    method: str,
    raw_path: str,
    query_string: str,
    body: bytes,
    secret: bytes,
    client_id: str,
    domain: str,
    now: float,
    tolerance_s: int,
) -> AuthFailure | None:
    """None when the request is authentic, else the failure to answer with 401."""
    missing = missing_headers(headers)
    if missing:
        return AuthFailure(
            f"missing required headers: {', '.join(missing)}", {"missing_headers": missing}
        )
    timestamp = headers[TIMESTAMP_HEADER].strip()
    if not timestamp.isdigit():
        return AuthFailure("X-Timestamp must be Unix time in whole seconds", {"header": TIMESTAMP_HEADER})
    skew = now - int(timestamp)
    if abs(skew) > tolerance_s:
        return AuthFailure(
            f"X-Timestamp is {abs(int(skew))}s {'old' if skew > 0 else 'in the future'};"
            f" the limit is {tolerance_s}s",
            {"header": TIMESTAMP_HEADER, "tolerance_s": tolerance_s},
        )
    if not _same(client_id, headers[CLIENT_ID_HEADER].strip()):
        return AuthFailure("unknown client id", {"header": CLIENT_ID_HEADER})
    if not _same(domain, headers[DOMAIN_HEADER].strip()):
        return AuthFailure("the domain does not belong to this client", {"header": DOMAIN_HEADER})
    expected = sign_request(
        secret=secret,
        method=method,
        path=raw_path,
        query_string=("?" + query_string) if query_string else "",
        timestamp=timestamp,
        body=body,
    )
    if not signatures_match(expected, headers[SIGNATURE_HEADER]):
        return AuthFailure("signature does not match", {"header": SIGNATURE_HEADER})
    return None
