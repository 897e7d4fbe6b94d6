"""Per-endpoint signing secrets and the `Buttoncast-Signature` header (Stripe's scheme).

Secret: the sender must compute HMACs with it, so a one-way hash of it cannot be stored. Instead
nothing is stored: secret = "whsec_" + hex HMAC-SHA256(HOOKS_SIGNING_KEY, "hook-endpoint:<id>:<salt>"),
where the id and the random public salt are columns of hook_endpoints. A database dump alone
cannot sign; the operator sees the secret once, at `hooks add`. Changing HOOKS_SIGNING_KEY changes
every endpoint's secret (re-add the endpoints, or keep the key).

Header: `Buttoncast-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from worker.errors import ConfigError
from worker.settings import Secret

SIGNATURE_HEADER = "Buttoncast-Signature"
EVENT_ID_HEADER = "Buttoncast-Event-Id"
EVENT_TYPE_HEADER = "Buttoncast-Event-Type"
SECRET_PREFIX = "whsec_"
SIGNING_KEY_MIN_CHARS = 32


def new_salt() -> str:
    return secrets.token_hex(16)


def endpoint_secret(signing_key: Secret, endpoint_id: int, salt: str) -> Secret:
    """The endpoint's secret, derived (never stored). Raises ConfigError without a usable key."""
    key = signing_key.reveal()
    if not key:
        raise ConfigError("HOOKS_SIGNING_KEY is not set: outbound hooks cannot be signed (generate one with "
                          "`python -c 'import secrets; print(secrets.token_hex(32))'`)")
    if len(key) < SIGNING_KEY_MIN_CHARS:
        raise ConfigError(f"HOOKS_SIGNING_KEY must be at least {SIGNING_KEY_MIN_CHARS} characters")
    digest = hmac.new(key.encode("utf-8"), f"hook-endpoint:{endpoint_id}:{salt}".encode(), hashlib.sha256).hexdigest()
    return Secret(SECRET_PREFIX + digest)


def signature_header(secret: Secret, body: bytes, timestamp: int) -> str:
    """The Buttoncast-Signature value for `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.reveal().encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"
