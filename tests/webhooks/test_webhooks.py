"""The webhook receiver: signatures, verification, each event shape, forward-only statuses, replies,
pending matching, malformed bodies, and a burst against the running waitress server.

Every test runs on SQLite and on Postgres (a private database created from `postgres_url`).
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from wsgiref.util import setup_testing_defaults

import pytest
import requests
import sqlalchemy as sa

from worker.db import make_engine, make_session_factory, upgrade
from worker.models import Campaign, Message
from worker.signing import SIGNATURE_HEADER, sign_body
from worker.webhooks import WebhookEvent, create_app, match_pending_events
from worker.webhooks.store import count_events

SECRET = "hook-secret"
T0 = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]


# --- fixtures and helpers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_webhooks_url(postgres_url: str) -> Iterator[str]:
    """A database of our own next to the run's one, so truncating between tests disturbs no one."""
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = postgres_url.rsplit("/", 1)[1] + "_webhooks"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/webhooks.db"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("pg_webhooks_url")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE webhook_events, message_events, attempts, messages, campaigns RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield url


@pytest.fixture
def sessions(db_url: str) -> Iterator[Any]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def app(sessions: Any) -> Any:
    return create_app(session_factory=sessions, webhook_secret=SECRET)


def call(app: Any, body: bytes | dict | list | None = None, *, method: str = "POST", path: str = "/webhooks/awal",
         signature: str | None | bool = True, query: str = "") -> tuple[int, Any]:
    """Call the WSGI app directly; `signature=True` signs the body with SECRET, a str is sent as is."""
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                               "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw)}
    setup_testing_defaults(environ)
    if signature is True:
        environ["HTTP_X_AWAL_SIGNATURE_256"] = sign_body(secret=SECRET.encode(), body=raw)
    elif isinstance(signature, str):
        environ["HTTP_X_AWAL_SIGNATURE_256"] = signature
    seen: dict[str, Any] = {}
    chunks = app(environ, lambda status, headers: seen.update(status=status, headers=headers))
    return int(seen["status"].split()[0]), json.loads(b"".join(chunks))


def status_event(wamid: str, status: str, at: datetime = T0, **extra: Any) -> dict:
    return {"event": "message.status.updated", "timestamp": at.isoformat(),
            "data": {"message_id": wamid, "status": status, "timestamp": at.isoformat().replace("+00:00", "Z"), **extra}}


def reply_event(data: dict, at: datetime = T0) -> dict:
    base = {"message_id": f"wamid.in{random.random()}", "conversation_id": "conv_1", "from": "+966 500 000 01",
            "to": "123456", "timestamp": at.isoformat()}
    return {"event": "message.received", "timestamp": at.isoformat(), "data": {**base, **data}}


def add_message(sessions: Any, wamid: str | None, *, phone: str = "96650000001", sent_at: datetime | None = T0,
                buttons: list[dict] = BUTTONS, campaign: bool = True) -> int:
    with sessions() as session, session.begin():
        campaign_id = None
        if campaign:
            row = Campaign(name="c", phone_number_id="123456", template={})
            session.add(row)
            session.flush()
            campaign_id = row.id
        msg = Message(campaign_id=campaign_id, phone_number_id="123456", phone=phone,
                      content={"body_text": "Hi", "buttons": buttons}, status="sent" if wamid else "pending",
                      vendor_message_id=wamid, sent_at=sent_at if wamid else None)
        session.add(msg)
        session.flush()
        return msg.id


def message(sessions: Any, message_id: int) -> Message:
    with sessions() as session:
        return session.get(Message, message_id)


def events(sessions: Any) -> list[WebhookEvent]:
    with sessions() as session:
        return list(session.scalars(sa.select(WebhookEvent).order_by(WebhookEvent.id)))


# --- signature ----------------------------------------------------------------------------------

def test_signed_delivered_event_is_recorded_and_applied(app: Any, sessions: Any) -> None:
    mid = add_message(sessions, "wamid.A")
    assert call(app, status_event("wamid.A", "delivered")) == (200, {"ok": True, "outcome": "matched"})
    msg = message(sessions, mid)
    assert (msg.delivery_status, msg.delivered_at, msg.read_at) == ("delivered", T0, None)
    [row] = events(sessions)
    assert (row.matched, row.message_id, row.kind, row.status) == (True, mid, "status", "delivered")


@pytest.mark.parametrize("signature", [
    sign_body(secret=b"wrong-secret", body=json.dumps(status_event("wamid.A", "read")).encode()),  # wrong secret
    sign_body(secret=SECRET.encode(), body=json.dumps(status_event("wamid.A", "delivered")).encode()),  # tampered
    None,  # missing header
    "sha256=",  # empty
    "not-a-signature",
], ids=["wrong-secret", "tampered-body", "missing", "empty", "garbage"])
def test_bad_or_missing_signature_is_401_with_no_side_effect(app: Any, sessions: Any, signature: str | None) -> None:
    mid = add_message(sessions, "wamid.A")
    status, doc = call(app, status_event("wamid.A", "read"), signature=signature or False)
    assert status == 401 and doc["error"] in ("invalid_signature", "missing_signature")
    assert events(sessions) == [] and message(sessions, mid).delivery_status is None


def test_unsigned_malformed_body_is_401_not_400(app: Any, sessions: Any) -> None:
    # Given no signature, When the body is garbage, Then we say nothing about its shape
    assert call(app, b"{not json", signature=False)[0] == 401


# --- verification --------------------------------------------------------------------------------

def test_verification_challenge_is_echoed_signed_or_unsigned_without_side_effect(app: Any, sessions: Any) -> None:
    body = {"type": "verification", "challenge": "abc-123"}
    assert call(app, body, signature=False) == (200, {"challenge": "abc-123"})
    assert call(app, body) == (200, {"challenge": "abc-123"})
    assert call(app, method="GET", query="type=verification&challenge=xyz") == (200, {"challenge": "xyz"})
    assert call(app, body, signature="sha256=" + "0" * 64)[0] == 401  # a wrong signature means a wrong secret
    assert events(sessions) == []


# --- status updates -------------------------------------------------------------------------------

def test_read_implies_delivered(app: Any, sessions: Any) -> None:
    mid = add_message(sessions, "wamid.A")
    assert call(app, status_event("wamid.A", "read", T0))[0] == 200
    msg = message(sessions, mid)
    assert (msg.delivery_status, msg.delivered_at, msg.read_at) == ("read", T0, T0)


def test_out_of_order_delivered_after_read_leaves_read_and_keeps_earliest_times(app: Any, sessions: Any) -> None:
    mid = add_message(sessions, "wamid.A")
    call(app, status_event("wamid.A", "read", T0 + timedelta(seconds=30)))
    call(app, status_event("wamid.A", "delivered", T0 + timedelta(seconds=5)))
    call(app, status_event("wamid.A", "sent", T0))
    msg = message(sessions, mid)
    assert msg.delivery_status == "read"
    assert (msg.delivered_at, msg.read_at) == (T0 + timedelta(seconds=5), T0 + timedelta(seconds=30))
    assert len(events(sessions)) == 3


def test_failed_records_reason_but_never_moves_a_delivered_message_back(app: Any, sessions: Any) -> None:
    failing, delivered = add_message(sessions, "wamid.F", phone="1"), add_message(sessions, "wamid.D", phone="2")
    error = {"errors": [{"code": 131026, "title": "Message undeliverable"}]}
    call(app, status_event("wamid.F", "failed", **error))
    call(app, status_event("wamid.D", "delivered"))
    call(app, status_event("wamid.D", "failed", error="late failure"))
    call(app, status_event("wamid.F", "delivered"))  # nothing leaves failed
    f, d = message(sessions, failing), message(sessions, delivered)
    assert (f.delivery_status, f.delivery_error, f.delivered_at) == ("failed", "131026: Message undeliverable", None)
    assert (d.delivery_status, d.delivery_error) == ("delivered", None)


def test_duplicate_event_answers_200_and_is_kept_once(app: Any, sessions: Any) -> None:
    mid = add_message(sessions, "wamid.A")
    first = call(app, status_event("wamid.A", "delivered", T0))
    again = call(app, status_event("wamid.A", "delivered", T0 + timedelta(minutes=1)))  # a re-sent retry
    assert first[1]["outcome"] == "matched" and again == (200, {"ok": True, "outcome": "duplicate"})
    assert len(events(sessions)) == 1 and message(sessions, mid).delivered_at == T0


def test_status_before_its_message_is_kept_then_matched_by_match_pending_events(app: Any, sessions: Any) -> None:
    assert call(app, status_event("wamid.LATE", "read"))[1]["outcome"] == "pending"
    [row] = events(sessions)
    assert (row.matched, row.message_id) == (False, None)
    with sessions() as session, session.begin():
        assert match_pending_events(session) == 0  # still unknown: nothing to do, nothing lost
    mid = add_message(sessions, "wamid.LATE")
    with sessions() as session, session.begin():
        assert match_pending_events(session, limit=10) == 1
    with sessions() as session, session.begin():
        assert match_pending_events(session) == 0  # idempotent
    msg = message(sessions, mid)
    assert (msg.delivery_status, msg.read_at, msg.delivered_at) == ("read", T0, T0)
    assert events(sessions)[0].matched and events(sessions)[0].message_id == mid


# --- replies -----------------------------------------------------------------------------------------

def test_sandbox_button_reply_is_linked_by_context(app: Any, sessions: Any) -> None:
    mid = add_message(sessions, "wamid.A", phone="96650000001")
    add_message(sessions, "wamid.NEWER", phone="96650000001", sent_at=T0 + timedelta(minutes=5))
    reply = reply_event({"type": "button_reply", "body": "No", "button": {"id": "no", "title": "No"},
                         "context": {"message_id": "wamid.A"}}, T0 + timedelta(minutes=10))
    assert call(app, reply)[1]["outcome"] == "matched"
    msg = message(sessions, mid)
    assert (msg.reply_button_id, msg.reply_button_title, msg.replied_at) == ("no", "No", T0 + timedelta(minutes=10))


@pytest.mark.parametrize("data", [
    {"type": "interactive", "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}}},
    {"type": "button", "button": {"payload": "yes", "text": "Yes"}},
    {"type": "button_reply", "body": "Yes", "button": {"id": "yes"}},
], ids=["whatsapp-interactive", "whatsapp-button", "title-from-body"])
def test_reply_without_context_goes_to_latest_message_to_that_phone(app: Any, sessions: Any, data: dict) -> None:
    add_message(sessions, "wamid.OLD", phone="96650000001", sent_at=T0)
    latest = add_message(sessions, "wamid.LATEST", phone="96650000001", sent_at=T0 + timedelta(minutes=1))
    add_message(sessions, "wamid.AFTER", phone="96650000001", sent_at=T0 + timedelta(hours=2))  # after the tap
    assert call(app, reply_event(data, T0 + timedelta(minutes=30)))[1]["outcome"] == "matched"
    msg = message(sessions, latest)
    assert (msg.reply_button_id, msg.reply_button_title) == ("yes", "Yes")


def test_reply_prefers_a_recent_message_that_offered_the_tapped_button(app: Any, sessions: Any) -> None:
    offered = add_message(sessions, "wamid.B1", sent_at=T0, buttons=[{"id": "book", "title": "Book"}])
    add_message(sessions, "wamid.B2", sent_at=T0 + timedelta(minutes=1))
    call(app, reply_event({"type": "button_reply", "button": {"id": "book", "title": "Book"}}, T0 + timedelta(minutes=2)))
    assert message(sessions, offered).reply_button_id == "book"


def test_earliest_tap_wins_whatever_the_arrival_order(app: Any, sessions: Any) -> None:
    mid = add_message(sessions, "wamid.A")
    ctx = {"context": {"message_id": "wamid.A"}, "type": "button_reply"}
    call(app, reply_event({**ctx, "button": {"id": "no", "title": "No"}}, T0 + timedelta(minutes=9)))
    call(app, reply_event({**ctx, "button": {"id": "yes", "title": "Yes"}}, T0 + timedelta(minutes=3)))
    call(app, reply_event({**ctx, "button": {"id": "no", "title": "No"}}, T0 + timedelta(minutes=20)))
    msg = message(sessions, mid)
    assert (msg.reply_button_id, msg.replied_at) == ("yes", T0 + timedelta(minutes=3))
    assert len(events(sessions)) == 3  # every tap is kept


def test_reply_before_any_message_to_that_phone_is_matched_later(app: Any, sessions: Any) -> None:
    reply = reply_event({"type": "button_reply", "button": {"id": "yes", "title": "Yes"}}, T0 + timedelta(minutes=1))
    assert call(app, reply)[1]["outcome"] == "pending"
    mid = add_message(sessions, "wamid.A", sent_at=T0)
    with sessions() as session, session.begin():
        assert match_pending_events(session) == 1
    assert message(sessions, mid).reply_button_id == "yes"


def test_non_button_inbound_message_is_recorded_and_ignored(app: Any, sessions: Any) -> None:
    mid = add_message(sessions, "wamid.A")
    text = reply_event({"type": "text", "body": "hello", "context": {"message_id": "wamid.A"}})
    list_reply = reply_event({"type": "interactive", "interactive": {"type": "list_reply", "list_reply": {"id": "x"}}})
    assert call(app, text)[1]["outcome"] == "ignored" and call(app, list_reply)[1]["outcome"] == "ignored"
    assert [e.kind for e in events(sessions)] == ["inbound", "inbound"]
    assert message(sessions, mid).replied_at is None


# --- malformed -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"{}",
    {"event": "message.status.updated"},
    {"event": "message.status.updated", "data": {"status": "read"}},
    {"event": "message.status.updated", "data": {"message_id": "wamid.A"}},
    {"event": "message.status.updated", "data": {"message_id": "wamid.A", "status": "seen"}},
    {"event": "message.status.updated", "data": {"message_id": 42, "status": "read"}},
    {"event": "message.status.updated", "data": {"message_id": "wamid.A", "status": "read", "timestamp": "yesterday"}},
    {"event": "message.received", "data": {"type": "button_reply", "button": {"id": "yes"}}},
    {"event": "message.status.updated", "data": {"message_id": "wamid." + "x" * 300, "status": "read"}},
    {"event": "message.received", "data": {"type": "button_reply", "from": "1" * 80, "button": {"id": "yes"}}},
    {"event": "conversation.closed", "data": {}},
    {"type": "verification"},
], ids=lambda b: (b if isinstance(b, bytes) else json.dumps(b))[:50])
def test_malformed_or_unknown_shapes_are_400_and_write_nothing(app: Any, sessions: Any, body: Any) -> None:
    status, doc = call(app, body)
    assert status == 400 and doc["error"] == "invalid_event" and doc["message"]
    assert events(sessions) == []


def test_oversized_body_is_413_and_wrong_route_or_method_answer_clearly(app: Any) -> None:
    assert call(app, b"{" + b" " * (1024 * 1024) + b"}")[0] == 413
    assert call(app, status_event("wamid.A", "read"), path="/elsewhere")[0] == 404
    assert call(app, method="PUT")[0] == 405
    assert call(app, method="GET")[0] == 400
    assert call(app, method="GET", path="/healthz") == (200, {"ok": True})


def test_migration_0002_matches_the_model(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from worker.models import Base

    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert [d for d in diff if "webhook_events" in repr(d)] == []


def test_command_refuses_to_start_without_a_webhook_secret(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from worker.cli.webhooks import webhooks_command

    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "AWAL_WEBHOOK_SECRET": ""}
    result = CliRunner().invoke(webhooks_command, ["--port", "0"], env=env)
    assert result.exit_code == 2
    assert "AWAL_WEBHOOK_SECRET is not set" in result.output and len(result.output.strip().splitlines()) == 1


# --- the running server -------------------------------------------------------------------------------

@pytest.fixture
def server(app: Any) -> Iterator[str]:
    from waitress.server import create_server

    srv = create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.effective_port}/webhooks/awal"
    srv.close()
    thread.join(timeout=5)


def test_sandbox_emitter_events_reach_the_running_receiver(server: str, sessions: Any) -> None:
    """The sandbox's own signing and shapes, over HTTP, end to end."""
    from worker.sandbox.config import SandboxConfig
    from worker.sandbox.faults import FaultPlan
    from worker.sandbox.state import Record, SandboxState
    from worker.sandbox.webhooks import WebhookEmitter, tap_event
    from worker.sandbox.webhooks import status_event as sb_status

    mid = add_message(sessions, "wamid.SB", phone="96650000009")
    record = Record(id=1, message_id="wamid.SB", phone="96650000009", phone_number_id="123456",
                    body={"buttons": BUTTONS}, received_at=0.0, outcome="sent", request_id="req_1")

    async def emit() -> list[bool]:
        emitter = WebhookEmitter(SandboxConfig(webhook_url=server, webhook_secret=SECRET), SandboxState(1), FaultPlan(1))
        try:
            return [await emitter.post(server, SECRET, e) for e in
                    (sb_status(record, "delivered"), sb_status(record, "read"), tap_event(record, BUTTONS[1]))]
        finally:
            await emitter.close()

    assert asyncio.run(emit()) == [True, True, True]
    msg = message(sessions, mid)
    assert (msg.delivery_status, msg.reply_button_id, msg.reply_button_title) == ("read", "no", "No")
    assert msg.delivered_at and msg.read_at and msg.replied_at


def test_burst_of_5000_events_against_the_running_receiver_loses_none(server: str, sessions: Any, db_url: str) -> None:
    # Given 2,500 sent messages, When 8 keep-alive clients POST their delivered and read events
    # (5,000 distinct events) in random order, Then every event is a row and every message is read.
    wamids = [f"wamid.burst{i}" for i in range(2500)]
    with sessions() as session, session.begin():
        session.execute(sa.insert(Message), [dict(phone_number_id="123456", phone=f"9665{i:08d}", content={}, status="sent",
                                                  vendor_message_id=w, sent_at=T0) for i, w in enumerate(wamids)])
    bodies = [json.dumps(status_event(w, s, T0 + timedelta(seconds=n))).encode()
              for w in wamids for n, s in ((1, "delivered"), (2, "read"))]
    random.Random(8).shuffle(bodies)
    local = threading.local()

    def post(body: bytes) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign_body(secret=SECRET.encode(), body=body)}
        return local.session.post(server, data=body, headers=headers, timeout=30).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = Counter(pool.map(post, bodies))
    elapsed = time.perf_counter() - started
    print(f"\nwebhook burst on {db_url.split(':')[0]}: {len(bodies)} events in {elapsed:.2f}s = {len(bodies) / elapsed:.0f} events/s")
    assert statuses == {200: 5000}
    with sessions() as session:
        assert count_events(session) == 5000 and count_events(session, matched=False) == 0
        read = session.execute(sa.select(sa.func.count()).select_from(Message).where(
            Message.delivery_status == "read", Message.delivered_at == T0 + timedelta(seconds=1))).scalar_one()
    assert read == 2500


def test_nul_in_a_signed_reply_is_stored_not_answered_503_for_ever(app: Any, sessions: Any) -> None:
    """Issue 12 item 10: a NUL (JSON \\u0000) in a signed reply's texts is stored with U+FFFD, on Postgres too.

    Postgres refuses NUL in text: before, every redelivery of this event failed to store (503).
    """
    mid = add_message(sessions, "wamid.NUL", phone="96650000001")
    reply = reply_event({"type": "button_reply", "body": "Y\u0000es", "button": {"id": "yes", "title": "Y\u0000es"},
                         "context": {"message_id": "wamid.NUL"}, "from": "96650000001\u0000"}, T0 + timedelta(minutes=1))
    status, answer = call(app, reply)
    assert (status, answer["outcome"]) == (200, "matched")
    assert message(sessions, mid).reply_button_title == "Y\ufffdes"
    assert "\\u0000" in events(sessions)[0].body  # the raw body is kept as received
    assert call(app, reply)[0] == 200  # a redelivery is a duplicate, not an error
