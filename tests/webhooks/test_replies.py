"""Issue 12 items 1-4: every vendor reply is classified and recorded, on SQLite and Postgres.

The vendor is a stub transport (a requests adapter that answers with scripted raw bytes), so the
whole send path runs for replies a real vendor stand-in cannot be made to give: wrong JSON types,
huge strings, HTML, empty and undecodable bodies, absurd headers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Iterator

import pytest
import requests
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import BaseAdapter
from requests.utils import get_encoding_from_headers

from tests.conftest import make_runtime, stack_env
from worker.errors import (
    AmbiguousError,
    AuthenticationFailed,
    ConfigurationFailure,
    PermanentError,
    RateLimited,
    ServerError,
    TransientError,
    TransportConfigError,
)
from worker.fit import CUT_MARKER, fit
from worker.models import Attempt, Base, Campaign, Message
from worker.ratelimit import build_rate_limiter
from worker.sending.client import AwalClient, SendResult, classify_response, classify_transport_error
from worker.sending.send import Outcome, send_deps, send_message

VENDOR = "http://vendor.test"
BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
_phones = iter(range(10_000_000, 99_999_999))


class ScriptedVendor(BaseAdapter):
    """A requests transport answering every request with `reply` (status, body bytes, headers),
    or raising `error`: the vendor's side of the wire, byte for byte."""

    def __init__(self) -> None:
        super().__init__()
        self.reply: tuple[int, bytes, dict[str, str]] = (200, b"", {})
        self.error: Exception | None = None
        self.requests = 0

    def send(self, request, **kwargs) -> requests.Response:  # noqa: ANN001, ANN003
        self.requests += 1
        if self.error is not None:
            raise self.error
        return build_response(*self.reply, request=request)

    def close(self) -> None:
        pass


def build_response(status: int, body: bytes, headers: dict[str, str], request=None) -> requests.Response:  # noqa: ANN001
    """What requests' HTTPAdapter.build_response makes of a raw reply."""
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers.update(headers)
    response.encoding = get_encoding_from_headers(response.headers)
    response.request = request
    response.url = request.url if request is not None else VENDOR
    return response


@dataclasses.dataclass
class Stack:
    runtime: object
    vendor: ScriptedVendor
    deps: object

    def fresh_deps(self):  # noqa: ANN201
        """Send deps with a fresh in-memory limiter: no 429 block left by the previous example."""
        return dataclasses.replace(self.deps, limiter=build_rate_limiter(self.runtime.settings))


@pytest.fixture()
def stack(empty_database: str) -> Iterator[Stack]:
    database_url = empty_database
    rt = make_runtime(stack_env(
        database_url=database_url, sandbox_url=VENDOR, SEND_RETRY_ATTEMPTS="2", SEND_RETRY_MAX_WAIT_S="0.001",
        AWAL_RATE_LIMIT="100000/s", AWAL_RATE_BURST="10000", AUTO_PAUSE_CONSECUTIVE_UNKNOWN="3",
    ))
    vendor = ScriptedVendor()
    s = rt.settings
    client = AwalClient(base_url=s.awal_base_url, client_id=s.awal_client_id, domain=s.awal_domain,
                        hmac_secret=b"secret", connect_timeout_s=1, read_timeout_s=1, retry_attempts=s.send_retry_attempts,
                        retry_max_wait_s=s.send_retry_max_wait_s, transport=vendor)
    deps = dataclasses.replace(send_deps(rt), client=client, sleep=lambda _s: None)
    yield Stack(rt, vendor, deps)
    client.close()
    rt.close()


def queued(rt, *, campaign: bool = True, campaign_id: int | None = None) -> tuple[int | None, int]:  # noqa: ANN001
    """A queued message (of a new running campaign, of `campaign_id`, or ad-hoc): (campaign id, id)."""
    with rt.session_factory.begin() as s:
        if campaign and campaign_id is None:
            camp = Campaign(name="c", phone_number_id="123456", template={"body_text": "x", "buttons": BUTTONS},
                            status="running")
            s.add(camp)
            s.flush()
            campaign_id = camp.id
        msg = Message(campaign_id=campaign_id, phone_number_id="123456", phone=f"9665{next(_phones)}",
                      content={"body_text": "x", "buttons": BUTTONS}, status="queued")
        s.add(msg)
        s.flush()
        return campaign_id, msg.id


def wipe(rt) -> None:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(table.delete())


# --- Strategies: what a vendor (or whatever answers in its place) could send back ---------------
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
long_strings = st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "🎉", "\x00", "\ud800", "<"]),
                         st.sampled_from([31, 32, 33, 41, 64, 65, 101, 124, 201, 1001, 20_000]))
field = json_values | long_strings
vendor_shaped = st.fixed_dictionaries({}, optional={
    "status": st.booleans() | field,
    "message": st.fixed_dictionaries({}, optional={
        "id": st.integers() | st.just(2**64) | field, "messageId": field, "status": field}) | field,
    "error": field, "request_id": field, "details": field,
})


def encode(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.builds(encode, vendor_shaped, st.booleans()),
    st.builds(encode, json_values, st.booleans()),
    st.sampled_from([b"", b"<html><body><h1>502 Bad Gateway</h1></body></html>", b"OK", b"null", b"{", b"\xff\xfe\x00"]),
    st.binary(max_size=48),
)
statuses = st.sampled_from([200, 200, 200, 401, 400, 404, 409, 429, 500, 502, 503]) | st.integers(100, 599)
headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/html; charset=iso-8859-1", "application/json; charset=utf-8"]),
    "Retry-After": st.sampled_from(["1", "0", "-5", "inf", "nan", "1e309", "abc", "99999999999", ""]),
    "X-RateLimit-Reset": st.sampled_from(["1704128400", "inf", "nan", "1e400", "x", str(int(time.time()) + 30)]),
    "X-RateLimit-Remaining": st.sampled_from(["0", "5", "-1", "inf", "nan", "1e400", "x"]),
    "X-RateLimit-Limit": st.sampled_from(["1000", "inf", "nan", "x"]),
})


def accepted_message_id(status: int, body: bytes) -> str | None:
    """The test's own reading of the contract: the messageId of an accepted 200, else None."""
    if status != 200:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    message = parsed.get("message") if isinstance(parsed, dict) and parsed.get("status") is True else None
    mid = message.get("messageId") if isinstance(message, dict) else None
    if mid is None or mid == "":
        return None
    return mid if isinstance(mid, str) else json.dumps(mid, ensure_ascii=False, separators=(",", ":"))


FAMILIES = (TransientError, PermanentError, AmbiguousError)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(status=statuses, body=bodies, extra=headers)
def test_classify_response_answers_every_reply_with_exactly_one_class(status: int, body: bytes, extra: dict) -> None:
    """Issue 12 item 1: any status x any body x any headers gives a SendResult or exactly one error
    family, chosen by the status code; never TypeError or any other exception."""
    try:
        result = classify_response(build_response(status, body, extra))
    except FAMILIES as error:
        assert sum(isinstance(error, family) for family in FAMILIES) == 1
        assert isinstance(error.message, str) and isinstance(error.code, str)
        assert error.request_id is None or isinstance(error.request_id, str)
        expected = (RateLimited if status == 429 else AuthenticationFailed if status == 401
                    else ServerError if status >= 500 else PermanentError if status != 200 else (PermanentError, AmbiguousError))
        assert isinstance(error, expected)
        if isinstance(error, RateLimited):
            assert 0 <= error.retry_after <= 86_400
        assert accepted_message_id(status, body) is None
        return
    assert isinstance(result, SendResult) and status == 200
    assert result.message_id == accepted_message_id(status, body)
    assert result.vendor_status is None or isinstance(result.vendor_status, str)
    assert result.vendor_id is None or 0 <= result.vendor_id < 2**63


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(status=statuses, body=bodies, extra=headers)
def test_the_send_path_ends_every_reply_in_the_state_its_http_status_means(stack: Stack, status: int, body: bytes,
                                                                            extra: dict) -> None:
    """Issue 12 items 1 and 2: the whole send path (client, classification, store, real database)
    over generated replies never raises, and the row ends where the HTTP status says: 200 accepted
    -> sent with its messageId; clear 4xx -> failed; 401 -> pending, campaign paused; 5xx -> queued
    for retry; 429 -> queued and the block shared through the limiter; 200 unreadable -> unknown."""
    rt = stack.runtime
    wipe(rt)
    campaign_id, mid = queued(rt)
    stack.vendor.reply, stack.vendor.requests = (status, body, extra), 0
    deps = stack.fresh_deps()
    sent_at = time.time()

    outcome = send_message(mid, deps)

    with rt.session_factory() as s:
        msg, camp = s.get(Message, mid), s.get(Campaign, campaign_id)
        attempts = s.scalar(sa.select(sa.func.count()).select_from(Attempt).where(Attempt.message_id == mid))
    assert attempts == stack.vendor.requests >= 1   # every HTTP attempt has its row
    message_id = accepted_message_id(status, body)
    if message_id is not None:
        assert (outcome, msg.status) == (Outcome.SENT, "sent")
        assert msg.vendor_message_id == fit(Message.vendor_message_id, message_id)
    elif status == 200:
        assert msg.status in ("failed", "unknown") and outcome in (Outcome.FAILED, Outcome.UNKNOWN)
    elif status == 429:
        assert (outcome, msg.status) == (Outcome.REQUEUED, "queued") and msg.not_before is not None
        with pytest.raises(RateLimited) as info:   # the wait this reply asks of every worker
            classify_response(build_response(status, body, extra))
        if info.value.retry_after >= 1:   # shared through the limiter (a 0 s wait blocks nobody)
            state = deps.limiter.state(deps.scope)
            assert state.blocked_until and state.blocked_until >= sent_at + info.value.retry_after - 1
    elif status == 401:
        assert (outcome, msg.status, camp.status) == (Outcome.PAUSED, "pending", "paused")
        assert "401" in camp.pause_reason
    elif status >= 500:   # DEFERRED: the in-client retry found no rate slot (X-RateLimit-Remaining: 0)
        assert outcome in (Outcome.REQUEUED, Outcome.DEFERRED) and msg.status == "queued" and msg.not_before is not None
    else:   # 4xx, and what the contract does not name (1xx, 2xx other than 200, 3xx): permanent
        assert (outcome, msg.status) == (Outcome.FAILED, "failed") and msg.last_error_code


# --- Item 2: what does not fit a column never erases a send ------------------------------------
def test_fit_cuts_to_the_models_column_length_with_a_visible_marker() -> None:
    """Issue 12 item 2: the length comes from the model; a cut value ends with the marker; NUL and
    lone surrogates (which Postgres text cannot hold) are replaced; a fitting value is untouched."""
    assert fit(Message.vendor_status, "sent") == "sent"
    cut = fit(Message.vendor_status, "s" * 41)
    assert len(cut) == Message.vendor_status.type.length == 32 and cut.endswith(CUT_MARKER)
    assert len(fit(Message.last_request_id, "r" * 124)) == 100
    assert fit(Message.last_error_code, "a\x00b") == "a\ufffdb"
    assert fit(Message.vendor_status, "\ud800") == "?"
    assert fit(Message.vendor_status, None) is None


def test_a_41_char_status_and_a_124_char_request_id_still_end_sent_with_the_message_id(stack: Stack) -> None:
    """Issue 12 item 2: a 503 carrying a 124-character request_id, then a 200 whose status has 41
    characters: the message ends `sent` with its messageId (on Postgres, where VARCHAR(n) is enforced)."""
    rt = stack.runtime
    _, first = queued(rt)
    stack.vendor.reply = (200, encode({"status": True, "message": {"id": 7, "messageId": "wamid.A", "status": "s" * 41}}, True), {})
    assert send_message(first, stack.fresh_deps()) is Outcome.SENT   # one attempt: Postgres's one-statement write

    _, second = queued(rt)
    replies = iter([(503, encode({"error": "busy", "message": "later", "request_id": "r" * 124}, True), {}),
                    (200, encode({"status": True, "message": {"id": 8, "messageId": "wamid.B", "status": "t" * 41}}, True), {})])
    stack.vendor.send = lambda request, **kw: build_response(*next(replies), request=request)   # noqa: ARG005
    assert send_message(second, stack.fresh_deps()) is Outcome.SENT   # retried in the client: a transaction

    with rt.session_factory() as s:
        a, b = s.get(Message, first), s.get(Message, second)
        retry_attempt = s.scalars(sa.select(Attempt).where(Attempt.message_id == second).order_by(Attempt.id)).first()
    assert (a.status, a.vendor_message_id, a.vendor_id) == ("sent", "wamid.A", 7)
    assert (b.status, b.vendor_message_id, b.vendor_id) == ("sent", "wamid.B", 8)
    assert a.vendor_status == "s" * 31 + CUT_MARKER
    assert retry_attempt.request_id == "r" * 99 + CUT_MARKER and retry_attempt.http_status == 503


def test_the_sent_log_line_carries_the_vendor_ids_before_the_write_is_tried(stack: Stack, caplog, monkeypatch) -> None:  # noqa: ANN001
    """Issue 12 item 2: if recording an accepted send fails for any reason, the vendor's ids are
    already in the log line for the send."""
    from worker.sending import outcomes, store

    _, mid = queued(stack.runtime)
    stack.vendor.reply = (200, encode({"status": True, "message": {"id": 99, "messageId": "wamid.LOGGED"}}, True), {})

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise sa.exc.DataError("UPDATE", {}, Exception("value too long"))
    monkeypatch.setattr(store, "record_sent", broken)
    monkeypatch.setattr(outcomes, "record_sent_batch", broken)   # Postgres: the group commit first, then alone
    with caplog.at_level(logging.INFO, logger="buttoncast.send"), pytest.raises(sa.exc.DataError):
        send_message(mid, stack.fresh_deps())

    [line] = [r for r in caplog.records if r.getMessage() == "sent"]
    assert (line.vendor_message_id, line.vendor_id, line.message_id) == ("wamid.LOGGED", 99, mid)


# --- Item 3: TLS, certificate and proxy failures --------------------------------------------
@pytest.mark.parametrize("exc, code", [
    (requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), "tls_error"),
    (requests.exceptions.ProxyError("Unable to connect to proxy"), "proxy_error"),
])
def test_tls_and_proxy_failures_are_configuration_failures_not_ambiguous(exc: Exception, code: str) -> None:
    """Issue 12 item 3: an SSLError or ProxyError (a ConnectionError that never carried the request)
    is a configuration failure, on the same base class as a 401, never `unknown`."""
    error = classify_transport_error(exc)
    assert type(error) is TransportConfigError and error.code == code
    assert isinstance(error, ConfigurationFailure) and isinstance(AuthenticationFailed("x"), ConfigurationFailure)
    assert not error.retryable and not isinstance(error, AmbiguousError)


def test_a_real_failed_tls_handshake_sends_nothing_and_is_a_tls_error() -> None:
    """Issue 12 item 3: https:// to a server that speaks plain HTTP fails the handshake; nothing is
    received by the vendor and the client reports tls_error."""
    from worker.message import ButtonMessage
    from worker.sandbox import SandboxClient, SandboxConfig, SandboxServer

    server = SandboxServer(SandboxConfig())
    base_url = server.start_in_thread()
    client = AwalClient(base_url=base_url.replace("http://", "https://"), client_id="c", domain="d", hmac_secret=b"s",
                        connect_timeout_s=2, read_timeout_s=2, retry_attempts=3, retry_max_wait_s=0.01)
    try:
        with pytest.raises(TransportConfigError) as info:
            client.send(ButtonMessage.build(phone="966500000001", body_text="x", buttons=BUTTONS), "123456")
        assert info.value.code == "tls_error" and "TLS" in info.value.message
        assert SandboxClient(base_url).received(phone="966500000001") == []
    finally:
        client.close()
        server.stop()


def test_a_tls_failure_pauses_the_campaign_and_puts_the_message_back_to_pending(stack: Stack) -> None:
    """Issue 12 item 3: like a 401, a TLS failure pauses the campaign with the reason and the
    message goes back to pending; an ad-hoc message ends failed with code tls_error (nothing was
    sent, safe to retry once fixed)."""
    rt = stack.runtime
    campaign_id, mid = queued(rt)
    _, adhoc = queued(rt, campaign=False)
    stack.vendor.error = requests.exceptions.SSLError("certificate verify failed: unable to get local issuer certificate")

    assert send_message(mid, stack.fresh_deps()) is Outcome.PAUSED
    assert send_message(adhoc, stack.fresh_deps()) is Outcome.FAILED

    with rt.session_factory() as s:
        msg, camp, ad = s.get(Message, mid), s.get(Campaign, campaign_id), s.get(Message, adhoc)
    assert msg.status == "pending" and msg.last_error_code == "tls_error"
    assert camp.status == "paused" and "TLS" in camp.pause_reason and "certificate verify failed" in camp.pause_reason
    assert ad.status == "failed" and ad.last_error_code == "tls_error"


# --- Item 4: unknown counts toward auto-pause ------------------------------------------------
UNREADABLE_200 = (200, b"<html>ok</html>", {})


def test_a_run_of_unknown_outcomes_pauses_the_campaign_with_the_reason(stack: Stack) -> None:
    """Issue 12 item 4: AUTO_PAUSE_CONSECUTIVE_UNKNOWN (3 here) ambiguous outcomes with no send in
    between pause the campaign; the reason says why."""
    rt = stack.runtime
    campaign_id, first = queued(rt)
    ids = [first] + [queued(rt, campaign_id=campaign_id)[1] for _ in range(2)]
    stack.vendor.reply = UNREADABLE_200
    for n, mid in enumerate(ids, 1):
        assert send_message(mid, stack.fresh_deps()) is Outcome.UNKNOWN
        with rt.session_factory() as s:
            camp = s.get(Campaign, campaign_id)
            assert camp.consecutive_unknown == n and camp.status == ("paused" if n == 3 else "running")
    assert "3 ambiguous outcomes" in camp.pause_reason and "unreadable_response" in camp.pause_reason


def test_a_send_resets_the_unknown_streak_in_its_one_write(stack: Stack) -> None:
    """Issue 12 item 4: two unknowns, a sent (one statement on Postgres), two more unknowns: the
    streak restarts, so the campaign keeps running (threshold 3)."""
    rt = stack.runtime
    campaign_id, first = queued(rt)
    ids = [first] + [queued(rt, campaign_id=campaign_id)[1] for _ in range(4)]
    sent = encode({"status": True, "message": {"id": 1, "messageId": "wamid.RESET", "status": "sent"}}, True)
    for mid, reply in zip(ids, [UNREADABLE_200, UNREADABLE_200, (200, sent, {}), UNREADABLE_200, UNREADABLE_200]):
        stack.vendor.reply = reply
        send_message(mid, stack.fresh_deps())
    with rt.session_factory() as s:
        camp = s.get(Campaign, campaign_id)
        statuses = [s.get(Message, m).status for m in ids]
    assert statuses == ["unknown", "unknown", "sent", "unknown", "unknown"]
    assert camp.status == "running" and camp.consecutive_unknown == 2


def test_auto_pause_consecutive_unknown_defaults_to_10_and_refuses_0() -> None:
    """Issue 12 item 4: the setting is parsed and validated in the one settings object."""
    from worker.errors import ConfigError
    from worker.settings import Settings

    assert Settings.from_env({}).auto_pause_consecutive_unknown == 10
    assert Settings.from_env({"AUTO_PAUSE_CONSECUTIVE_UNKNOWN": "4"}).auto_pause_consecutive_unknown == 4
    with pytest.raises(ConfigError):
        Settings.from_env({"AUTO_PAUSE_CONSECUTIVE_UNKNOWN": "0"})
