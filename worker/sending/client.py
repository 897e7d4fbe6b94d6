"""The Awal API client: sign, send, parse, and classify every outcome into worker.errors.

The task never looks at `requests` exceptions or status codes; `classify_response` and
`classify_transport_error` are the only places that do.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Protocol
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from worker.errors import (
    AmbiguousError,
    AuthenticationFailed,
    AwalError,
    ConnectionNotMade,
    PermanentError,
    RateLimited,
    ServerError,
    TransientError,
    TransportConfigError,
)
from worker.message import ButtonMessage
from worker.runtime import Runtime
from worker.signing import (
    CLIENT_ID_HEADER,
    DOMAIN_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_request,
)

SEND_BUTTON_PATH = "/w/message/button"
# Assumption (AWAL_API.md): a 429 without Retry-After and without a usable reset waits this long.
DEFAULT_RETRY_AFTER_S = 60.0
POOL_CONNECTIONS = 4
#: keep-alive connections kept per host, at least; build_client raises it to WORKER_CONCURRENCY so
#: that every thread reuses its connection (past the pool's size urllib3 opens a new TCP and TLS
#: connection per request and throws it away afterwards)
POOL_MAXSIZE_MIN = 16
#: a Retry-After (or reset) further away than this is capped: a number that large is no instruction
MAX_RETRY_AFTER_S = 86_400.0
#: the vendor's numeric message id is stored in a signed 64-bit column; a larger one is not an id
MAX_VENDOR_ID = 2**63 - 1
#: vendor text kept from an error body that is not JSON (an HTML error page)
RAW_TEXT_CHARS = 300


class WindowFull(RateLimited):
    """A 429 whose wait is only the vendor window's reset (Retry-After is that reset rounded up).

    The same response's X-RateLimit-* headers (remaining 0 until the reset) reach the limiter, so
    the next slot it grants anyone is after the reset: the client retries the message in-process
    with such a slot (the send's before_request takes it), when the reset is at most
    RATE_WAIT_MAX_S away, instead of sending it back through the database and the dispatcher's
    tick. A longer or unexplained Retry-After stays a plain RateLimited.
    """


@dataclass(frozen=True)
class RateHeaders:
    """The vendor's X-RateLimit-* headers from one response (None when absent or malformed)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None

    @classmethod
    def parse(cls, headers: "requests.structures.CaseInsensitiveDict[str]") -> "RateHeaders":
        def number(name: str) -> float | None:
            try:
                value = float(headers[name])
            except (KeyError, TypeError, ValueError):
                return None
            return value if math.isfinite(value) and abs(value) < 1e15 else None

        limit, remaining, reset = (number(h) for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"))
        return cls(
            limit=int(limit) if limit is not None else None,
            remaining=int(remaining) if remaining is not None else None,
            reset_at=reset,
        )

    @property
    def present(self) -> bool:
        return self.remaining is not None or self.reset_at is not None


@dataclass(frozen=True)
class SendResult:
    """A success: what the vendor returned for the message."""

    vendor_id: int | None
    message_id: str
    vendor_status: str | None
    http_status: int
    rate: RateHeaders = field(default_factory=RateHeaders)


@dataclass(frozen=True)
class AttemptRecord:
    """One HTTP attempt, as it will be stored: when, how long, what came back."""

    started_at: datetime
    duration_ms: int
    http_status: int | None
    outcome: str                     # "sent" or the error's code class name, e.g. "ServerError"
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    vendor_id: int | None = None
    vendor_message_id: str | None = None
    rate: RateHeaders = field(default_factory=RateHeaders)


class BeforeRequest(Protocol):
    def __call__(self) -> None:
        """Called before every HTTP request (first try and retries): waits for a rate slot or raises."""


def _text(value: object) -> str | None:
    """A vendor field as text whatever its JSON type: None stays None, a string is kept, anything
    else (a number, an object, a list) is rendered as compact JSON."""
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def _json_body(response: requests.Response) -> tuple[bool, object]:
    """(True, body) when the body is JSON, else (False, None). Never raises."""
    try:
        return True, response.json()
    except (ValueError, RecursionError):   # JSONDecodeError, undecodable bytes, absurd nesting
        return False, None


def _error_fields(response: requests.Response) -> tuple[str | None, str | None, str | None, dict]:
    """(code, message, request_id, details) of an error body, each of the right type or None."""
    readable, body = _json_body(response)
    if not readable:
        try:
            raw = response.text or ""
        except Exception:  # noqa: BLE001 - a body we cannot decode is no reason to lose the status
            raw = ""
        return None, raw[:RAW_TEXT_CHARS] or None, None, {}
    if not isinstance(body, dict):
        return None, None, None, {}
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    return _text(body.get("error")) or None, _text(body.get("message")) or None, _text(body.get("request_id")) or None, details


def _accepted_message(body: object) -> dict | None:
    """The `message` object of an accepted send, or None.

    Assumption (AWAL_API.md), kept here only: a 200 is an accepted send only with `status` true and
    a non-empty `message.messageId`; any other readable 200 is a permanent failure for this message.
    """
    if not isinstance(body, dict) or body.get("status") is not True:
        return None
    message = body.get("message")
    if not isinstance(message, dict) or not _text(message.get("messageId")):
        return None
    return message


def _vendor_id(value: object) -> int | None:
    """The vendor's numeric id when it is a non-negative 64-bit integer (or its decimal string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= MAX_VENDOR_ID else None


def retry_after_seconds(response: requests.Response, rate: RateHeaders, now: float) -> float:
    """How long a 429 tells every worker to wait.

    Retry-After comes in whole seconds. When it is just the window's reset time rounded up (it lies
    within a second after X-RateLimit-Reset), the reset time is the precise answer: waiting the
    rounded-up second would throw away most of the next window. A longer Retry-After (a penalty,
    or clocks that disagree) is obeyed as given. Without Retry-After the reset time is used.
    """
    until_reset = rate.reset_at - now if rate.reset_at and rate.reset_at > now else None
    raw = response.headers.get("Retry-After")
    try:
        retry_after = max(0.0, float(raw)) if raw else None
    except ValueError:
        retry_after = None
    if retry_after is not None and not math.isfinite(retry_after):
        retry_after = None
    if retry_after is None:
        return min(until_reset, MAX_RETRY_AFTER_S) if until_reset is not None else DEFAULT_RETRY_AFTER_S
    retry_after = min(retry_after, MAX_RETRY_AFTER_S)
    if _rounded_reset(retry_after, until_reset):
        return until_reset
    return retry_after


def _rounded_reset(retry_after: float, until_reset: float | None) -> bool:
    """Retry-After (whole seconds) is the window's reset rounded up, nothing more."""
    return until_reset is not None and until_reset <= retry_after < until_reset + 1.0


def _window_full(response: requests.Response, rate: RateHeaders, now: float, retry_after: float) -> bool:
    """The 429 asks for nothing but the window's reset (see WindowFull)."""
    if rate.reset_at is None or rate.reset_at <= now or rate.remaining != 0:
        return False
    return retry_after == rate.reset_at - now


def classify_response(response: requests.Response, now: float | None = None) -> SendResult:
    """Turn one HTTP response into a SendResult, or raise the matching AwalError.

    The status code decides the class; the body only adds detail, read defensively, so no reply
    (wrong JSON types, HTML, empty, undecodable bytes) makes this raise anything but an AwalError.
    """
    now = time.time() if now is None else now
    rate = RateHeaders.parse(response.headers)
    status = response.status_code
    if status == 200:
        readable, body = _json_body(response)
        if not readable:
            # A 200 we cannot read: the vendor may well have sent the WhatsApp message.
            raise AmbiguousError("HTTP 200 with an unreadable body", code="unreadable_response", http_status=status)
        message = _accepted_message(body)
        if message is None:
            # The vendor answered, so this is not ambiguous; it is permanent for this message.
            code, text, request_id, _ = _error_fields(response)
            raise PermanentError(
                text or "HTTP 200 without status true and a messageId",
                code=code or "unexpected_response",
                http_status=status,
                request_id=request_id,
            )
        return SendResult(
            vendor_id=_vendor_id(message.get("id")),
            message_id=_text(message["messageId"]),
            vendor_status=_text(message.get("status")),
            http_status=status,
            rate=rate,
        )
    code, text, request_id, details = _error_fields(response)
    kwargs = dict(http_status=status, request_id=request_id, details=details)
    if status == 429:
        retry_after = retry_after_seconds(response, rate, now)
        kind = WindowFull if _window_full(response, rate, now, retry_after) else RateLimited
        raise kind(text or "rate limit exceeded", retry_after=retry_after, code=code or "rate_limit_exceeded", **kwargs)
    if status == 401:
        raise AuthenticationFailed(text or "authentication failed", code=code or "authentication_failed", **kwargs)
    if 400 <= status < 500:
        raise PermanentError(text or f"HTTP {status}", code=code or f"http_{status}", **kwargs)
    if status >= 500:
        raise ServerError(text or f"HTTP {status}", code=code or f"http_{status}", **kwargs)
    raise PermanentError(text or f"unexpected HTTP {status}", code=code or f"http_{status}", **kwargs)


def classify_transport_error(exc: requests.RequestException) -> AwalError:
    """Connection never made -> transient; request sent but no answer -> ambiguous; TLS or proxy
    failure -> configuration error (the handshake failed, so the request was never carried)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return TransportConfigError(f"TLS handshake failed: {_reason(exc)}", code="tls_error")
    if isinstance(exc, requests.exceptions.ProxyError):
        return TransportConfigError(f"proxy failed: {_reason(exc)}", code="proxy_error")
    if isinstance(exc, requests.ConnectTimeout):
        return ConnectionNotMade(f"connect timeout: {exc.__class__.__name__}", code="connect_timeout")
    if isinstance(exc, requests.ReadTimeout):
        return AmbiguousError("read timeout after the request was sent", code="read_timeout")
    if isinstance(exc, requests.ConnectionError):
        text = repr(exc)
        # urllib3 names a connection it could not open NewConnectionError / NameResolutionError;
        # anything else under ConnectionError happened on an open connection (reset, aborted).
        if "NewConnectionError" in text or "NameResolutionError" in text or "Failed to establish" in text:
            return ConnectionNotMade("connection could not be opened", code="connection_failed")
        return AmbiguousError("connection dropped after the request was sent", code="connection_dropped")
    return AmbiguousError(f"transport error: {exc.__class__.__name__}", code="transport_error")


def _reason(exc: BaseException) -> str:
    """The innermost cause's text, short (e.g. "certificate verify failed: self-signed certificate")."""
    inner: BaseException = exc
    while True:
        nested = getattr(inner, "reason", None) or (inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None)
        if not isinstance(nested, BaseException) or nested is inner:
            break
        inner = nested
    return f"{type(inner).__name__}: {inner}"[:RAW_TEXT_CHARS]


class AwalClient:
    """Sends button messages. One per process: it pools connections (requests.Session)."""

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        domain: str,
        hmac_secret: bytes,
        connect_timeout_s: float,
        read_timeout_s: float,
        retry_attempts: int,
        retry_max_wait_s: float,
        rate_retry_max_s: float = 0.0,
        pool_maxsize: int = POOL_MAXSIZE_MIN,
        clock: Callable[[], float] = time.time,
        transport: BaseAdapter | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        # Assumption (AWAL_API.md): a path prefix in base_url is part of the signed PATH.
        self._path = parts.path.rstrip("/") + SEND_BUTTON_PATH
        self._client_id = client_id
        self._domain = domain
        self._secret = hmac_secret
        self._timeout = (connect_timeout_s, read_timeout_s)
        # Built once and shared by every thread: tenacity keeps each run's state per thread (>= 9),
        # and building it cost more than an unretried send's own Python work.
        # A WindowFull 429 whose reset is at most rate_retry_max_s away is retried too, at once:
        # the before_request hook's rate slot is the wait. Its tries count in retry_attempts.
        backoff = wait_random_exponential(multiplier=0.25, max=retry_max_wait_s)

        def retryable(error: BaseException) -> bool:
            if isinstance(error, WindowFull):
                return error.retry_after <= rate_retry_max_s
            return isinstance(error, (ConnectionNotMade, ServerError))

        def wait(state: RetryCallState) -> float:
            return 0.0 if isinstance(state.outcome.exception(), WindowFull) else backoff(state)

        self._retrying = Retrying(stop=stop_after_attempt(retry_attempts), wait=wait,
                                  retry=retry_if_exception(retryable), reraise=True)
        self._clock = clock
        self._session = requests.Session()
        # `transport`: a stub adapter for tests that script raw replies (tests/webhooks/test_replies.py)
        adapter = transport or HTTPAdapter(pool_connections=POOL_CONNECTIONS, pool_maxsize=pool_maxsize, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # The environment's proxy and CA-bundle settings (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE)
        # are resolved once here: with trust_env, requests re-read the whole environment on every
        # request, about 0.5 ms of CPU per message. It also stops ~/.netrc adding an Authorization.
        env = self._session.merge_environment_settings(self._origin + self._path, {}, None, None, None)
        self._session.proxies, self._session.verify = env["proxies"], env["verify"]
        self._session.trust_env = False
        # Each send goes straight to the adapter with a copy of one request prepared here: requests'
        # Session.request re-merges settings, hooks and cookies and re-parses the URL per call, about
        # a third of a send's CPU, for an API that takes no cookies and no redirects. Same adapter,
        # same exceptions (so classify_transport_error sees what it always saw), same proxies and CA.
        self._adapter = adapter
        self._template = requests.Request("POST", self._origin + self._path, headers={
            "Accept": "application/json", "Content-Type": "application/json",
            DOMAIN_HEADER: self._domain, CLIENT_ID_HEADER: self._client_id,
        }).prepare()

    def __repr__(self) -> str:
        return f"AwalClient(origin={self._origin!r}, client_id={self._client_id!r})"

    def close(self) -> None:
        self._session.close()

    def send(
        self,
        message: ButtonMessage,
        phone_number_id: str,
        *,
        before_request: BeforeRequest | None = None,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
    ) -> SendResult:
        """Send one message; retry only transient failures, briefly, with jittered backoff.

        Raises PermanentError, RateLimited, AmbiguousError, or the last TransientError.
        """
        body = message.body_bytes()
        for attempt in self._retrying:
            with attempt:
                if before_request is not None:
                    before_request()
                return self.send_once(body, phone_number_id, on_attempt=on_attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def send_once(
        self, body: bytes, phone_number_id: str, *, on_attempt: Callable[[AttemptRecord], None] | None = None
    ) -> SendResult:
        """One signed HTTP request with the exact bytes `body`."""
        query = "?phone_number_id=" + quote(str(phone_number_id), safe="")
        timestamp = str(int(self._clock()))
        request = self._template.copy()
        request.url += query
        request.body = body
        request.headers[SIGNATURE_HEADER] = sign_request(
            secret=self._secret, method="POST", path=self._path, query_string=query, timestamp=timestamp, body=body
        )
        request.headers[TIMESTAMP_HEADER] = timestamp
        request.headers["Content-Length"] = str(len(body))
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        response: requests.Response | None = None
        try:
            # No redirects (the adapter follows none): one would re-send to a path the signature
            # does not cover. Reading the body here releases the connection to the pool.
            response = self._adapter.send(request, timeout=self._timeout, verify=self._session.verify,
                                          proxies=self._session.proxies, stream=False, cert=None)
            response.content  # noqa: B018 - read now: a connection dropped mid-body is a transport error
            result = classify_response(response)
        except requests.RequestException as exc:
            error = classify_transport_error(exc)
            self._report(on_attempt, started, t0, None, error=error)
            raise error from None
        except AwalError as error:
            self._report(on_attempt, started, t0, response, error=error)
            raise
        self._report(on_attempt, started, t0, response, result=result)
        return result

    @staticmethod
    def _report(
        on_attempt: Callable[[AttemptRecord], None] | None,
        started: datetime,
        t0: float,
        response: requests.Response | None,
        *,
        result: SendResult | None = None,
        error: AwalError | None = None,
    ) -> None:
        if on_attempt is None:
            return
        rate = RateHeaders.parse(response.headers) if response is not None else RateHeaders()
        on_attempt(
            AttemptRecord(
                started_at=started,
                duration_ms=int((time.perf_counter() - t0) * 1000),
                http_status=response.status_code if response is not None else None,
                outcome="sent" if result else type(error).__name__,
                error_code=error.code if error else None,
                error_message=error.message[:500] if error else None,
                request_id=error.request_id if error else None,
                vendor_id=result.vendor_id if result else None,
                vendor_message_id=result.message_id if result else None,
                rate=rate,
            )
        )


def build_client(settings) -> AwalClient:  # noqa: ANN001 - worker.settings.Settings
    """The client for the configured vendor; raises ConfigError naming any missing setting."""
    settings.require_awal()
    return AwalClient(
        base_url=settings.awal_base_url,
        client_id=settings.awal_client_id,
        domain=settings.awal_domain,
        hmac_secret=settings.awal_hmac_secret.reveal().encode("utf-8"),
        connect_timeout_s=settings.send_connect_timeout_s,
        read_timeout_s=settings.send_read_timeout_s,
        retry_attempts=settings.send_retry_attempts,
        retry_max_wait_s=settings.send_retry_max_wait_s,
        rate_retry_max_s=settings.rate_wait_max_s,
        pool_maxsize=max(POOL_MAXSIZE_MIN, settings.worker_concurrency),
    )


def client_of(runtime: Runtime) -> AwalClient:
    """This process's vendor client (one connection pool), closed with the runtime."""
    return runtime.component("client", lambda rt: build_client(rt.settings), close=AwalClient.close)


__all__ = [
    "client_of",
    "AttemptRecord",
    "AwalClient",
    "RateHeaders",
    "SendResult",
    "TransientError",
    "TransportConfigError",
    "WindowFull",
    "build_client",
    "classify_response",
    "classify_transport_error",
]
