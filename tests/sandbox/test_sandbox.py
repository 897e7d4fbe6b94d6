"""The Awal sandbox, over real HTTP: a fresh sandbox per test, started in a thread on a free port."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
import requests

from worker.errors import ConfigError
from worker.sandbox import SandboxClient, SandboxConfig, SandboxServer
from worker.sandbox.client import signed_headers
from worker.signing import SIGNATURE_HEADER, sign_body, signatures_match

SECRET = "test-sandbox-secret"
PHONE = "96650000000"
MESSAGE = {"phone": PHONE, "body_text": "Hello", "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]}


@pytest.fixture
def start() -> Iterator[Any]:
    """start(**config) -> (server, client); every server started is stopped after the test."""
    servers: list[SandboxServer] = []

    def _start(**options: Any) -> tuple[SandboxServer, SandboxClient]:
        server = SandboxServer(SandboxConfig(secret=SECRET, **options))
        servers.append(server)
        return server, SandboxClient(server.start_in_thread(), secret=SECRET)

    yield _start
    for server in servers:
        server.stop()


@pytest.fixture
def client(start: Any) -> SandboxClient:
    return start()[1]


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "details", "request_id"}
    assert body["error"] == code
    assert body["request_id"].startswith("req_") and len(body["request_id"]) > 4
    return body


# --- authentication -------------------------------------------------------------------------
def test_signed_request_is_accepted_with_increasing_ids_and_recorded(client: SandboxClient) -> None:
    first, second = client.send(MESSAGE).json(), client.send(MESSAGE).json()
    assert first["status"] is True and first["message"]["status"] == "sent"
    assert first["message"]["messageId"].startswith("wamid.")
    assert second["message"]["id"] == first["message"]["id"] + 1
    records = client.received(phone=PHONE)
    assert [r["message_id"] for r in records] == [first["message"]["messageId"], second["message"]["messageId"]]
    assert records[0]["body"] == MESSAGE and records[0]["phone_number_id"] == "123456"
    assert client.counts_per_phone() == {PHONE: 2}


def test_wrong_secret_is_rejected(client: SandboxClient) -> None:
    other = SandboxClient(client.base_url, secret="not-the-secret")
    assert_error(other.send(MESSAGE), 401, "authentication_failed")
    assert client.received() == []


def test_tampered_body_is_rejected(client: SandboxClient) -> None:
    url = client.send_url("123456")
    headers = signed_headers(url=url, body=body_of(MESSAGE), secret=SECRET,
                             client_id="sandbox-client", domain="sandbox.local")
    tampered = body_of({**MESSAGE, "body_text": "Hellp"})
    assert_error(requests.post(url, data=tampered, headers=headers, timeout=5), 401, "authentication_failed")


def test_missing_header_is_listed(client: SandboxClient) -> None:
    url = client.send_url("123456")
    headers = signed_headers(url=url, body=body_of(MESSAGE), secret=SECRET,
                             client_id="sandbox-client", domain="sandbox.local")
    del headers["X-Domain"]
    body = assert_error(requests.post(url, data=body_of(MESSAGE), headers=headers, timeout=5), 401, "authentication_failed")
    assert body["details"]["missing_headers"] == ["X-Domain"]


@pytest.mark.parametrize("skew_s", [-301, 400])
def test_stale_or_future_timestamp_is_rejected(client: SandboxClient, skew_s: int) -> None:
    url = client.send_url("123456")
    headers = signed_headers(url=url, body=body_of(MESSAGE), secret=SECRET, client_id="sandbox-client",
                             domain="sandbox.local", timestamp=int(time.time()) + skew_s)
    assert_error(requests.post(url, data=body_of(MESSAGE), headers=headers, timeout=5), 401, "authentication_failed")


@pytest.mark.parametrize("override", [{"X-Client-ID": "someone-else"}, {"X-Domain": "other.example"}])
def test_wrong_client_id_or_domain_is_rejected(client: SandboxClient, override: dict[str, str]) -> None:
    assert_error(client.send(MESSAGE, headers=override), 401, "authentication_failed")


def test_path_prefix_is_part_of_the_signed_path(start: Any) -> None:
    _, client = start(path_prefix="/api/v1")
    assert client.base_url.endswith("/api/v1")
    assert client.send(MESSAGE).status_code == 200


# --- validation -----------------------------------------------------------------------------
def test_limits_are_reported_per_field(client: SandboxClient) -> None:
    buttons = [{"id": f"b{i}", "title": f"Title {i}"} for i in range(4)]
    buttons[0]["title"] = "x" * 21
    body = assert_error(client.send({**MESSAGE, "buttons": buttons}), 400, "validation_failed")
    assert "buttons" in body["details"] and "3" in body["details"]["buttons"]
    assert "20" in body["details"]["buttons[0].title"]
    assert client.received() == []


def test_body_that_is_not_json_is_a_validation_failure(client: SandboxClient) -> None:
    assert_error(client.send(b"{not json"), 400, "validation_failed")


def test_bad_phone_and_fail_prefix_are_invalid_phone_number(start: Any) -> None:
    _, client = start(fail_phone_prefixes=("99900",))
    assert_error(client.send({**MESSAGE, "phone": "12ab"}), 400, "invalid_phone_number")
    assert_error(client.send({**MESSAGE, "phone": "999001234567"}), 400, "invalid_phone_number")
    assert_error(client.send({**MESSAGE, "phone": "+96650000000"}), 400, "invalid_phone_number")
    assert client.received() == []
    assert client.stats()["counts"] == {"400:invalid_phone_number": 3}


def test_unknown_phone_number_id_is_not_found(start: Any) -> None:
    _, client = start(phone_number_ids=("123456",))
    assert client.send(MESSAGE, phone_number_id="123456").status_code == 200
    assert_error(client.send(MESSAGE, phone_number_id="777"), 404, "resource_not_found")


# --- rate limit -----------------------------------------------------------------------------
def test_rate_limit_answers_429_and_every_response_carries_the_headers(start: Any) -> None:
    # Given 3 requests per hour (an epoch-aligned window: crossing it mid-test is ~1 in 100,000)
    _, client = start(rate_limit="3/h")
    wrong = SandboxClient(client.base_url, secret="wrong")
    responses = [client.send(MESSAGE), wrong.send(MESSAGE), client.send({**MESSAGE, "phone": "1"}),
                 client.send(MESSAGE), client.send(MESSAGE)]
    reset_at = math.ceil((math.floor(time.time() / 3600) + 1) * 3600)
    for response in responses:
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Reset"] == str(reset_at)
    # Then a failed signature does not spend the budget, a validation failure does
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["2", "2", "1", "0", "0"]
    assert [r.status_code for r in responses] == [200, 401, 400, 200, 429]
    assert_error(responses[-1], 429, "rate_limit_exceeded")
    assert 1 <= int(responses[-1].headers["Retry-After"]) <= 3600


def test_forced_429_burst_and_remaining_override(start: Any) -> None:
    _, client = start(rate_limit="100/h")
    client.configure(force_429_for_s=30, retry_after=7)
    response = client.send(MESSAGE)
    assert_error(response, 429, "rate_limit_exceeded")
    assert response.headers["Retry-After"] == "7"
    client.configure(force_429_for_s=0, remaining_override=2)
    response = client.send(MESSAGE)
    assert response.status_code == 200 and response.headers["X-RateLimit-Remaining"] == "2"


def test_bad_runtime_option_is_refused(client: SandboxClient) -> None:
    with pytest.raises(ValueError, match="error_rate_503"):
        client.configure(error_rate_503=2)
    with pytest.raises(ValueError, match="not runtime-settable"):
        client.configure(secret="x")


# --- faults ---------------------------------------------------------------------------------
def test_scripted_503_twice_then_normal(client: SandboxClient) -> None:
    client.script(PHONE, ["503", "503"])
    statuses = [client.send(MESSAGE).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    stats = client.stats()
    assert stats["counts"] == {"503": 2, "200": 1}
    assert [e["fault"] for e in stats["fault_events"][PHONE]] == ["503", "503"]
    assert client.counts_per_phone() == {PHONE: 1}


def test_read_timeout_records_the_message_and_the_client_times_out(client: SandboxClient) -> None:
    client.script(PHONE, ["timeout"])
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.send(MESSAGE, timeout=0.3)
    [record] = client.received(phone=PHONE)
    assert record["outcome"] == "timeout"
    assert client.stats()["counts"] == {"timeout": 1}


def test_drop_closes_without_recording(start: Any) -> None:
    _, client = start(rate_limit="10/h")
    client.script(PHONE, ["drop"])
    with pytest.raises(requests.exceptions.ConnectionError):
        client.send(MESSAGE)
    client.configure(drop_rate=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.send(MESSAGE)
    client.configure(drop_rate=0.0)
    response = client.send(MESSAGE)
    assert [r["outcome"] for r in client.received()] == ["sent"]
    assert client.stats()["counts"] == {"drop": 2, "200": 1}
    # the scripted drop was authenticated (counted); the random one was never read (not counted)
    assert response.headers["X-RateLimit-Remaining"] == "8"


def test_random_faults_repeat_with_the_same_seed(start: Any) -> None:
    def run() -> list[int]:
        _, client = start(seed=42, error_rate_500=0.2, error_rate_503=0.3)
        return [client.send(MESSAGE).status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert {500, 503, 200} <= set(first)


def test_latency_does_not_serialize_concurrent_requests(start: Any) -> None:
    # 8 requests of 1 s each: one after another they would take 8 s; at once, about 1 s. The bound
    # sits halfway, so a busy machine's overhead (seconds) cannot fail it while serialising still does.
    _, client = start(latency_ms=1000)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(
        SandboxClient(client.base_url, secret=SECRET).send(MESSAGE).status_code)) for _ in range(8)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    assert statuses == [200] * 8
    assert 1.0 <= elapsed < 8 * 1.0 / 2


# --- webhooks -------------------------------------------------------------------------------
class Receiver:
    """A tiny webhook endpoint that records (headers, raw body) and can fail its first N posts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.arrived:
                    if outer.fail_first > 0:
                        outer.fail_first -= 1
                        status = 500
                    else:
                        outer.events.append((dict(self.headers), raw))
                        status = 200
                    outer.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webhooks/awal"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.events) >= count, timeout_s), self.events
        for headers, raw in self.events:
            assert signatures_match(sign_body(secret=b"hook-secret", body=raw), headers.get(SIGNATURE_HEADER))
        return [json.loads(raw) for _, raw in self.events]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_webhooks_deliver_read_and_tap_in_order_signed(start: Any, receiver: Receiver) -> None:
    _, client = start(webhook_url=receiver.url, webhook_secret="hook-secret", delivered_after_s=0.05,
                      read_after_s=0.1, tap_share=1.0, tap_button_id="no")
    wamid = client.send(MESSAGE).json()["message"]["messageId"]
    delivered, read, tap = receiver.wait_for(3)
    assert (delivered["event"], delivered["data"]["status"], delivered["data"]["message_id"]) == (
        "message.status.updated", "delivered", wamid)
    assert (read["data"]["status"], read["data"]["message_id"]) == ("read", wamid)
    assert tap["event"] == "message.received"
    data = tap["data"]
    assert data["type"] == "button_reply" and data["button"] == {"id": "no", "title": "No"}
    assert data["context"] == {"message_id": wamid}
    assert (data["from"], data["to"]) == (PHONE, "123456")


def test_read_timeout_message_still_gets_its_status_webhooks(start: Any, receiver: Receiver) -> None:
    # Given the vendor sends the message but its answer is lost, When the status events come,
    # Then they name a wamid the client never saw: only the sandbox's record links them.
    _, client = start(webhook_url=receiver.url, webhook_secret="hook-secret", delivered_after_s=0.0,
                      read_share=0.0)
    client.script(PHONE, ["timeout"])
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.send(MESSAGE, timeout=0.3)
    [delivered] = receiver.wait_for(1)
    assert delivered["data"]["message_id"] == client.received(phone=PHONE)[0]["message_id"]


def test_webhook_post_is_retried_after_a_failure(start: Any) -> None:
    receiver = Receiver(fail_first=1)
    try:
        _, client = start(webhook_url=receiver.url, webhook_secret="hook-secret", delivered_after_s=0.0,
                          read_share=0.0)
        client.send(MESSAGE)
        [delivered] = receiver.wait_for(1)
        assert delivered["data"]["status"] == "delivered"
        # the sandbox counts the delivery once it has read the answer, just after the receiver saw it
        deadline = time.monotonic() + 5
        while client.stats()["webhooks"].get("delivered") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.stats()["webhooks"] == {"retried": 1, "delivered": 1}
    finally:
        receiver.close()


def test_a_late_fail_prefix_answers_200_then_sends_one_failed_webhook_with_the_code(start: Any, receiver: Receiver) -> None:
    """Issue 13 item 9: a phone matching --late-fail-prefix CODE:PREFIX gets a late `failed` status
    webhook, WhatsApp style (errors[0].code), instead of delivered/read; the webhook parser reads it."""
    from worker.webhooks.events import parse_body

    _, client = start(webhook_url=receiver.url, webhook_secret="hook-secret", delivered_after_s=0.0,
                      late_fail_prefixes={"9665000": "131047", "966500000": "131050"})
    response = client.send(MESSAGE)
    assert response.status_code == 200
    wamid = response.json()["message"]["messageId"]
    [failed] = receiver.wait_for(1)
    time.sleep(0.2)
    assert len(receiver.events) == 1   # nothing else follows a late failure
    data = failed["data"]
    assert (data["message_id"], data["status"], data["recipient"]) == (wamid, "failed", PHONE)
    assert data["errors"][0]["code"] == 131050   # the longest matching prefix wins
    event = parse_body(receiver.events[0][1], received_at=datetime.now(timezone.utc))
    assert event.failure_code == "131050"
    assert client.stats()["late_failures"] == {"131050": 1}


def test_late_fail_rates_split_accepted_messages_by_code(start: Any, receiver: Receiver) -> None:
    _, client = start(webhook_url=receiver.url, webhook_secret="hook-secret", delivered_after_s=0.0, read_share=0.0,
                      late_fail_rates={"131047": 0.5, "131026": 0.5})
    for i in range(20):
        assert client.send({**MESSAGE, "phone": f"9665{i:08d}"}).status_code == 200
    events = receiver.wait_for(20)
    codes = Counter(e["data"]["errors"][0]["code"] for e in events)
    assert set(codes) == {131047, 131026} and sum(codes.values()) == 20
    assert all(e["data"]["status"] == "failed" for e in events)


def test_a_stop_reply_follows_delivered_and_read_as_an_inbound_text(start: Any, receiver: Receiver) -> None:
    """Issue 13 item 9: --stop-reply-prefix / --stop-reply-rate: the recipient writes STOP."""
    _, client = start(webhook_url=receiver.url, webhook_secret="hook-secret", delivered_after_s=0.0,
                      read_after_s=0.05, tap_share=1.0, stop_reply_prefixes=("96650",))
    client.send(MESSAGE)
    delivered, read, stop = receiver.wait_for(3)
    assert (delivered["data"]["status"], read["data"]["status"]) == ("delivered", "read")
    assert stop["event"] == "message.received"
    assert (stop["data"]["type"], stop["data"]["body"], stop["data"]["from"]) == ("text", "STOP", PHONE)
    assert "context" not in stop["data"]   # no tap either: a person who said stop taps nothing
    time.sleep(0.1)
    assert len(receiver.events) == 3 and client.stats()["stop_replies"] == 1
    # and by share, at runtime
    client.configure(stop_reply_prefixes=[], stop_reply_rate=1.0, tap_share=0.0)
    client.send({**MESSAGE, "phone": "96651111111"})
    assert receiver.wait_for(6)[-1]["data"]["body"] == "STOP"


def test_tap_share_by_text_taps_the_message_containing_the_text_and_stats_name_each_tap(start: Any, receiver: Receiver) -> None:
    # Given the sandbox taps a body containing "20% off" always, "off" never, anything else always (tap_share 1)
    _, client = start(webhook_url=receiver.url, webhook_secret="hook-secret", delivered_after_s=0.0, read_after_s=0.0,
                      tap_share=1.0, tap_share_by_text={"off": 0.0, "20% off": 1.0})
    sent = {}
    for i, text in enumerate(("Today 20% off", "Half off", "Hello")):
        response = client.send({**MESSAGE, "phone": f"9665{i:08d}", "body_text": text})
        sent[text] = response.json()["message"]["messageId"]
    events = receiver.wait_for(3 * 2 + 2)   # delivered and read for each, a tap for two of them
    # Then the longest matching key decides: "20% off" and "Hello" tapped, "Half off" not
    taps = [e["data"]["context"]["message_id"] for e in events if e["event"] == "message.received"]
    assert sorted(taps) == sorted([sent["Today 20% off"], sent["Hello"]])
    assert client.stats()["taps"] == {sent["Today 20% off"]: "yes", sent["Hello"]: "yes"}
    # And at runtime: "Hello" now tapped never, and the others keep theirs
    assert client.configure(tap_share_by_text={"Hello": 0})["config"]["tap_share_by_text"] == {"Hello": 0.0}
    assert SandboxConfig(tap_share=0.3, tap_share_by_text={"Hello": 0}).tap_share_for("Hello you") == 0.0
    assert SandboxConfig(tap_share=0.3, tap_share_by_text={"Hello": 0}).tap_share_for(None) == 0.3


def test_bad_tap_share_by_text_is_refused_naming_the_option(start: Any) -> None:
    for shares in ({"20% off": 1.5}, {"20% off": -0.1}, {"20% off": "lots"}, {"": 0.5}, ["20% off"]):
        with pytest.raises(ConfigError, match="tap_share_by_text"):
            SandboxConfig(tap_share_by_text=shares)
    _, client = start(tap_share_by_text={"A": 0.5})
    for shares in ({"20% off": 2}, "20% off", None):
        with pytest.raises(ValueError, match="tap_share_by_text"):
            client.configure(tap_share_by_text=shares)
    assert client.stats()["config"]["tap_share_by_text"] == {"A": 0.5}   # all or nothing


def test_cli_tap_share_by_text_is_parsed_and_checked() -> None:
    from click.testing import CliRunner

    from worker.cli.sandbox import _text_shares, sandbox_command

    assert _text_shares(None, None, ("Today: 20% off:0.6", "Hi:1")) == {"Today: 20% off": 0.6, "Hi": 1.0}  # type: ignore[arg-type]
    for value in ("20% off", "20% off:1.5", ":0.5", "20% off:x"):
        bad = CliRunner().invoke(sandbox_command, ["--tap-share-by-text", value])
        assert bad.exit_code == 2 and "TEXT:SHARE" in bad.output, bad.output


def test_bad_late_failure_options_are_refused(start: Any) -> None:
    for options in ({"late_fail_rates": {"999": 0.1}}, {"late_fail_rates": {"131047": 0.7, "131026": 0.6}},
                    {"late_fail_prefixes": {"96650": "42"}}, {"late_fail_prefixes": {"+966": "131047"}},
                    {"stop_reply_rate": 1.5}):
        with pytest.raises(ConfigError):
            SandboxConfig(**options)
    _, client = start()
    with pytest.raises(ValueError, match="late_fail_rates"):
        client.configure(late_fail_rates={"131047": 2})


def test_cli_late_failure_options_are_parsed_and_checked() -> None:
    from click.testing import CliRunner

    from worker.cli.sandbox import sandbox_command

    bad = CliRunner().invoke(sandbox_command, ["--late-fail-rate", "12:0.1"])
    assert bad.exit_code == 2 and "CODE:SHARE" in bad.output
    bad = CliRunner().invoke(sandbox_command, ["--late-fail-prefix", "131047"])
    assert bad.exit_code == 2 and "CODE:PREFIX" in bad.output


# --- run as a subprocess --------------------------------------------------------------------
def test_cli_prints_its_url_first_and_serves(tmp_path: Any) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.sandbox", "--port", "0", "--secret", SECRET, "--rate-limit", "5/s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        base_url = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert base_url.startswith("http://127.0.0.1:")
        assert SandboxClient(base_url, secret=SECRET).send(MESSAGE).status_code == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert SECRET not in stderr


# --- exposure: loopback unless told, admin endpoints never open off loopback (issue 12 item 16) ---
ADMIN_TOKEN = "test-admin-token"


def outward_address() -> str | None:
    """This machine's address on its default route (not loopback), or None when it has none."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize("host", ["0.0.0.0", "", "192.0.2.10", "example.org", "::"])
def test_non_loopback_bind_is_refused_unless_allowed(host: str) -> None:
    """Issue 12 item 16: the sandbox (known secrets) refuses to listen beyond loopback unless
    allow_remote (--allow-remote, SANDBOX_ALLOW_REMOTE) is given."""
    with pytest.raises(ConfigError, match="--allow-remote"):
        SandboxConfig(host=host)
    assert SandboxConfig(host=host, allow_remote=True).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "::ffff:127.0.0.1"])
def test_loopback_bind_needs_no_flag(host: str) -> None:
    assert SandboxConfig(host=host).host == host


def test_cli_refuses_a_remote_bind_without_allow_remote() -> None:
    """Issue 12 item 16: `buttoncast sandbox --host 0.0.0.0` exits with an error naming the flag."""
    done = subprocess.run([sys.executable, "-m", "worker.sandbox", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and done.stdout == ""
    assert "--allow-remote" in done.stderr


def test_admin_endpoints_refuse_remote_callers_without_a_token(start: Any) -> None:
    """Issue 12 item 16: bound to every interface, the sandbox still serves /_sandbox/* to loopback
    callers only (403 from another address), while its send endpoint answers everyone."""
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    server, _ = start(host="0.0.0.0", allow_remote=True)
    port = server.base_url.rsplit(":", 1)[1]
    remote = SandboxClient(f"http://{address}:{port}", secret=SECRET)
    assert remote.send(MESSAGE).status_code == 200
    for call in (remote.stats, remote.received, remote.reset, lambda: remote.configure(latency_ms=1)):
        with pytest.raises(requests.HTTPError) as info:
            call()
        assert info.value.response.status_code == 403
        assert "loopback" in info.value.response.json()["message"]
    assert server.config.latency_ms == 0.0 and len(server.state.received(None)) == 1
    local = SandboxClient(f"http://127.0.0.1:{port}", secret=SECRET)
    assert local.stats()["accepted"] == 1


def test_admin_token_is_required_from_every_caller_once_set(start: Any) -> None:
    """Issue 12 item 16: with an admin token, /_sandbox/* wants it in X-Sandbox-Admin-Token (the
    client sends it), from loopback too; a wrong or missing token gets 403 and changes nothing.
    The token never shows in the public config."""
    server, without = start(admin_token=ADMIN_TOKEN)
    with pytest.raises(requests.HTTPError) as info:
        without.configure(latency_ms=5)
    assert info.value.response.status_code == 403
    wrong = SandboxClient(server.base_url, secret=SECRET, admin_token="not-it")
    with pytest.raises(requests.HTTPError):
        wrong.reset()
    assert server.config.latency_ms == 0.0
    admin = SandboxClient(server.base_url, secret=SECRET, admin_token=ADMIN_TOKEN)
    assert admin.configure(latency_ms=5)["changed"] == ["latency_ms"]
    stats = admin.stats()
    assert ADMIN_TOKEN not in json.dumps(stats) and "admin_token" not in stats["config"]
    address = outward_address()
    if address is not None:
        remote = SandboxClient(f"http://{address}:{server.base_url.rsplit(':', 1)[1]}", admin_token=ADMIN_TOKEN)
        with pytest.raises(requests.ConnectionError):   # bound to loopback: not even reachable
            remote.stats()
