"""Issue 25 item 9: the vendor-webhook receiver, with its default settings, keeps answering signed
requests while unauthenticated clients trickle bytes at it.

The audit: 1,000 trickling connections (each sending a byte now and then, never silent for
WEBHOOK_CLIENT_TIMEOUT_S) held every connection WEBHOOK_CONNECTION_LIMIT allows, and a signed
request waited 18 s in the listen backlog. These tests run the real server (worker.webhooks.server)
at the defaults of `Settings` and assert correctness, never a speed: the signed event is answered
and recorded while the trickling goes on, and a trickled request is cut at its deadline.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from tests.webhooks.test_webhook_limits import SECRET, connect, headers, read_response, running_receiver
from worker.db import make_engine
from worker.settings import WEBHOOK_CONNECTION_LIMIT, Settings
from worker.signing import sign_body
from worker.webhooks import WebhookEvent
from worker.webhooks.server import CLEANUP_INTERVAL_S, ReceiverLimits

TRICKLERS = WEBHOOK_CONNECTION_LIMIT + 50   # the default limit, and some past it
TRICKLE_EVERY_S = 1.0                       # well under WEBHOOK_CLIENT_TIMEOUT_S: never silent long enough
ANSWERED_WITHIN_S = 30.0                    # a generous deadline: answered at all, not how fast
TRICKLE_HEAD = b"POST /webhooks/awal HTTP/1.1\r\nHost: x\r\nX-Pad: "


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors() -> Iterator[None]:
    """Both ends of every trickling connection live in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * TRICKLERS + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {wanted}: raise it (ulimit -Hn) to run these tests")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Tricklers:
    """`count` connections that each start a request and then send one more header byte every
    TRICKLE_EVERY_S, for as long as the test runs (a connection the server closes is left closed)."""

    def __init__(self, host: str, port: int, count: int) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((host, int(port)))
            self.socks.append(sock)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, name="tricklers", daemon=True)

    def _trickle(self) -> None:
        first = True
        while not self.stop.is_set():
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.send(TRICKLE_HEAD if first else b"a")
            first = False
            self.stop.wait(TRICKLE_EVERY_S)

    def __enter__(self) -> "Tricklers":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


def signed_status_event() -> bytes:
    at = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc).isoformat()
    return json.dumps({"event": "message.status.updated", "timestamp": at,
                       "data": {"message_id": "wamid.trickle", "status": "delivered", "timestamp": at}}).encode()


def recorded_events(tmp_path: Any) -> list[str]:
    engine = make_engine(f"sqlite:///{tmp_path}/limits.db")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(WebhookEvent.vendor_message_id)).scalars())
    finally:
        engine.dispose()


def test_item9_a_signed_request_is_answered_and_recorded_while_the_default_connection_limit_is_trickled_full(
        tmp_path: Any) -> None:
    # Given: the receiver with the limits of a default configuration
    defaults = ReceiverLimits.from_settings(Settings.from_env({}))
    assert defaults.connection_limit == WEBHOOK_CONNECTION_LIMIT
    with running_receiver(tmp_path, defaults) as (host, port, thread):
        # ...and more unauthenticated clients than it holds, trickling header bytes and never done
        with Tricklers(host, port, TRICKLERS):
            time.sleep(3 * TRICKLE_EVERY_S)   # every trickler connected and has sent its first bytes
            # When: the vendor POSTs a signed event
            body = signed_status_event()
            with socket.create_connection((host, port), timeout=ANSWERED_WITHIN_S) as sock:
                sock.sendall(headers(len(body), signature=sign_body(secret=SECRET.encode(), body=body)) + body)
                status, data = read_response(sock)
            # Then: it is answered 200 while the trickling goes on...
            assert status == 200, data[:300]
            assert thread.is_alive()
    # ...and the event is recorded
    assert recorded_events(tmp_path) == ["wamid.trickle"]


def test_item9_a_request_trickled_past_its_deadline_is_closed(tmp_path: Any) -> None:
    # Given: a receiver whose request deadline is short, and a client far from silent
    limits = ReceiverLimits(max_body_bytes=64 * 1024, connection_limit=100, client_timeout_s=10, request_deadline_s=1.0)
    with running_receiver(tmp_path, limits) as (host, port, _), connect(host, port) as sock:
        sock.sendall(TRICKLE_HEAD)
        sock.settimeout(0.2)
        started = time.monotonic()
        closed = False
        # When: it keeps sending a header byte every 0.2 s (never silent for the 10 s client timeout)
        while time.monotonic() - started < 10 + 2 * CLEANUP_INTERVAL_S:
            try:
                sock.send(b"a")
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        # Then: the server closed it before the client timeout could have: the request deadline did
        assert closed, "a trickled request was held past its deadline"


def test_item9_the_request_deadline_comes_from_the_settings() -> None:
    settings = Settings.from_env({"WEBHOOK_REQUEST_DEADLINE_S": "4.5"})
    assert ReceiverLimits.from_settings(settings).request_deadline_s == 4.5
