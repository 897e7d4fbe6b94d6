"""Issue 14 item 4: outbound event hooks. The service, the outbox writes (in the transaction of
the change, on SQLite and Postgres), the delivery tick against a real local HTTP receiver, the
reference verifier and the CLI. The whole path with real worker and beat processes is in
tests/hooks/test_hooks_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env, wait_until
from tests.hooks_receiver import HookReceiver
from worker.errors import ConfigError
from worker.hooks import outbox, service
from worker.hooks.delivery import deliver_due
from worker.hooks.models import HookEndpoint, HookOutbox, OutboxStatus
from worker.hooks.signing import endpoint_secret, signature_header
from worker.hooks.verify import SignatureError, verify
from worker.models import Message, utcnow
from worker.sending import store
from worker.sending.client import SendResult
from worker.sending.enqueue import enqueue_message
from worker.sending.send import Outcome, send_deps, send_message
from worker.settings import Secret
from worker.webhooks.apply import record_and_apply
from worker.webhooks.events import parse_body

KEY = "k" * 40
BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
FAST = {"HOOKS_SIGNING_KEY": KEY, "HOOKS_BACKOFF_BASE_S": "0.05", "HOOKS_BACKOFF_MAX_S": "0.2",
        "HOOKS_TIMEOUT_S": "2", "SEND_READ_TIMEOUT_S": "1", "SEND_RETRY_MAX_WAIT_S": "0.05",
        "AWAL_RATE_LIMIT": "1000/s", "AWAL_RATE_BURST": "50",
        "HOOKS_ALLOWED_HOSTS": "127.0.0.1"}   # the test receivers listen on loopback (issue 25 item 1)
_phones = iter(range(30_000_000, 39_999_999))


@pytest.fixture()
def rt(empty_database: str, sandbox: Any) -> Iterator[Any]:
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url=sandbox[0], **FAST))
    outbox.CACHE.invalidate()
    yield runtime
    runtime.close()


@pytest.fixture()
def receiver() -> Iterator[tuple[HookReceiver, str]]:
    r = HookReceiver()
    base = r.start()
    yield r, base
    r.stop()


def add(rt: Any, url: str, events: str) -> tuple[int, str]:
    with rt.session_factory.begin() as s:
        endpoint, secret = service.add_endpoint(s, url, events, settings=rt.settings)
    return endpoint.id, secret.reveal()


def send_one(rt: Any, phone: str | None = None) -> int:
    mid = enqueue_message(phone=phone or f"9665{next(_phones)}", body_text="Hello", buttons=BUTTONS, runtime=rt)
    send_message(mid, send_deps(rt))
    return mid


def rows(rt: Any) -> list[HookOutbox]:
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(HookOutbox).order_by(HookOutbox.id)))


def deliver(rt: Any) -> Any:
    return deliver_due(rt.session_factory, rt.settings)


# --- the reference verifier ------------------------------------------------------------------------

def test_verifier_accepts_a_fresh_signature_and_returns_the_event() -> None:
    body = b'{"id":"evt_1","type":"message.sent"}'
    header = signature_header(Secret("whsec_x"), body, int(time.time()))
    assert verify(body, header, "whsec_x")["id"] == "evt_1"


def test_the_signature_matches_the_test_vector_in_docs_hooks_md() -> None:
    header = signature_header(Secret("whsec_test"), b'{"id":"evt_1"}', 1733164201)
    assert header == "t=1733164201,v1=0945f1e56a81dc0cf7b461ef00cb5afa1c41e9425067df7595f6ad3c49c22e68"
    assert header in open("docs/hooks.md", encoding="utf-8").read()
    assert verify(b'{"id":"evt_1"}', header, "whsec_test", now=1733164201 + 299)["id"] == "evt_1"


@pytest.mark.parametrize("case", ["stale", "future", "wrong secret", "altered body", "no header", "no v1"])
def test_verifier_refuses_stale_timestamps_wrong_secrets_altered_bodies(case: str) -> None:
    body, now = b'{"id":"evt_1"}', int(time.time())
    t = {"stale": now - 301, "future": now + 301}.get(case, now)
    header = signature_header(Secret("whsec_x"), body, t)
    if case == "no header":
        header = ""
    if case == "no v1":
        header = f"t={now}"
    with pytest.raises(SignatureError):
        verify(body + (b" " if case == "altered body" else b""), header, "whsec_y" if case == "wrong secret" else "whsec_x")


# --- service: add, validation, the secret ---------------------------------------------------------

def test_add_names_the_bad_field_for_a_bad_url_or_an_unknown_event(rt: Any) -> None:
    for url, events, field, words in [
        ("ftp://x.example/h", "message.sent", "url", "http:// or https://"),
        ("https://user:pw@x.example/h", "message.sent", "url", "user or password"),
        ("https:///nohost", "message.sent", "url", "no host"),
        ("https://x.example/h", "message.sent,message.bounced", "events", "unknown event 'message.bounced'"),
        ("https://x.example/h", "", "events", "at least one event"),
    ]:
        with pytest.raises(service.HookInvalid) as err, rt.session_factory.begin() as s:
            service.add_endpoint(s, url, events, settings=rt.settings)
        assert [(p.field, words in p.problem) for p in err.value.problems] == [(field, True)], err.value.problems
    with rt.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(HookEndpoint)) == 0


def test_the_secret_is_derived_from_the_signing_key_and_never_stored(rt: Any) -> None:
    first, secret = add(rt, "https://a.example/h", "message.sent")
    second, other = add(rt, "https://a.example/h", "message.sent")
    with rt.session_factory() as s:
        endpoint = s.get(HookEndpoint, first)
        dump = json.dumps([[str(v) for v in row] for t in ("hook_endpoints", "hook_subscriptions")
                           for row in s.execute(sa.text(f"SELECT * FROM {t}"))])
    assert secret.startswith("whsec_") and secret != other
    assert endpoint_secret(Secret(KEY), first, endpoint.key_salt).reveal() == secret
    assert secret not in dump and secret[6:] not in dump and KEY not in dump
    with pytest.raises(ConfigError, match="HOOKS_SIGNING_KEY"), rt.session_factory.begin() as s:
        service.add_endpoint(s, "https://a.example/h", "message.sent", settings=rt.settings.replace(hooks_signing_key=Secret("")))


# --- the outbox: written with the change ----------------------------------------------------------

def test_a_sent_message_writes_one_message_sent_row_per_subscribed_endpoint(rt: Any) -> None:
    """On Postgres this is the one-statement record (autocommit, one more CTE); on SQLite a transaction."""
    sent_hook, _ = add(rt, "https://a.example/sent", "message.sent,message.failed")
    add(rt, "https://b.example/taps", "button.tapped")
    mid = send_one(rt)
    [row] = rows(rt)
    with rt.session_factory() as s:
        msg = s.get(Message, mid)
    assert (row.endpoint_id, row.event_type, row.message_id, row.status) == (sent_hook, "message.sent", mid, "pending")
    assert row.event_id.startswith("evt_") and len(row.event_id) == 36
    assert json.loads(row.data)["vendor_message_id"] == msg.vendor_message_id and msg.status == "sent"


def test_no_outbox_row_when_nobody_subscribes_or_the_claim_was_lost(rt: Any) -> None:
    mid = send_one(rt)                       # no endpoint yet: the plain statement
    assert rows(rt) == []
    add(rt, "https://a.example/sent", "message.sent")
    with rt.single_statements() as conn:     # a stale worker whose claim token no longer owns the row
        from worker.sending.client import AttemptRecord

        attempt = AttemptRecord(started_at=utcnow(), duration_ms=5, http_status=200, outcome="sent")
        owned = store.record_sent(conn, mid, "not-the-token", SendResult(1, "wamid.X", "sent", 200), [attempt], "w")
    assert owned is False and rows(rt) == []


def test_a_final_failure_writes_message_failed_with_the_vendors_code(rt: Any, sandbox: Any) -> None:
    add(rt, "https://a.example/h", "message.failed")
    phone = f"9665{next(_phones)}"
    sandbox[1].script(phone, ["400"])
    mid = send_one(rt, phone)
    [row] = rows(rt)
    data = json.loads(row.data)
    assert (row.event_type, row.message_id, data["stage"], data["status"]) == ("message.failed", mid, "send", "failed")
    assert data["error_code"] not in (None, "permanent")


def _vendor(rt: Any, doc: dict) -> Any:
    with rt.session_factory.begin() as s:
        return record_and_apply(s, parse_body(json.dumps(doc).encode(), received_at=utcnow()), json.dumps(doc).encode())


def test_receipts_and_taps_from_the_vendor_write_their_events_in_the_receivers_transaction(rt: Any) -> None:
    add(rt, "https://a.example/h", "message.delivered,message.read,button.tapped,message.failed")
    mid = send_one(rt)
    with rt.session_factory() as s:
        msg = s.get(Message, mid)
    for status in ("delivered", "read", "failed"):   # failed after read does not apply: no event
        _vendor(rt, {"event": "message.status.updated", "data": {"message_id": msg.vendor_message_id, "status": status}})
    _vendor(rt, {"event": "message.received", "data": {"message_id": "wamid.in1", "from": msg.phone, "type": "button_reply",
                 "button": {"id": "yes", "title": "Yes"}, "context": {"message_id": msg.vendor_message_id}}})
    got = [(r.event_type, r.message_id) for r in rows(rt)]
    assert got == [("message.delivered", mid), ("message.read", mid), ("button.tapped", mid)]
    assert json.loads(rows(rt)[2].data)["button_id"] == "yes"

    late = send_one(rt)                              # the vendor reports a sent message failed: message.failed
    with rt.session_factory() as s:
        wamid = s.get(Message, late).vendor_message_id
    _vendor(rt, {"event": "message.status.updated",
                 "data": {"message_id": wamid, "status": "failed", "error": {"code": 131047, "message": "window closed"}}})
    failed = rows(rt)[-1]
    data = json.loads(failed.data)
    assert (failed.event_type, failed.message_id, data["stage"]) == ("message.failed", late, "delivery")
    assert "131047" in data["error_message"]


# --- delivery: signed POSTs, retries, dead letters, redelivery ------------------------------------

def test_delivered_signed_retried_after_a_500_with_the_same_event_id(rt: Any, receiver: Any) -> None:
    r, base = receiver
    endpoint_id, r.secrets["/ok"] = add(rt, base + "/ok", "message.sent")
    r.script["/ok"] = [500]
    mid = send_one(rt)

    assert deliver(rt).retrying == 1                  # the receiver answered 500
    time.sleep(0.1)
    assert deliver(rt).delivered == 1
    first, second = r.at("/ok")
    assert (first.answered, second.answered) == (500, 200)
    assert first.refused is None and second.refused is None           # the reference verifier accepted both
    assert first.event["id"] == second.event["id"] == first.headers["Buttoncast-Event-Id"]
    assert first.body == second.body
    assert second.event["type"] == "message.sent" and second.event["data"]["message_id"] == mid
    assert second.event["data"]["phone"] and "campaign_id" in second.event["data"]
    [row] = rows(rt)
    assert (row.status, row.attempts, row.last_http_status) == ("delivered", 2, 200)
    with rt.session_factory() as s:
        [view] = service.list_endpoints(s)
    assert (view.id, view.delivered, view.pending, view.dead) == (endpoint_id, 1, 0, 0)


def test_still_failing_after_the_retry_period_is_dead_lettered_then_redelivered_with_its_id(rt: Any, receiver: Any) -> None:
    r, base = receiver
    rt.settings = rt.settings.replace(hooks_retry_max_s=0.5)
    endpoint_id, r.secrets["/down"] = add(rt, base + "/down", "message.sent")
    r.script["/down"] = [503] * 100
    send_one(rt)
    deadline = time.monotonic() + 60   # generous: the loop ends once the row is dead
    while rows(rt)[0].status != "dead" and time.monotonic() < deadline:
        deliver(rt)
        time.sleep(0.05)
    [row] = rows(rt)
    assert row.status == "dead" and row.attempts >= 3 and row.last_error.startswith("HTTP 503")
    with rt.session_factory() as s:
        [view] = service.list_endpoints(s)
    assert (view.dead, view.pending) == (1, 0) and "503" in view.last_error

    r.script["/down"] = []
    with rt.session_factory.begin() as s:
        assert service.redeliver(s, endpoint_id=endpoint_id) == 1
    assert deliver(rt).delivered == 1
    ids = {x.event["id"] for x in r.at("/down")}
    assert ids == {row.event_id} and r.at("/down")[-1].answered == 200


def test_a_redirect_is_never_followed(rt: Any, receiver: Any) -> None:
    r, base = receiver
    _, r.secrets["/moved"] = add(rt, base + "/moved", "message.sent")
    r.script["/moved"] = [302]
    send_one(rt)
    assert deliver(rt).retrying == 1
    [row] = rows(rt)
    assert row.last_http_status == 302 and "not followed" in row.last_error and len(r.received) == 1


def test_a_slow_receiver_holds_one_tick_at_a_time_and_sends_go_on(rt: Any, receiver: Any) -> None:
    """While one tick waits on a slow receiver, another tick returns at once and messages are still
    sent; the slow endpoint's lane then also takes the event written meanwhile (issue 25 item 5:
    a lane claims its endpoint's next due rows)."""
    import threading

    r, base = receiver
    rt.settings = rt.settings.replace(hooks_timeout_s=30)   # the slow receiver answers, late: not a timeout
    _, r.secrets["/slow"] = add(rt, base + "/slow", "message.sent")
    r.delay_s["/slow"] = 3.0
    send_one(rt)
    slow = threading.Thread(target=deliver, args=(rt,))
    slow.start()
    wait_until(lambda: r.started == ["/slow"], what="the slow receiver holding the first tick's POST")
    assert deliver(rt).claimed == 0 and slow.is_alive()   # returned while the slow POST is still held
    mid = send_one(rt)
    with rt.session_factory() as s:
        assert s.get(Message, mid).status == "sent"
    assert slow.is_alive()
    slow.join(60)
    assert [x.answered for x in r.at("/slow")] == [200, 200] and {x.status for x in rows(rt)} == {"delivered"}


def test_a_claimed_row_is_not_claimed_again_until_its_lease_ends(rt: Any) -> None:
    from worker.hooks.delivery import claim_due

    add(rt, "http://127.0.0.1:9/h", "message.sent")
    send_one(rt)
    with rt.session_factory.begin() as s:
        [item] = claim_due(s, limit=10, lease=60)
    with rt.session_factory.begin() as s:
        assert claim_due(s, limit=10, lease=60) == []
        assert claim_due(s, limit=10, lease=60, now=utcnow() + timedelta(seconds=61))[0].event_id == item.event_id


def test_remove_drops_the_endpoint_and_its_undelivered_events(rt: Any) -> None:
    endpoint_id, _ = add(rt, "https://a.example/h", "message.sent")
    send_one(rt)
    with rt.session_factory.begin() as s:
        service.remove_endpoint(s, endpoint_id)
    assert rows(rt) == []
    with pytest.raises(service.HookNotFound), rt.session_factory.begin() as s:
        service.remove_endpoint(s, endpoint_id)


# --- the CLI --------------------------------------------------------------------------------------

def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", "hooks", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_cli_add_prints_the_secret_alone_on_the_last_line_and_list_shows_the_counts(sqlite_url: str, tmp_path: Any) -> None:
    env = stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9", HOOKS_SIGNING_KEY=KEY)
    added = _cli(env, "add", "https://crm.example/hooks", "--events", "message.sent,button.tapped")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.splitlines()[-1]
    assert secret.startswith("whsec_") and secret == secret.strip() and len(secret) == 70
    assert secret not in added.stderr
    listed = _cli(env, "list")
    assert "https://crm.example/hooks" in listed.stdout and "button.tapped,message.sent" in listed.stdout
    assert "dead:       0" in listed.stdout and "pending:    0" in listed.stdout and secret not in listed.stdout

    bad = _cli(env, "add", "crm.example", "--events", "message.sent,nope")
    assert bad.returncode == 2
    assert "invalid: url: must start with http:// or https://" in bad.stderr
    assert "invalid: events: unknown event 'nope'" in bad.stderr
    no_key = _cli({**env, "HOOKS_SIGNING_KEY": ""}, "add", "https://crm.example/h", "--events", "message.sent")
    assert no_key.returncode == 2 and "HOOKS_SIGNING_KEY is not set" in no_key.stderr
    missing = _cli(env, "remove", "999")
    assert missing.returncode == 1 and "no hook endpoint 999" in missing.stderr


def test_retention_prunes_old_delivered_and_dead_hook_events_and_keeps_pending_ones(rt: Any) -> None:
    from scheduler.retention import prune

    add(rt, "https://a.example/h", "message.sent")
    for _ in range(3):
        send_one(rt)
    old = utcnow() - timedelta(days=40)
    with rt.session_factory.begin() as s:
        ids = list(s.scalars(sa.select(HookOutbox.id).order_by(HookOutbox.id)))
        for row_id, status in zip(ids, ("delivered", "dead", "pending")):
            s.execute(sa.update(HookOutbox).where(HookOutbox.id == row_id).values(status=status, last_attempt_at=old))
    report = prune(rt, older_than=timedelta(days=30))
    assert report.deleted["hook_outbox"] == 2 and [r.status for r in rows(rt)] == ["pending"]


def test_an_opt_out_writes_a_contact_opted_out_hook_event_in_its_own_transaction(rt: Any) -> None:
    """Issue 14 item 4: contact.opted_out reaches subscribers (an operator's or a keyword's opt-out
    writes the outbox row with the consent change); a second opt-out of the same phone writes none."""
    from worker.contacts.service import SOURCE_OPERATOR, opt_out

    add(rt, "http://127.0.0.1:9/hooks", "contact.opted_out")
    phone = f"9665{next(_phones)}"
    for _ in range(2):
        with rt.session_factory.begin() as s:
            opt_out(s, phone, source=SOURCE_OPERATOR, reason="asked by phone", actor="operator")
    with rt.session_factory() as s:
        rows = s.execute(sa.select(HookOutbox.event_type, HookOutbox.phone, HookOutbox.data)).all()
    assert [(r.event_type, r.phone) for r in rows] == [("contact.opted_out", phone)]
    data = json.loads(rows[0].data)
    assert (data["phone"], data["source"], data["reason"]) == (phone, "operator", "asked by phone")
