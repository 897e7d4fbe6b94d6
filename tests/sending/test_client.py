"""AwalClient against the real sandbox over HTTP, plus classify_response / classify_transport_error
on hand-built responses and exceptions.

One sandbox per module (started in a thread on a free port); each test uses its own recipient phone,
so per-phone scripts and `received()` never mix between tests. Nothing here leaves this machine.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
import requests

from tests.conftest import free_port
from worker.errors import (
    AmbiguousError,
    AuthenticationFailed,
    ConnectionNotMade,
    PermanentError,
    RateLimited,
    ServerError,
)
from worker.message import ButtonMessage
from worker.sandbox import SandboxClient, SandboxConfig, SandboxServer
from worker.sending.client import (
    DEFAULT_RETRY_AFTER_S,
    AttemptRecord,
    AwalClient,
    RateHeaders,
    SendResult,
    classify_response,
    classify_transport_error,
)
from worker.signing import sign_request

SECRET = "sandbox-secret"
CLIENT_ID = "sandbox-client"
DOMAIN = "sandbox.local"
SENDER = "123456"
RATE_LIMIT = "100000/h"           # high enough never to refuse, but the rate headers are sent
READ_TIMEOUT_S = 0.5
STALL_S = 3.0    # the sandbox's stalled answer comes this late: six times the read timeout
RETRY_ATTEMPTS = 3
_phones = itertools.count(96650000100)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[str, SandboxClient]]:
    server = SandboxServer(SandboxConfig(rate_limit=RATE_LIMIT, stall_s=STALL_S))
    base_url = server.start_in_thread()
    try:
        yield base_url, SandboxClient(base_url)
    finally:
        server.stop()


@pytest.fixture
def base_url(sandbox: tuple[str, SandboxClient]) -> str:
    return sandbox[0]


@pytest.fixture
def admin(sandbox: tuple[str, SandboxClient]) -> SandboxClient:
    return sandbox[1]


@pytest.fixture
def phone() -> str:
    """A recipient no other test in this module uses."""
    return str(next(_phones))


def make_client(base_url: str, **overrides: Any) -> AwalClient:
    options: dict[str, Any] = dict(
        base_url=base_url, client_id=CLIENT_ID, domain=DOMAIN, hmac_secret=SECRET.encode(),
        connect_timeout_s=1.0, read_timeout_s=READ_TIMEOUT_S, retry_attempts=RETRY_ATTEMPTS,
        retry_max_wait_s=0.02,
    )
    options.update(overrides)
    return AwalClient(**options)


@pytest.fixture
def client(base_url: str) -> Iterator[AwalClient]:
    awal = make_client(base_url)
    yield awal
    awal.close()


def message_to(phone: str, **overrides: Any) -> ButtonMessage:
    fields: dict[str, Any] = dict(phone=phone, body_text="Hello", buttons=[{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}])
    fields.update(overrides)
    return ButtonMessage.build(**fields)


class Attempts:
    """Collects on_attempt records and counts before_request calls."""

    def __init__(self) -> None:
        self.records: list[AttemptRecord] = []
        self.before_calls = 0

    def on_attempt(self, record: AttemptRecord) -> None:
        self.records.append(record)

    def before_request(self) -> None:
        self.before_calls += 1

    @property
    def statuses(self) -> list[int | None]:
        return [r.http_status for r in self.records]


def send(client: AwalClient, message: ButtonMessage, attempts: Attempts, sender: str = SENDER) -> SendResult:
    return client.send(message, sender, before_request=attempts.before_request, on_attempt=attempts.on_attempt)


# --- success ----------------------------------------------------------------------------------
def test_200_returns_vendor_id_message_id_status_and_rate_headers(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    attempts = Attempts()
    result = send(client, message_to(phone), attempts)
    [received] = admin.received(phone=phone)
    assert result.http_status == 200
    assert result.vendor_id == received["id"] and isinstance(result.vendor_id, int)
    assert result.message_id == received["message_id"] and result.message_id.startswith("wamid.")
    assert result.vendor_status == "sent"
    assert result.rate.limit == 100000
    assert result.rate.remaining is not None and 0 <= result.rate.remaining < 100000
    assert result.rate.reset_at is not None and result.rate.reset_at > time.time()
    assert attempts.statuses == [200] and attempts.before_calls == 1
    [record] = attempts.records
    assert record.outcome == "sent" and record.vendor_message_id == result.message_id
    assert record.vendor_id == result.vendor_id and record.error_code is None and record.duration_ms >= 0


def test_sandbox_records_the_exact_fields_and_sender(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    message = message_to(phone, header_text="Offer 🎉", footer_text="مع السلامة", body_text="Hello 🎉 مرحبا")
    client.send(message, "sender-7")
    [received] = admin.received(phone=phone)
    assert received["body"] == json.loads(message.body_bytes())
    assert received["phone_number_id"] == "sender-7"


def test_non_ascii_message_is_accepted_so_the_utf8_bytes_were_signed_as_sent(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    # The sandbox checks the signature over the raw bytes it got: a 200 proves signed == sent.
    result = client.send(message_to(phone, body_text="🎉" * 1024, buttons=[{"id": "نعم", "title": "نعم 👍"}]), SENDER)
    assert result.message_id.startswith("wamid.")
    assert admin.received(phone=phone)[0]["body"]["body_text"] == "🎉" * 1024


def test_base_url_path_prefix_is_part_of_the_signed_path(phone: str) -> None:
    server = SandboxServer(SandboxConfig(path_prefix="/api/v1"))
    base = server.start_in_thread()
    try:
        assert base.endswith("/api/v1")
        with_prefix = make_client(base + "/")
        try:
            assert with_prefix.send(message_to(phone), SENDER).message_id.startswith("wamid.")
        finally:
            with_prefix.close()
        assert len(SandboxClient(base).received(phone=phone)) == 1
    finally:
        server.stop()


class _Capture(BaseHTTPRequestHandler):
    """Records one request exactly as it arrived and answers like the vendor."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Capture.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        answer = json.dumps({"status": True, "message": {"id": 1, "messageId": "wamid.X", "status": "sent"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Capture.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Capture.seen
    finally:
        server.shutdown()
        server.server_close()


def test_request_carries_the_five_headers_content_type_and_the_exact_signed_bytes(capture: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = capture
    fixed_now = 1704124800.9
    awal = make_client(url, clock=lambda: fixed_now)
    message = message_to("966500000000", body_text="Hello 🎉")
    try:
        awal.send(message, "123 456")
    finally:
        awal.close()
    [request] = seen
    headers = request["headers"]
    assert request["body"] == message.body_bytes()           # data=, not json=: no re-serialization
    assert request["path"] == "/w/message/button?phone_number_id=123%20456"
    assert headers["Accept"] == "application/json"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Timestamp"] == "1704124800"            # whole seconds, truncated
    assert headers["X-Domain"] == DOMAIN
    assert headers["X-Client-ID"] == CLIENT_ID
    assert headers["X-Awal-Signature-256"] == sign_request(
        secret=SECRET.encode(), method="POST", path="/w/message/button",
        query_string="?phone_number_id=123%20456", timestamp="1704124800", body=message.body_bytes(),
    )
    assert SECRET not in json.dumps(headers)


# --- authentication failures: permanent, never retried -----------------------------------------
def test_wrong_secret_gets_authentication_failed_401_with_exactly_one_attempt(base_url: str, phone: str, admin: SandboxClient) -> None:
    attempts = Attempts()
    wrong = make_client(base_url, hmac_secret=b"not-the-secret")
    try:
        with pytest.raises(AuthenticationFailed) as info:
            send(wrong, message_to(phone), attempts)
    finally:
        wrong.close()
    error = info.value
    assert error.http_status == 401 and error.code == "authentication_failed"
    assert error.request_id and error.request_id.startswith("req_")
    assert "not-the-secret" not in str(error)
    assert attempts.statuses == [401] and attempts.before_calls == 1
    assert attempts.records[0].outcome == "AuthenticationFailed"
    assert admin.received(phone=phone) == []


def test_stale_timestamp_from_a_slow_clock_gets_authentication_failed(base_url: str, phone: str) -> None:
    attempts = Attempts()
    skewed = make_client(base_url, clock=lambda: time.time() - 600)
    try:
        with pytest.raises(AuthenticationFailed):
            send(skewed, message_to(phone), attempts)
    finally:
        skewed.close()
    assert attempts.statuses == [401]


def test_scripted_401_is_authentication_failed_and_not_retried(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.script(phone, ["401"])
    attempts = Attempts()
    with pytest.raises(AuthenticationFailed):
        send(client, message_to(phone), attempts)
    assert attempts.statuses == [401]


# --- classification of each status, over HTTP --------------------------------------------------
def test_400_is_permanent_with_the_vendor_code_message_and_request_id(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.script(phone, ["400"])
    attempts = Attempts()
    with pytest.raises(PermanentError) as info:
        send(client, message_to(phone), attempts)
    error = info.value
    assert type(error) is PermanentError
    assert error.http_status == 400 and error.code == "validation_failed"
    assert error.message == "scripted validation failure"
    assert error.request_id and error.request_id.startswith("req_")
    assert error.details == {"injected": True}
    assert attempts.statuses == [400]
    [record] = attempts.records
    assert (record.error_code, record.request_id, record.outcome) == ("validation_failed", error.request_id, "PermanentError")
    assert record.rate.limit == 100000                       # error responses carry rate headers too


def test_unknown_phone_number_id_is_404_permanent(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.configure(phone_number_ids=["111111"])
    try:
        attempts = Attempts()
        with pytest.raises(PermanentError) as info:
            send(client, message_to(phone), attempts, sender="999999")
        assert client.send(message_to(phone), "111111").message_id.startswith("wamid.")
    finally:
        admin.configure(phone_number_ids=None)
    assert type(info.value) is PermanentError
    assert info.value.http_status == 404 and info.value.code == "resource_not_found"
    assert attempts.statuses == [404]


def test_scripted_429_is_rate_limited_with_retry_after_and_not_retried(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.script(phone, ["429"])
    attempts = Attempts()
    with pytest.raises(RateLimited) as info:
        send(client, message_to(phone), attempts)
    assert info.value.retry_after == 1.0
    assert info.value.http_status == 429 and info.value.code == "rate_limit_exceeded"
    assert attempts.statuses == [429]
    # the next request for the phone is answered normally
    assert client.send(message_to(phone), SENDER).message_id.startswith("wamid.")


def test_429_burst_with_a_window_long_retry_after_reports_3600_seconds(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.configure(force_429_for_s=30, retry_after=3600)
    try:
        with pytest.raises(RateLimited) as info:
            client.send(message_to(phone), SENDER)
    finally:
        admin.reset()                                        # ends the forced burst
    assert info.value.retry_after == 3600.0


@pytest.mark.parametrize("status", ["500", "503"])
def test_single_5xx_is_server_error_retried_then_sent(client: AwalClient, admin: SandboxClient, phone: str, status: str) -> None:
    admin.script(phone, [status])
    attempts = Attempts()
    result = send(client, message_to(phone), attempts)
    assert result.message_id.startswith("wamid.")
    assert attempts.statuses == [int(status), 200]
    assert attempts.records[0].outcome == "ServerError"
    assert attempts.records[0].error_code == {"500": "internal_error", "503": "service_unavailable"}[status]


def test_503_twice_then_200_is_sent_with_three_attempts_and_before_request_each_time(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.script(phone, ["503", "503"])
    attempts = Attempts()
    result = send(client, message_to(phone), attempts)
    assert result.message_id.startswith("wamid.")
    assert attempts.statuses == [503, 503, 200]
    assert [r.outcome for r in attempts.records] == ["ServerError", "ServerError", "sent"]
    assert attempts.before_calls == 3
    assert len(admin.received(phone=phone)) == 1


def test_503_on_every_attempt_raises_server_error_after_exactly_retry_attempts(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.script(phone, ["503"] * (RETRY_ATTEMPTS + 1))
    attempts = Attempts()
    with pytest.raises(ServerError) as info:
        send(client, message_to(phone), attempts)
    assert info.value.http_status == 503
    assert attempts.statuses == [503] * RETRY_ATTEMPTS
    assert attempts.before_calls == RETRY_ATTEMPTS
    assert admin.received(phone=phone) == []
    assert admin.stats()["scripts_pending"][phone] == ["503"]  # the extra scripted answer was never asked for


def test_retry_attempts_setting_of_one_means_no_retry(base_url: str, admin: SandboxClient, phone: str) -> None:
    admin.script(phone, ["503"])
    attempts = Attempts()
    once = make_client(base_url, retry_attempts=1)
    try:
        with pytest.raises(ServerError):
            send(once, message_to(phone), attempts)
    finally:
        once.close()
    assert attempts.statuses == [503]


def test_read_timeout_is_ambiguous_not_retried_and_the_sandbox_received_it_once(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.script(phone, ["timeout"])
    attempts = Attempts()
    started = time.monotonic()
    with pytest.raises(AmbiguousError) as info:
        send(client, message_to(phone), attempts)
    assert time.monotonic() - started < STALL_S   # given up before the stalled answer came (however busy the machine)
    assert info.value.code == "read_timeout"
    assert attempts.statuses == [None] and attempts.before_calls == 1
    assert attempts.records[0].outcome == "AmbiguousError"
    [received] = admin.received(phone=phone)
    assert received["outcome"] == "timeout"


def test_dropped_connection_is_ambiguous_and_not_retried(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    admin.script(phone, ["drop"])
    attempts = Attempts()
    with pytest.raises(AmbiguousError) as info:
        send(client, message_to(phone), attempts)
    assert info.value.code == "connection_dropped"
    assert attempts.statuses == [None] and attempts.before_calls == 1
    assert admin.stats()["counts"].get("drop", 0) >= 1
    # the client recovers: the next request opens a fresh connection
    assert client.send(message_to(phone), SENDER).message_id.startswith("wamid.")


def test_connection_refused_is_connection_not_made_and_retried() -> None:
    attempts = Attempts()
    closed = make_client(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ConnectionNotMade) as info:
            send(closed, message_to("96650000000"), attempts)
    finally:
        closed.close()
    assert info.value.code == "connection_failed"
    assert attempts.statuses == [None] * RETRY_ATTEMPTS
    assert attempts.before_calls == RETRY_ATTEMPTS
    assert {r.outcome for r in attempts.records} == {"ConnectionNotMade"}


def test_connect_timeout_is_retried_as_connection_not_made(monkeypatch: pytest.MonkeyPatch) -> None:
    # No traffic leaves the machine: the session raises the ConnectTimeout requests would raise.
    calls: list[str] = []

    def refuse(self: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **_kwargs: Any) -> requests.Response:
        calls.append(request.url)
        raise requests.ConnectTimeout("connect timed out")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", refuse)
    attempts = Attempts()
    awal = make_client("http://127.0.0.1:9")
    with pytest.raises(ConnectionNotMade) as info:
        send(awal, message_to("96650000000"), attempts)
    assert info.value.code == "connect_timeout"
    assert len(calls) == RETRY_ATTEMPTS and attempts.before_calls == RETRY_ATTEMPTS


def test_before_request_raising_stops_the_send_before_any_http(client: AwalClient, admin: SandboxClient, phone: str) -> None:
    def no_slot() -> None:
        raise RateLimited("no rate slot", retry_after=5.0)

    with pytest.raises(RateLimited):
        client.send(message_to(phone), SENDER, before_request=no_slot)
    assert admin.received(phone=phone) == []


# --- classify_response on hand-built responses ------------------------------------------------
def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    built = requests.Response()
    built.status_code = status
    if body is not None:
        built._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        built.headers["Content-Type"] = "application/json"
    else:
        built._content = b""
    built.headers.update(headers or {})
    return built


def vendor_error(code: str, message: str = "text", request_id: str = "req_abc") -> dict[str, Any]:
    return {"error": code, "message": message, "details": {"phone": "bad"}, "request_id": request_id}


def test_classify_200_success_reads_the_three_ids_and_rate_headers() -> None:
    result = classify_response(response(
        200, {"status": True, "message": {"id": 12346, "messageId": "wamid.HBg", "status": "sent"}},
        {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "998", "X-RateLimit-Reset": "1704128400"},
    ))
    assert result == SendResult(vendor_id=12346, message_id="wamid.HBg", vendor_status="sent", http_status=200,
                                rate=RateHeaders(limit=1000, remaining=998, reset_at=1704128400.0))


def test_classify_200_with_status_false_is_permanent() -> None:
    with pytest.raises(PermanentError) as info:
        classify_response(response(200, {"status": False, "message": {"id": 1, "messageId": "wamid.X", "status": "failed"}}))
    assert info.value.http_status == 200 and info.value.code == "unexpected_response"


@pytest.mark.parametrize(
    "body",
    [{"status": "true", "message": {"id": 1, "messageId": "wamid.X"}}, {"status": True, "message": {"id": 1}},
     {"status": True, "message": {"id": 1, "messageId": ""}}, {"status": True}, [1, 2]],
    ids=["status-string", "no-message-id", "empty-message-id", "no-message", "json-list"],
)
def test_classify_200_without_status_true_and_message_id_is_permanent(body: Any) -> None:
    with pytest.raises(PermanentError):
        classify_response(response(200, body))


def test_classify_200_with_an_unreadable_body_is_ambiguous_since_the_vendor_may_have_sent_it() -> None:
    with pytest.raises(AmbiguousError) as info:
        classify_response(response(200, b"<html>ok</html>"))
    assert info.value.code == "unreadable_response"


def test_classify_a_redirect_is_permanent_never_followed() -> None:
    with pytest.raises(PermanentError) as info:
        classify_response(response(307, b"", {"Location": "https://elsewhere.example/w/message/button"}))
    assert info.value.http_status == 307


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_classify_4xx_is_permanent_with_vendor_code_and_request_id(status: int) -> None:
    with pytest.raises(PermanentError) as info:
        classify_response(response(status, vendor_error("some_code", "why", "req_42")))
    error = info.value
    assert type(error) is PermanentError and not error.retryable
    assert (error.http_status, error.code, error.message, error.request_id) == (status, "some_code", "why", "req_42")
    assert error.details == {"phone": "bad"}


def test_classify_409_without_a_body_is_permanent_http_409() -> None:
    with pytest.raises(PermanentError) as info:
        classify_response(response(409))
    assert type(info.value) is PermanentError and info.value.code == "http_409"


def test_classify_401_is_authentication_failed() -> None:
    with pytest.raises(AuthenticationFailed) as info:
        classify_response(response(401, vendor_error("authentication_failed", "signature does not match")))
    assert info.value.code == "authentication_failed" and info.value.request_id == "req_abc"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_classify_5xx_is_server_error(status: int) -> None:
    with pytest.raises(ServerError) as info:
        classify_response(response(status))
    assert info.value.retryable and info.value.http_status == status and info.value.code == f"http_{status}"


def test_classify_502_html_body_is_server_error_with_the_text() -> None:
    with pytest.raises(ServerError) as info:
        classify_response(response(502, b"<html>Bad Gateway</html>"))
    assert "Bad Gateway" in info.value.message


def test_classify_429_uses_retry_after_seconds() -> None:
    with pytest.raises(RateLimited) as info:
        classify_response(response(429, vendor_error("rate_limit_exceeded"), {"Retry-After": "3600"}), now=1000.0)
    assert info.value.retry_after == 3600.0 and info.value.code == "rate_limit_exceeded"


def test_classify_429_whose_retry_after_is_the_reset_rounded_up_waits_only_until_the_reset() -> None:
    with pytest.raises(RateLimited) as info:
        classify_response(response(429, vendor_error("rate_limit_exceeded"),
                                   {"Retry-After": "1", "X-RateLimit-Reset": "1001"}), now=1000.3)
    assert info.value.retry_after == pytest.approx(0.7)


def test_classify_429_with_a_retry_after_longer_than_the_reset_obeys_retry_after() -> None:
    with pytest.raises(RateLimited) as info:
        classify_response(response(429, vendor_error("rate_limit_exceeded"),
                                   {"Retry-After": "3600", "X-RateLimit-Reset": "1001"}), now=1000.3)
    assert info.value.retry_after == 3600.0


def test_classify_429_without_retry_after_waits_until_x_ratelimit_reset() -> None:
    with pytest.raises(RateLimited) as info:
        classify_response(response(429, None, {"X-RateLimit-Reset": "1090"}), now=1000.0)
    assert info.value.retry_after == pytest.approx(90.0)


def test_classify_429_with_neither_header_waits_the_default() -> None:
    with pytest.raises(RateLimited) as info:
        classify_response(response(429), now=1000.0)
    assert info.value.retry_after == DEFAULT_RETRY_AFTER_S


def test_classify_429_with_a_past_reset_waits_the_default() -> None:
    with pytest.raises(RateLimited) as info:
        classify_response(response(429, None, {"X-RateLimit-Reset": "900"}), now=1000.0)
    assert info.value.retry_after == DEFAULT_RETRY_AFTER_S


def test_classify_429_with_unparseable_retry_after_falls_back_to_reset() -> None:
    with pytest.raises(RateLimited) as info:
        classify_response(response(429, None, {"Retry-After": "soon", "X-RateLimit-Reset": "1010"}), now=1000.0)
    assert info.value.retry_after == pytest.approx(10.0)


def test_rate_headers_absent_or_malformed_are_none() -> None:
    assert RateHeaders.parse(response(200).headers) == RateHeaders()
    assert not RateHeaders().present
    parsed = RateHeaders.parse(response(200, None, {"X-RateLimit-Limit": "x", "X-RateLimit-Remaining": "5"}).headers)
    assert parsed == RateHeaders(limit=None, remaining=5, reset_at=None) and parsed.present


# --- classify_transport_error on constructed exceptions ----------------------------------------
def test_classify_connect_timeout_is_connection_not_made() -> None:
    error = classify_transport_error(requests.ConnectTimeout("connect timed out"))
    assert type(error) is ConnectionNotMade and error.code == "connect_timeout" and error.retryable


def test_classify_read_timeout_is_ambiguous() -> None:
    error = classify_transport_error(requests.ReadTimeout("read timed out"))
    assert type(error) is AmbiguousError and error.code == "read_timeout" and not error.retryable


def test_classify_new_connection_error_is_connection_not_made() -> None:
    exc = requests.ConnectionError("Max retries exceeded (Caused by NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))")
    assert type(classify_transport_error(exc)) is ConnectionNotMade


def test_classify_dns_failure_is_connection_not_made() -> None:
    exc = requests.ConnectionError("Max retries exceeded (Caused by NameResolutionError('Failed to resolve host'))")
    assert type(classify_transport_error(exc)) is ConnectionNotMade


def test_classify_connection_reset_after_sending_is_ambiguous() -> None:
    exc = requests.ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end closed connection without response'))")
    error = classify_transport_error(exc)
    assert type(error) is AmbiguousError and error.code == "connection_dropped"


def test_classify_other_request_exception_is_ambiguous() -> None:
    error = classify_transport_error(requests.exceptions.ChunkedEncodingError("broken"))
    assert type(error) is AmbiguousError and error.code == "transport_error"


def test_client_repr_never_shows_the_secret(base_url: str) -> None:
    awal = make_client(base_url, hmac_secret=b"very-secret-value")
    try:
        assert "very-secret-value" not in repr(awal)
    finally:
        awal.close()


def test_every_worker_thread_keeps_its_own_keep_alive_connection() -> None:
    # Given a vendor answering after 100 ms (so 40 requests really are open at once), and a client
    # built for a worker with 40 threads
    from worker.sending.client import build_client
    from worker.settings import Settings

    server = SandboxServer(SandboxConfig(latency_ms=100))
    base_url = server.start_in_thread()
    threads = 40
    settings = Settings.from_env({"AWAL_BASE_URL": base_url, "AWAL_CLIENT_ID": CLIENT_ID, "AWAL_DOMAIN": DOMAIN,
                                  "AWAL_HMAC_SECRET": SECRET, "AWAL_PHONE_NUMBER_ID": SENDER,
                                  "WORKER_CONCURRENCY": str(threads)})
    awal = build_client(settings)
    barrier = threading.Barrier(threads)

    def send_twice() -> None:
        for _ in range(2):
            barrier.wait()
            awal.send(message_to(str(next(_phones))), SENDER)

    # When 40 threads send at once, twice
    workers = [threading.Thread(target=send_twice) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    # Then the second round reused the first round's connections: at most one per thread was opened
    manager = awal._session.get_adapter(base_url).poolmanager
    [pool] = [manager.pools[key] for key in manager.pools.keys()]  # one host: one pool
    awal.close()
    server.stop()
    assert threads // 2 < pool.num_connections <= threads


def test_proxy_settings_come_from_the_environment_read_when_the_client_is_built(base_url: str, phone: str, monkeypatch) -> None:  # noqa: ANN001
    # Given HTTP_PROXY pointing at a port where nothing listens
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    through_proxy = make_client(base_url, retry_attempts=1)
    # And NO_PROXY exempting the vendor's host
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = make_client(base_url)
    monkeypatch.delenv("HTTP_PROXY")   # later changes do not matter: read once, at build time

    # the proxy could not be reached: nothing was sent, and a wrong proxy is wrong for every message
    # (issue 12 item 3: a configuration error that pauses the campaign, not a retry)
    from worker.errors import TransportConfigError
    with pytest.raises(TransportConfigError) as info:
        through_proxy.send(message_to(phone), SENDER)
    assert info.value.code == "proxy_error"
    assert direct.send(message_to(phone), SENDER).message_id
    through_proxy.close()
    direct.close()
