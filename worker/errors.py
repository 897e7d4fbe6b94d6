"""The project's exceptions: one root, branches that say whether to retry.

AwalError
  TransientError       retry later; the vendor did not act on the request
    ConnectionNotMade  the request never reached the vendor
    ServerError        5xx
    RateLimited        429; `retry_after` seconds (not the message's fault)
  PermanentError       4xx: retrying the same request gives the same answer
    ConfigurationFailure our side is set up wrong: every other message fails too (pause the campaign)
      AuthenticationFailed 401: credentials or signature
      TransportConfigError TLS/certificate or proxy failure: the request was never carried
  AmbiguousError       the request was sent, no answer came back: the vendor may have sent it

LimiterUnavailable (a TransientError) says the shared rate limiter could not be reached.
Other errors: ConfigError (a setting is missing or malformed) and MessageInvalid (our own
validation; nothing invalid reaches the vendor).
"""

from __future__ import annotations

from dataclasses import dataclass


class ButtoncastError(Exception):
    """Root of every error buttoncast raises on purpose."""


class ConfigError(ButtoncastError):
    """A setting is missing or malformed. The message names the setting, never a secret's value."""


@dataclass(frozen=True)
class FieldProblem:
    """One validation problem: which field, what is wrong, including the limit."""

    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


class MessageInvalid(ButtoncastError):
    """A message (or its parts) breaks the vendor's contract. Permanent: fix the input."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    def as_dict(self) -> list[dict[str, str]]:
        return [{"field": p.field, "problem": p.problem} for p in self.problems]


class AwalError(ButtoncastError):
    """An outcome of a call to the Awal API other than success."""

    retryable: bool = False
    #: short code recorded with the attempt, e.g. "validation_failed", "http_503", "read_timeout"
    code: str = "awal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        details: dict | None = None,
    ) -> None:
        message = message if isinstance(message, str) else str(message)
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.http_status = http_status
        self.request_id = request_id
        self.details = details or {}


class TransientError(AwalError):
    """Retry later: the vendor did not act on the request (5xx, connection never made, 429)."""

    retryable = True
    code = "transient"


class ConnectionNotMade(TransientError):
    """The connection could not be opened (refused, DNS, connect timeout): the vendor never saw it."""

    code = "connection_failed"


class ServerError(TransientError):
    """The vendor answered 5xx."""

    code = "server_error"


class RateLimited(TransientError):
    """The vendor answered 429. Wait `retry_after` seconds; it does not count against the message."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class LimiterUnavailable(TransientError):
    """The shared rate limiter (Redis) could not be reached. Not the vendor's doing: try later."""

    code = "limiter_unavailable"


class PermanentError(AwalError):
    """4xx: the same request will get the same answer. Record and stop."""

    code = "permanent"


class ConfigurationFailure(PermanentError):
    """Our configuration is wrong for every message, not this one: the campaign is paused with
    `summary` and the reason, and the message goes back to pending (nothing was sent)."""

    code = "configuration_failure"
    summary = "configuration failure"


class AuthenticationFailed(ConfigurationFailure):
    """401: credentials or signature are wrong; every other message will fail the same way."""

    code = "authentication_failed"
    summary = "authentication failed (401)"


class TransportConfigError(ConfigurationFailure):
    """The TLS handshake (certificate, CA bundle) or the proxy failed before the request was
    carried: the vendor never saw it, and every other message meets the same wall.
    Codes: "tls_error", "proxy_error"."""

    code = "tls_error"
    summary = "TLS or proxy failure before the request was sent"


class AmbiguousError(AwalError):
    """The request was sent but no answer came (read timeout, reset): the vendor may have acted.

    Never retried automatically: the message becomes `unknown` for an operator to decide.
    """

    code = "ambiguous"
