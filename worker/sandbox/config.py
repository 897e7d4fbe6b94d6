"""The sandbox's settings: one dataclass, set at start; the fault and rate options also at runtime.

`tap_share_by_text` lets a test make one message tapped more than another (an A/B test's
variants): a message whose body_text contains a key is tapped with that share instead of
`tap_share` (the longest matching key wins; among equals, the first given).

Defaults are named constants with their unit in the name. Nothing here reads the environment: the
CLI layer (`worker/cli/sandbox.py`) does that for its defaults only.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from worker.errors import ConfigError
from worker.failures import CODE_CLASSES
from worker.settings import RateLimit

DEFAULT_SECRET = "sandbox-secret"
DEFAULT_CLIENT_ID = "sandbox-client"
DEFAULT_DOMAIN = "sandbox.local"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8099
ADMIN_TOKEN_HEADER = "X-Sandbox-Admin-Token"   # what /_sandbox/* wants from a caller off loopback
TIMESTAMP_TOLERANCE_S = 300            # the vendor rejects a timestamp more than 5 minutes off
STALL_S = 30.0                         # a read-timeout fault holds the connection this long
FIRST_VENDOR_ID = 10001                # message.id of the first accepted message
DELIVERED_AFTER_S = 0.5
READ_AFTER_S = 1.0
WEBHOOK_ATTEMPTS = 4                   # one POST plus three retries
WEBHOOK_RETRY_BASE_S = 0.2             # backoff 0.2, 0.4, 0.8 s between webhook attempts
WEBHOOK_TIMEOUT_S = 5.0
FORCED_RETRY_AFTER_S = 1
STOP_REPLY_TEXT = "STOP"
#: late failure codes the sandbox can send (the vendor's table, worker.failures)
LATE_FAIL_CODES = tuple(CODE_CLASSES)

_SHARES = ("error_rate_500", "error_rate_503", "timeout_rate", "drop_rate", "read_share", "tap_share", "stop_reply_rate")


@dataclass
class SandboxConfig:
    """Everything the sandbox can be told. Shares are probabilities in 0..1."""

    secret: str = DEFAULT_SECRET
    client_id: str = DEFAULT_CLIENT_ID
    domain: str = DEFAULT_DOMAIN
    host: str = DEFAULT_HOST
    port: int = 0                      # 0 = a free port
    path_prefix: str = ""              # e.g. "/api/v1": the endpoint is then /api/v1/w/message/button
    phone_number_ids: tuple[str, ...] | None = None   # allow-list; None accepts any id
    timestamp_tolerance_s: int = TIMESTAMP_TOLERANCE_S
    allow_remote: bool = False         # a host other than loopback is refused unless this is set
    admin_token: str | None = None     # /_sandbox/* then wants it in ADMIN_TOKEN_HEADER from everyone
    # --- runtime-settable (POST /_sandbox/config) ---
    rate_limit: str | None = None      # "50/s", "1000/h"; None = unlimited
    remaining_override: int | None = None
    latency_ms: float = 0.0
    error_rate_500: float = 0.0
    error_rate_503: float = 0.0
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    stall_s: float = STALL_S
    fail_phone_prefixes: tuple[str, ...] = ()
    seed: int | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    delivered_after_s: float = DELIVERED_AFTER_S
    read_after_s: float = READ_AFTER_S
    read_share: float = 1.0
    tap_share: float = 0.0
    #: body_text fragment -> tap share, used instead of tap_share for a message containing it
    tap_share_by_text: dict[str, float] = field(default_factory=dict)
    tap_button_id: str | None = None
    webhook_attempts: int = WEBHOOK_ATTEMPTS
    webhook_retry_base_s: float = WEBHOOK_RETRY_BASE_S
    #: accepted messages answered later by a `failed` status webhook: code -> share (random draw)...
    late_fail_rates: dict[str, float] = field(default_factory=dict)
    #: ...and phone prefix -> code (always; checked first)
    late_fail_prefixes: dict[str, str] = field(default_factory=dict)
    #: share of delivered messages whose recipient replies STOP (an inbound `message.received` text)
    stop_reply_rate: float = 0.0
    stop_reply_prefixes: tuple[str, ...] = ()
    stop_reply_text: str = STOP_REPLY_TEXT
    # Parsed once, so the request path never re-parses the rate string.
    parsed_rate: RateLimit | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option; refresh derived values."""
        for name in _SHARES:
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"sandbox option {name}={value!r} must be a share between 0 and 1")
        for name in ("latency_ms", "stall_s", "delivered_after_s", "read_after_s", "webhook_retry_base_s"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"sandbox option {name}={getattr(self, name)!r} must not be negative")
        if self.remaining_override is not None and int(self.remaining_override) < 0:
            raise ConfigError(f"sandbox option remaining_override={self.remaining_override!r} must not be negative")
        if not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(
                f"sandbox host {self.host!r} is not loopback: the sandbox is a test double with known "
                "secrets; pass --allow-remote (SANDBOX_ALLOW_REMOTE=1) to serve other machines"
            )
        if self.path_prefix and not self.path_prefix.startswith("/"):
            raise ConfigError(f"sandbox option path_prefix={self.path_prefix!r} must start with /")
        self.path_prefix = self.path_prefix.rstrip("/")
        self.fail_phone_prefixes = tuple(self.fail_phone_prefixes or ())
        self.stop_reply_prefixes = tuple(self.stop_reply_prefixes or ())
        self._validate_late_failures()
        self._validate_tap_shares()
        self.parsed_rate = RateLimit.parse(self.rate_limit, "sandbox rate_limit") if self.rate_limit else None

    def _validate_late_failures(self) -> None:
        self.late_fail_rates = {str(code): float(share) for code, share in (self.late_fail_rates or {}).items()}
        self.late_fail_prefixes = {str(prefix): str(code) for prefix, code in (self.late_fail_prefixes or {}).items()}
        for code in [*self.late_fail_rates, *self.late_fail_prefixes.values()]:
            if code not in LATE_FAIL_CODES:
                raise ConfigError(f"sandbox late failure code {code!r} is not one of {', '.join(LATE_FAIL_CODES)}")
        for code, share in self.late_fail_rates.items():
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"sandbox late_fail_rates[{code}]={share!r} must be a share between 0 and 1")
        if sum(self.late_fail_rates.values()) > 1.0:
            raise ConfigError("sandbox late_fail_rates add up to more than 1")
        if any(not prefix.isdigit() for prefix in [*self.late_fail_prefixes, *self.stop_reply_prefixes]):
            raise ConfigError("sandbox late-failure and STOP-reply phone prefixes must be digits")

    def _validate_tap_shares(self) -> None:
        shares = self.tap_share_by_text
        if not isinstance(shares, Mapping):
            raise ConfigError(f"sandbox option tap_share_by_text={shares!r} must be an object (body text: share)")
        checked: dict[str, float] = {}
        for text, share in shares.items():
            if not isinstance(text, str) or not text:
                raise ConfigError(f"sandbox option tap_share_by_text: key {text!r} must be a non-empty text")
            try:
                value = float(share)
            except (TypeError, ValueError):
                value = math.nan
            if not 0.0 <= value <= 1.0:   # NaN fails too
                raise ConfigError(f"sandbox option tap_share_by_text[{text!r}]={share!r} must be a share between 0 and 1")
            checked[text] = value
        self.tap_share_by_text = checked

    def tap_share_for(self, body_text: Any) -> float:
        """The tap share of a message with this body: the longest `tap_share_by_text` key it
        contains (the first given among equals), else `tap_share`."""
        text = body_text if isinstance(body_text, str) else ""
        matches = [key for key in self.tap_share_by_text if key in text]
        return self.tap_share_by_text[max(matches, key=len)] if matches else self.tap_share

    def late_failure_for(self, phone: str) -> str | None:
        """The code a prefix assigns to `phone` (the longest matching prefix wins), or None."""
        matches = [p for p in self.late_fail_prefixes if phone.startswith(p)]
        return self.late_fail_prefixes[max(matches, key=len)] if matches else None

    def update(self, changes: Mapping[str, Any]) -> list[str]:
        """Apply runtime changes (only RUNTIME_OPTIONS); return the names changed.

        All-or-nothing: on a bad value nothing is changed and ConfigError names the option.
        """
        unknown = sorted(set(changes) - RUNTIME_OPTIONS)
        if unknown:
            raise ConfigError(f"not runtime-settable sandbox options: {', '.join(unknown)}")
        before = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        try:
            for name, value in changes.items():
                setattr(self, name, _coerce(name, value))
            self.validate()
        except (TypeError, ValueError, ConfigError) as exc:
            for name, value in before.items():
                setattr(self, name, value)
            self.validate()
            raise exc if isinstance(exc, ConfigError) else ConfigError(f"bad sandbox option: {exc}") from None
        return sorted(changes)


RUNTIME_OPTIONS = frozenset(
    {
        "rate_limit", "remaining_override", "latency_ms", "error_rate_500", "error_rate_503",
        "timeout_rate", "drop_rate", "stall_s", "fail_phone_prefixes", "seed", "webhook_url",
        "webhook_secret", "delivered_after_s", "read_after_s", "read_share", "tap_share", "tap_share_by_text",
        "tap_button_id", "phone_number_ids", "late_fail_rates", "late_fail_prefixes", "stop_reply_rate",
        "stop_reply_prefixes", "stop_reply_text",
    }
)
_FLOATS = {"latency_ms", "stall_s", "delivered_after_s", "read_after_s", *_SHARES}


def is_loopback(host: str | None) -> bool:
    """True for "localhost" and any loopback address (127.0.0.0/8, ::1, ::ffff:127.x); False for
    "", "0.0.0.0", other names and addresses."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _coerce(name: str, value: Any) -> Any:
    if value is None:
        nullable = name not in _FLOATS and name not in ("fail_phone_prefixes", "stop_reply_prefixes", "late_fail_rates",
                                                          "late_fail_prefixes", "stop_reply_text", "tap_share_by_text")
        return None if nullable else _reject(name)
    if name in _FLOATS:
        return float(value)
    if name in ("remaining_override", "seed"):
        return int(value)
    if name == "tap_share_by_text":
        if not isinstance(value, Mapping):
            raise ConfigError("sandbox option tap_share_by_text must be an object (body text: share)")
        return dict(value)
    if name in ("late_fail_rates", "late_fail_prefixes"):
        if not isinstance(value, Mapping):
            raise ConfigError(f"sandbox option {name} must be an object ({'code: share' if name == 'late_fail_rates' else 'prefix: code'})")
        return dict(value)
    if name in ("fail_phone_prefixes", "phone_number_ids", "stop_reply_prefixes"):
        if isinstance(value, str):
            value = [value]
        return tuple(str(v) for v in value)
    return str(value)


def _reject(name: str) -> Any:
    raise ConfigError(f"sandbox option {name} cannot be null")
