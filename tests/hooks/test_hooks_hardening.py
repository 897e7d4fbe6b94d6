"""Issue 25, the outbound-hook items: 1 (SSRF: targets checked at `hooks add` and again on the address
each delivery connects to; the receiver's answer never stored), 2 (one row's outcome that cannot be
written never holds the others), 5 (a whole-POST deadline; one slow endpoint never delays another)
and from 10 (the reference verifier raises only its own error; `hooks redeliver` starts the attempt
count over; plain http:// and the number of endpoints are limited)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env, wait_until
from tests.hooks_receiver import HookReceiver
from worker.hooks import delivery, outbox, service
from worker.hooks.delivery import Claimed, Outcome, Poster, deliver_due
from worker.hooks.events import HookEvent
from worker.hooks.models import HookEndpoint, HookOutbox
from worker.hooks.signing import signature_header
from worker.hooks.verify import SignatureError, verify
from worker.models import utcnow
from worker.settings import Secret

KEY = "h" * 40
BASE = {"HOOKS_SIGNING_KEY": KEY, "HOOKS_BACKOFF_BASE_S": "10", "HOOKS_BACKOFF_MAX_S": "3600", "HOOKS_TIMEOUT_S": "2",
        "SEND_READ_TIMEOUT_S": "1", "SEND_RETRY_MAX_WAIT_S": "0.05", "AWAL_RATE_LIMIT": "1000/s",
        "AWAL_RATE_BURST": "50"}
#: the test receivers listen on loopback: the operator's opt-in for a receiver on the same host
LOCAL = {**BASE, "HOOKS_ALLOWED_HOSTS": "127.0.0.1"}
PUBLIC_IP = "93.184.216.34"
_phones = iter(range(40_000_000, 49_999_999))


def runtime(database_url: str, sandbox_url: str = "http://127.0.0.1:9", **env: str) -> Any:
    rt = make_runtime(stack_env(database_url=database_url, sandbox_url=sandbox_url, **env))
    outbox.CACHE.invalidate()
    return rt


@pytest.fixture()
def receiver() -> Iterator[tuple[HookReceiver, str]]:
    r = HookReceiver()
    base = r.start()
    yield r, base
    for gate in r.gate.values():
        gate.set()
    r.stop()


class FakeDNS:
    """socket.getaddrinfo answering `names` from a table the test changes; other names resolve as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: dict[str, list[str]] = {}
        self.asked: list[str] = []
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name not in self.names:
                return real(host, port, *args, **kwargs)
            self.asked.append(name)
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (ip, int(port or 0), 0, 0) if ":" in ip else (ip, int(port or 0))) for ip in self.names[name]]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def add(rt: Any, url: str, events: str = "contact.opted_out") -> tuple[int, str]:
    with rt.session_factory.begin() as s:
        endpoint, secret = service.add_endpoint(s, url, events, settings=rt.settings)
    return endpoint.id, secret.reveal()


def refused_at_add(rt: Any, url: str) -> str:
    with pytest.raises(service.HookInvalid) as err, rt.session_factory.begin() as s:
        service.add_endpoint(s, url, "message.sent", settings=rt.settings)
    [problem] = err.value.problems
    assert problem.field == "url", err.value.problems
    return problem.problem


def send_one(rt: Any) -> int:
    """One event (contact.opted_out) for every endpoint, written as its producer writes it; how many rows."""
    with rt.session_factory.begin() as s:
        return outbox.emit(s, HookEvent.CONTACT_OPTED_OUT, phone=f"9665{next(_phones)}",
                           data={"source": "operator", "reason": "test"})


def rows(rt: Any) -> list[HookOutbox]:
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(HookOutbox).order_by(HookOutbox.id)))


def endpoints(rt: Any) -> int:
    with rt.session_factory() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(HookEndpoint))


# --- item 1: SSRF -------------------------------------------------------------------------------

LOOPBACK_AND_FRIENDS = [
    "https://127.0.0.1/h", "https://127.0.0.1./h", "https://[::1]/h", "https://[::ffff:127.0.0.1]/h",
    "https://[::ffff:7f00:1]/h", "https://2130706433/h", "https://0x7f000001/h", "https://0177.0.0.1/h",
    "https://127.1/h", "https://0x7f.1/h", "https://017700000001/h", "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/", "https://10.0.0.5/h", "https://172.16.0.1/h", "https://192.168.1.1/h",
    "https://100.64.0.1/h", "https://224.0.0.1/h", "https://[ff02::1]/h", "https://0.0.0.0/h", "https://[::]/h",
    "https://[fe80::1]/h", "https://[fe80::1%25eth0]/h", "https://[fc00::1]/h", "https://240.0.0.1/h",
    "https://255.255.255.255/h", "https://[64:ff9b::a9fe:a9fe]/h", "https://[2002:7f00:1::]/h", "https://localhost/h",
    "https://08.8.8.8/h", "https://0x100000000/h",
]


@pytest.mark.parametrize("url", LOOPBACK_AND_FRIENDS)
def test_item1_loopback_private_link_local_and_encoded_targets_are_refused_at_add(sqlite_url: str, url: str) -> None:
    rt = runtime(sqlite_url, **BASE)
    try:
        problem = refused_at_add(rt, url)
        assert any(words in problem for words in ("address", "dotted quad")), problem
        assert endpoints(rt) == 0
    finally:
        rt.close()


def test_item1_names_resolving_to_non_public_addresses_are_refused_at_add(sqlite_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    dns = FakeDNS(monkeypatch)
    dns.names = {"metadata.google.internal": ["169.254.169.254"], "mixed.example.com": [PUBLIC_IP, "10.1.2.3"],
                 "six.example.com": ["::1"], "crm.example.com": [PUBLIC_IP, "2606:2800:220:1::1"]}
    rt = runtime(sqlite_url, **BASE)
    try:
        metadata = refused_at_add(rt, "https://metadata.google.internal/computeMetadata/v1/")
        assert "169.254.169.254, a link-local address" in metadata
        assert "10.1.2.3, a private address" in refused_at_add(rt, "https://mixed.example.com/h")   # any address counts
        assert "::1, a loopback address" in refused_at_add(rt, "https://six.example.com/h")
        assert endpoints(rt) == 0
        add(rt, "https://crm.example.com/h")
        assert endpoints(rt) == 1
    finally:
        rt.close()


def test_item1_the_cli_exits_2_and_the_api_answers_422_naming_url(sqlite_url: str) -> None:
    from fastapi.testclient import TestClient

    from worker.access.keys import create_key
    from worker.asgi import create_app
    from worker.runtime import install_runtime

    env = stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9", **BASE)
    cli = subprocess.run([sys.executable, "-m", "worker.cli", "hooks", "add", "https://0x7f000001/h", "--events",
                          "message.sent"], env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "invalid: url: writes an IPv4 address as '0x7f000001'" in cli.stderr, cli.stderr
    assert "127.0.0.1" in cli.stderr

    rt = runtime(sqlite_url, **BASE)
    install_runtime(rt)
    try:
        _, key = create_key(rt, name="hooks-admin", scope="admin", actor="test")
        with TestClient(create_app()) as client:
            for url in ("https://[::1]/h", "https://169.254.169.254/latest/meta-data/", "http://crm.example.com/h"):
                answer = client.post("/v1/hooks", headers={"Authorization": f"Bearer {key}"},
                                     json={"url": url, "events": ["message.sent"]})
                assert answer.status_code == 422, answer.text
                assert [e["field"] for e in answer.json()["errors"]] == ["url"], answer.text
        assert endpoints(rt) == 0
    finally:
        rt.close()


def test_item1_rebinding_is_refused_at_delivery(sqlite_url: str, receiver: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a name that resolved to a public address when it was added, when it resolves to loopback
    (or to a public and a loopback address) at delivery, nothing is sent and the row says why."""
    r, base = receiver
    port = base.rsplit(":", 1)[1]
    dns = FakeDNS(monkeypatch)
    dns.names = {"hooks.example.com": [PUBLIC_IP], "both.example.com": [PUBLIC_IP]}
    rt = runtime(sqlite_url, **BASE, HOOKS_ALLOW_HTTP="true")
    try:
        add(rt, f"http://hooks.example.com:{port}/rebound")
        add(rt, f"http://both.example.com:{port}/both")
        send_one(rt)
        dns.names = {"hooks.example.com": ["127.0.0.1"], "both.example.com": [PUBLIC_IP, "127.0.0.1"]}
        report = deliver_due(rt.session_factory, rt.settings)
        assert report.retrying == 2 and r.started == []
        assert [(x.last_http_status, x.last_error) for x in rows(rt)] == [
            (None, "refused: resolves to a loopback address")] * 2
        assert "hooks.example.com" in dns.asked and "both.example.com" in dns.asked
    finally:
        rt.close()


def test_item1_an_allowed_host_is_reached_on_the_checked_address_with_its_own_host_header(
        sqlite_url: str, receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    r, base = receiver
    port = base.rsplit(":", 1)[1]
    FakeDNS(monkeypatch).names = {"receiver.internal": ["127.0.0.1"]}
    rt = runtime(sqlite_url, **BASE, HOOKS_ALLOWED_HOSTS="receiver.internal")
    try:
        _, r.secrets["/in"] = add(rt, f"http://receiver.internal:{port}/in")   # allowed: http too
        send_one(rt)
        assert deliver_due(rt.session_factory, rt.settings).delivered == 1
        [got] = r.at("/in")
        assert got.headers["Host"] == f"receiver.internal:{port}" and got.refused is None
    finally:
        rt.close()


def test_item1_an_endpoint_stored_before_the_rules_is_refused_at_delivery(sqlite_url: str, receiver: Any) -> None:
    """A loopback endpoint written before this release (or straight into the table) is not POSTed to."""
    r, base = receiver
    rt = runtime(sqlite_url, **BASE, HOOKS_ALLOW_HTTP="true")
    try:
        with rt.session_factory.begin() as s:
            s.add(HookEndpoint(id=1, url=base + "/old", key_salt="0" * 32, created_at=utcnow()))
            s.execute(sa.text("INSERT INTO hook_subscriptions (endpoint_id, event_type) "
                              "VALUES (1, 'contact.opted_out')"))
        outbox.CACHE.invalidate()
        send_one(rt)
        assert deliver_due(rt.session_factory, rt.settings).retrying == 1
        assert r.started == [] and rows(rt)[0].last_error == "refused: points to a loopback address"
    finally:
        rt.close()


def test_item1_receiver_body_is_never_stored(sqlite_url: str, receiver: Any) -> None:
    r, base = receiver
    rt = runtime(sqlite_url, **LOCAL)
    try:
        endpoint_id, r.secrets["/leaky"] = add(rt, base + "/leaky")
        r.script["/leaky"] = [403]
        r.answer_body["/leaky"] = b"forbidden: db_password=hunter2\x00"
        send_one(rt)
        assert deliver_due(rt.session_factory, rt.settings).retrying == 1
        [row] = rows(rt)
        assert (row.last_http_status, row.last_error) == (403, "HTTP 403 from the receiver")
        with rt.session_factory() as s:
            [view] = service.list_endpoints(s)
            dump = json.dumps([[str(v) for v in x] for x in s.execute(sa.text("SELECT * FROM hook_outbox"))])
        assert view.last_error == "HTTP 403 from the receiver" and "hunter2" not in dump

        # a row written by an older release, with the body in it, is shown without it
        with rt.session_factory.begin() as s:
            s.execute(sa.update(HookOutbox).values(last_error="HTTP 403: forbidden: db_password=hunter2"))
        with rt.session_factory() as s:
            assert service.list_endpoints(s)[0].last_error == "HTTP 403 from the receiver"
    finally:
        rt.close()


# --- item 2: one row's outcome never holds the batch ----------------------------------------------

class NulPoster(Poster):
    """Answers for /bad with an error text holding a NUL byte (Postgres text cannot store one)."""

    def post(self, item: Claimed) -> Outcome:
        if item.url.endswith("/bad"):
            return Outcome(False, 500, "HTTP 500 from the receiver: \x00 evil")
        return super().post(item)


def test_item2_a_nul_byte_error_does_not_hold_the_batch(clean_postgres: str, receiver: Any) -> None:
    r, base = receiver
    rt = runtime(clean_postgres, **LOCAL)
    try:
        add(rt, base + "/bad")                       # first: its row comes before the healthy one
        _, r.secrets["/good"] = add(rt, base + "/good")
        send_one(rt)
        poster = NulPoster(rt.settings)
        try:
            report = deliver_due(rt.session_factory, rt.settings, poster)
        finally:
            poster.close()
        assert (report.delivered, report.retrying, report.unrecorded) == (1, 1, 0)
        bad, good = rows(rt)
        assert good.status == "delivered" and len(r.at("/good")) == 1
        assert bad.status == "pending" and bad.claim_token is None and "\x00" not in bad.last_error
        assert bad.last_error.startswith("HTTP 500 from the receiver")
        assert deliver_due(rt.session_factory, rt.settings).claimed == 0   # nothing left claimed or due again
        assert len(r.at("/good")) == 1
    finally:
        rt.close()


def test_item2_a_row_whose_outcome_cannot_be_written_does_not_stop_the_others(
        empty_database: str, receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    r, base = receiver
    rt = runtime(empty_database, **LOCAL)
    try:
        paths = ["/a", "/b", "/c"]
        ids = {}
        for path in paths:
            ids[path], r.secrets[path] = add(rt, base + path)
        send_one(rt)
        real = delivery.record_outcome

        def failing(session: Any, item: Claimed, *args: Any, **kwargs: Any) -> Any:
            if item.endpoint_id == ids["/a"]:
                raise sa.exc.DataError("UPDATE hook_outbox", {}, Exception("simulated: the database refused the value"))
            return real(session, item, *args, **kwargs)

        monkeypatch.setattr(delivery, "record_outcome", failing)
        report = deliver_due(rt.session_factory, rt.settings)
        assert (report.delivered, report.unrecorded) == (2, 1)
        assert [x.status for x in rows(rt)] == ["pending", "delivered", "delivered"]
        assert rows(rt)[0].claim_token is not None   # left to its lease, then tried again
    finally:
        rt.close()


# --- item 5: a whole-POST deadline; one slow endpoint never delays another -----------------------

@pytest.mark.parametrize("trickled", ["status line", "body"])
def test_item5_a_trickling_receiver_is_cut_at_the_deadline(sqlite_url: str, receiver: Any, trickled: str) -> None:
    """A receiver writing its answer a byte every 0.2 s (a minute in all) never lets a read wait a
    whole second, so a per-read timeout of 1 s never fires; the whole-POST deadline of 1 s does."""
    r, base = receiver
    rt = runtime(sqlite_url, **{**LOCAL, "HOOKS_TIMEOUT_S": "1"})
    try:
        _, r.secrets["/trickle"] = add(rt, base + "/trickle")
        r.trickle_s["/trickle"] = 0.2
        r.answer_body["/trickle"] = b"x" * 300
        r.trickle_head = trickled == "status line"   # else the status line and headers at once, then the body
        send_one(rt)
        report = deliver_due(rt.session_factory, rt.settings)
        assert report.retrying == 1 and report.delivered == 0
        [row] = rows(rt)
        assert (row.status, row.last_http_status, row.last_error) == ("pending", None, "timed out after 1.0 s")
        # the connection was cut: the receiver's writes failed before its answer was complete
        got = wait_until(lambda: r.at("/trickle"), 60, what="the receiver noticing the cut")
        assert got[0].complete is False
    finally:
        rt.close()


def test_item5_a_slow_endpoint_does_not_delay_another_endpoint(sqlite_url: str, receiver: Any) -> None:
    """Given /slow holds every POST until the test lets go and /fast answers at once: while /slow
    holds its first event, /fast gets both its events, the second from a later tick."""
    r, base = receiver
    rt = runtime(sqlite_url, **{**LOCAL, "HOOKS_TIMEOUT_S": "60"})
    poster = Poster(rt.settings)
    try:
        _, r.secrets["/slow"] = add(rt, base + "/slow")    # first: its rows come before /fast's
        fast_id, r.secrets["/fast"] = add(rt, base + "/fast")
        r.gate["/slow"] = threading.Event()
        send_one(rt)

        def fast_delivered() -> int:
            with rt.session_factory() as s:
                return s.scalar(sa.select(sa.func.count()).where(HookOutbox.endpoint_id == fast_id,
                                                                HookOutbox.status == "delivered"))

        first_tick = threading.Thread(target=deliver_due, args=(rt.session_factory, rt.settings, poster))
        first_tick.start()
        wait_until(lambda: fast_delivered() == 1, 30, what="/fast's first event while /slow holds its own")
        assert r.started.count("/slow") == 1 and not r.at("/slow")   # /slow still holds it

        send_one(rt)                                   # a later event, a later tick
        deliver_due(rt.session_factory, rt.settings, poster, wait=False)
        wait_until(lambda: fast_delivered() == 2, 30, what="/fast's second event while /slow holds the first")
        assert not r.at("/slow") and first_tick.is_alive()

        r.gate["/slow"].set()
        first_tick.join(60)
        wait_until(lambda: all(x.status == "delivered" for x in rows(rt)), 60, what="/slow's events")
        assert [x.answered for x in r.at("/fast")] == [200, 200]
    finally:
        r.gate["/slow"].set()
        poster.close(60)
        rt.close()


def test_item5_a_tick_never_waits_for_a_receiver(sqlite_url: str, receiver: Any) -> None:
    """The beat task's tick starts lanes and returns while the POST is still held (no worker thread waits)."""
    r, base = receiver
    rt = runtime(sqlite_url, **{**LOCAL, "HOOKS_TIMEOUT_S": "60"})
    poster = Poster(rt.settings)
    try:
        _, r.secrets["/held"] = add(rt, base + "/held")
        r.gate["/held"] = threading.Event()
        send_one(rt)
        assert deliver_due(rt.session_factory, rt.settings, poster, wait=False).claimed == 1
        wait_until(lambda: r.started == ["/held"], 30, what="the POST reaching the receiver")
        assert rows(rt)[0].status == "pending" and not r.at("/held")
        r.gate["/held"].set()
        wait_until(lambda: rows(rt)[0].status == "delivered", 30, what="the delivery")
    finally:
        r.gate["/held"].set()
        poster.close(60)
        rt.close()


# --- item 10: the verifier, redeliver, http:// and the number of endpoints -------------------------

def _signed(body: bytes, t: int | None = None, secret: str = "whsec_x") -> str:
    return signature_header(Secret(secret), body, int(time.time()) if t is None else t)


ODD_INPUTS = {
    "payload is None": lambda: verify(None, _signed(b"{}"), "whsec_x"),
    "payload is an int": lambda: verify(42, _signed(b"{}"), "whsec_x"),
    "header is an int": lambda: verify(b"{}", 12345, "whsec_x"),
    "header is bytes, not ASCII": lambda: verify(b"{}", "t=1,v1=é".encode("utf-8"), "whsec_x"),
    "header is a list": lambda: verify(b"{}", ["t=1"], "whsec_x"),
    "t is 1e400": lambda: verify(b"{}", "t=1e400,v1=" + "0" * 64, "whsec_x"),
    "t has 5000 digits": lambda: verify(b"{}", "t=" + "9" * 5000 + ",v1=" + "0" * 64, "whsec_x"),
    "t is 10**300 within the digit limit": lambda: verify(b"{}", "t=1" + "0" * 300 + ",v1=" + "0" * 64, "whsec_x"),
    "t is negative": lambda: verify(b"{}", "t=-5,v1=" + "0" * 64, "whsec_x"),
    "t has underscores": lambda: verify(b"{}", "t=1_733_164_201,v1=" + "0" * 64, "whsec_x"),
    "v1 is not ASCII": lambda: verify(b"{}", f"t={int(time.time())},v1=" + "é" * 64, "whsec_x"),
    "v1 is not hex": lambda: verify(b"{}", f"t={int(time.time())},v1=zz", "whsec_x"),
    "secret is None": lambda: verify(b"{}", _signed(b"{}"), None),
    "secret is bytes": lambda: verify(b"{}", _signed(b"{}"), b"whsec_x"),
    "tolerance is text": lambda: verify(b"{}", _signed(b"{}"), "whsec_x", tolerance_s="abc"),
    "now is NaN": lambda: verify(b"{}", _signed(b"{}"), "whsec_x", now=float("nan")),
    "body nests 100,000 deep": lambda: verify(b"[" * 100_000, _signed(b"[" * 100_000), "whsec_x"),
    "body has a 5000-digit number": lambda: verify(b"[" + b"9" * 5000 + b"]", _signed(b"[" + b"9" * 5000 + b"]"),
                                                   "whsec_x"),
    "body is a JSON list": lambda: verify(b"[]", _signed(b"[]"), "whsec_x"),
    "body is not UTF-8": lambda: verify(b"\xff", _signed(b"\xff"), "whsec_x"),
    "header is huge": lambda: verify(b"{}", "v1=" + "a" * 100_000, "whsec_x"),
}


@pytest.mark.parametrize("case", list(ODD_INPUTS))
def test_item10_the_reference_verifier_raises_only_its_own_error_for_odd_input(case: str) -> None:
    with pytest.raises(SignatureError):
        ODD_INPUTS[case]()


def test_item10_the_reference_verifier_still_accepts_a_text_body_and_a_bytes_header() -> None:
    body = '{"id":"evt_1","note":"مرحبا"}'
    header = _signed(body.encode("utf-8"))
    assert verify(body, header, "whsec_x")["id"] == "evt_1"
    assert verify(body.encode("utf-8"), header.encode("ascii"), "whsec_x")["note"] == "مرحبا"


def test_item10_redeliver_starts_the_attempt_count_over(empty_database: str, receiver: Any) -> None:
    """A dead letter after many attempts, redelivered, that fails once more, is retried after
    HOOKS_BACKOFF_BASE_S (10 s), not after the 1 h cap its old attempt count would give."""
    r, base = receiver
    rt = runtime(empty_database, **LOCAL)
    try:
        endpoint_id, r.secrets["/down"] = add(rt, base + "/down")
        send_one(rt)
        with rt.session_factory.begin() as s:
            s.execute(sa.update(HookOutbox).values(status="dead", attempts=14, dead_at=utcnow(),
                                                   last_error="HTTP 503 from the receiver"))
        with rt.session_factory.begin() as s:
            assert service.redeliver(s, endpoint_id=endpoint_id) == 1
        [row] = rows(rt)
        assert (row.status, row.attempts) == ("pending", 0)
        r.script["/down"] = [503]
        assert deliver_due(rt.session_factory, rt.settings).retrying == 1
        [row] = rows(rt)
        assert row.attempts == 1
        assert timedelta(seconds=5) < row.next_attempt_at - row.last_attempt_at <= timedelta(seconds=10)
    finally:
        rt.close()


def test_item10_plain_http_needs_the_operators_opt_in(sqlite_url: str) -> None:
    rt = runtime(sqlite_url, **BASE)
    try:
        assert "must use https://" in refused_at_add(rt, "http://crm.example.com/h")
        add(rt, "https://crm.example.com/h")
    finally:
        rt.close()
    rt = runtime(sqlite_url, **BASE, HOOKS_ALLOW_HTTP="true")
    try:
        add(rt, "http://crm.example.com/h")
        assert "loopback" in refused_at_add(rt, "http://127.0.0.1:8080/h")   # http allowed, loopback still not
        assert endpoints(rt) == 2
    finally:
        rt.close()


def test_item10_the_number_of_endpoints_is_capped(sqlite_url: str) -> None:
    rt = runtime(sqlite_url, **BASE, HOOKS_MAX_ENDPOINTS="2")
    try:
        add(rt, "https://a.example.com/h")
        add(rt, "https://b.example.com/h")
        assert "at most 2 (HOOKS_MAX_ENDPOINTS)" in refused_at_add(rt, "https://c.example.com/h")
        assert endpoints(rt) == 2
    finally:
        rt.close()
