"""Late failures by class (issue 13 item 6): the code table, parsing the vendor's shapes, recording
the class from a `failed` status webhook, 131050 opting the contact out, the circuit breaker, and
`retry --reason CLASS [--force]`. Service tests run on SQLite and on Postgres (database_url)."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from scheduler import campaigns, report
from scheduler.retry import RetryRefused, RetrySelection, plan_retry, requeue
from worker import metrics
from worker.cli.retry import retry_command
from worker.contacts.service import get_contact, is_opted_out, opt_in
from worker.db import make_engine, make_session_factory
from worker.errors import ConfigError
from worker.failures import CODE_CLASSES, FailureClass, classify, parse_failure_code
from worker.models import Attempt, Campaign, Message, MessageEvent, utcnow
from worker.settings import Settings
from worker.webhooks import Outcome, record_and_apply
from worker.webhooks.breaker import LatePolicy
from worker.webhooks.events import parse_body

_phones = itertools.count(int(utcnow().timestamp() * 1000) % 10**9 * 100)


def next_phone() -> str:
    return f"97{next(_phones):011d}"


@pytest.fixture()
def sessions(database_url: str) -> Iterator[Any]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def failed_body(wamid: str, code: int | str | None = 131047, *, shape: str = "errors", phone: str | None = None) -> bytes:
    data: dict[str, Any] = {"message_id": wamid, "status": "failed", "timestamp": utcnow().isoformat()}
    if phone:
        data["recipient"] = phone
    if shape == "errors":
        data["errors"] = [{"code": code, "title": "Re-engagement message"}]
    elif shape == "error":
        data["error"] = {"code": str(code), "message": "failed"}
    elif shape == "reason":
        data["reason"] = f"(#{code}) the vendor said no"
    return json.dumps({"event": "message.status.updated", "data": data}).encode()


def deliver(sessions: Any, body: bytes, late: LatePolicy = LatePolicy()) -> Outcome:
    event = parse_body(body, received_at=utcnow())
    with sessions.begin() as session:
        return record_and_apply(session, event, body, late=late)


def running_campaign(sessions: Any, n: int, *, sent: bool = True) -> tuple[int, list[int], list[str]]:
    """A running campaign of n messages, each sent (a wamid, an attempt row) a second apart."""
    now = utcnow()
    with sessions.begin() as session:
        campaign = Campaign(name="late", phone_number_id="123456", template={}, status="running", started_at=now)
        session.add(campaign)
        session.flush()
        ids, wamids = [], []
        for i in range(n):
            wamid = f"wamid.{campaign.id}.{i}.{next(_phones)}"
            msg = Message(campaign_id=campaign.id, phone_number_id="123456", phone=next_phone(),
                          content={"body_text": "Hi", "buttons": [{"id": "y", "title": "Y"}]},
                          status="sent" if sent else "pending", vendor_message_id=wamid, vendor_id=i,
                          sent_at=now - timedelta(seconds=n - i), finished_at=now, attempts=1)
            session.add(msg)
            session.flush()
            session.add(Attempt(message_id=msg.id, started_at=msg.sent_at, duration_ms=5, http_status=200,
                                outcome="sent", vendor_message_id=wamid, worker="w1"))
            ids.append(msg.id)
            wamids.append(wamid)
        return campaign.id, ids, wamids


def get(sessions: Any, model: Any, key: Any) -> Any:
    with sessions() as session:
        return session.get(model, key)


# --- the code table and parsing (no database) ------------------------------------------------------

def test_every_documented_code_has_its_class_and_unknown_codes_are_other() -> None:
    assert {code: klass.value for code, klass in CODE_CLASSES.items()} == {
        "131047": "window_closed", "131026": "undeliverable", "131050": "opted_out", "131049": "frequency_capped",
        "131048": "quality_risk", "130429": "throttled", "131056": "throttled",
    }
    assert classify("470") is FailureClass.OTHER and classify(None) is FailureClass.OTHER
    assert {c for c in FailureClass if c.resend_needs_force} == {FailureClass.OPTED_OUT, FailureClass.UNDELIVERABLE}


@pytest.mark.parametrize("data, code", [
    ({"errors": [{"code": 131047, "title": "Re-engagement message"}]}, "131047"),        # WhatsApp style
    ({"errors": [{"code": "131026"}]}, "131026"),                                         # a digit string
    ({"error": {"code": 131050, "message": "stopped"}}, "131050"),
    ({"error": {"error_code": "#131049"}}, "131049"),
    ({"reason": "(#131048) Spam rate limit hit"}, "131048"),                              # only text
    ({"reason": "failed: error code 130429, try later"}, "130429"),
    ({"error": "131056: pair rate limit"}, "131056"),
    ({"errors": [{"title": "x", "error_data": {"details": "see 131047"}}]}, "131047"),  # code in the details
    ({"errors": [{"code": 470}]}, "470"),                                                 # unknown, still kept
    ({"reason": "code 999 on 2026-01-01 and 131026"}, "131026"),                          # a known code wins
    ({"errors": [{"code": True}], "reason": "nothing"}, None),                            # a bool is no code
    ({"reason": "undeliverable"}, None),
    ({}, None),
])
def test_the_failure_code_is_read_from_each_shape_the_vendor_may_use(data: dict, code: str | None) -> None:
    assert parse_failure_code(data) == code


def test_a_failed_status_event_carries_its_code_and_other_statuses_none() -> None:
    failed = parse_body(failed_body("wamid.X", 131026, shape="error"), received_at=utcnow())
    assert failed.failure_code == "131026" and "131026" in failed.reason
    delivered = parse_body(json.dumps({"event": "message.status.updated", "data": {
        "message_id": "wamid.X", "status": "delivered", "errors": [{"code": 131026}]}}).encode(), received_at=utcnow())
    assert delivered.failure_code is None


def test_breaker_settings_are_parsed_and_checked() -> None:
    s = Settings.from_env({"AUTO_PAUSE_LATE_WINDOW": "50", "AUTO_PAUSE_LATE_FAILURE_RATE": "0.1"})
    assert LatePolicy.from_settings(s) == LatePolicy(window=50, rate=0.1)
    assert LatePolicy.from_settings(Settings.from_env({})) == LatePolicy(window=200, rate=0.2)
    for env in ({"AUTO_PAUSE_LATE_FAILURE_RATE": "1.5"}, {"AUTO_PAUSE_LATE_WINDOW": "0"},
                {"AUTO_PAUSE_LATE_FAILURE_RATE": "x"}):
        with pytest.raises(ConfigError):
            Settings.from_env(env)


# --- recording the class, and what each class asks for --------------------------------------------

def test_a_failed_webhook_records_the_code_and_class_once_and_counts_it_in_the_metric(sessions: Any) -> None:
    cid, ids, wamids = running_campaign(sessions, 3)
    before = metrics.LATE_FAILURES.labels("window_closed")._value.get()
    assert deliver(sessions, failed_body(wamids[0], 131047)) is Outcome.MATCHED
    assert deliver(sessions, failed_body(wamids[0], 131047)) is Outcome.DUPLICATE
    assert deliver(sessions, failed_body(wamids[1], "131026", shape="error")) is Outcome.MATCHED
    assert deliver(sessions, failed_body(wamids[2], 131049, shape="reason")) is Outcome.MATCHED
    rows = [get(sessions, Message, i) for i in ids]
    assert [(m.delivery_status, m.failure_code, m.failure_class) for m in rows] == [
        ("failed", "131047", "window_closed"), ("failed", "131026", "undeliverable"),
        ("failed", "131049", "frequency_capped")]
    assert metrics.LATE_FAILURES.labels("window_closed")._value.get() == before + 1
    # campaign show and the report group them by class
    with sessions() as session:
        p = report.progress(session, cid, 1.0)
        rows = list(report.report_rows(session, cid))
        _, console_late = report.overview(session, cid, 1.0)   # the console's one-scan page
    assert p.late_failures == {"frequency_capped": 1, "undeliverable": 1, "window_closed": 1} == console_late
    text = "\n".join(report.describe(p))
    assert "late failures: 3 (100.0% of sent) failed after sending, by class:" in text
    assert "window_closed: 1" in text and f"buttoncast retry --campaign {cid} --reason window_closed" in text
    assert "--reason undeliverable" not in text   # resending will not help: not suggested
    assert [r["failure_class"] for r in rows] == ["window_closed", "undeliverable", "frequency_capped"]


def test_a_failure_after_delivered_does_not_overwrite_it_or_get_a_class(sessions: Any) -> None:
    _, ids, wamids = running_campaign(sessions, 1)
    deliver(sessions, json.dumps({"event": "message.status.updated", "data": {
        "message_id": wamids[0], "status": "delivered"}}).encode())
    deliver(sessions, failed_body(wamids[0], 131047))
    msg = get(sessions, Message, ids[0])
    assert (msg.delivery_status, msg.failure_class) == ("delivered", None)


def test_131050_opts_the_contact_out_in_the_same_transaction_with_the_vendor_code_as_source(sessions: Any) -> None:
    _, ids, wamids = running_campaign(sessions, 1)
    phone = get(sessions, Message, ids[0]).phone
    deliver(sessions, failed_body(wamids[0], 131050))
    with sessions() as session:
        assert is_opted_out(session, phone)
        contact = get_contact(session, phone)
    assert contact.opt_out_source == "vendor_code" and "131050 opted_out" in contact.opt_out_note
    assert [(h.action, h.source) for h in contact.history] == [("opt_out", "vendor_code")]


def test_131050_for_a_message_not_recorded_yet_opts_out_its_recipient_at_once(sessions: Any) -> None:
    phone = next_phone()
    assert deliver(sessions, failed_body(f"wamid.unknown.{phone}", 131050, phone=phone)) is Outcome.PENDING
    with sessions() as session:
        assert is_opted_out(session, phone)


# --- the circuit breaker ---------------------------------------------------------------------------

def test_the_breaker_pauses_once_late_failures_among_the_last_n_sent_pass_the_rate(sessions: Any) -> None:
    # Given a running campaign of 10 sent messages, a window of 10 and a rate of 0.2
    cid, _, wamids = running_campaign(sessions, 10)
    policy = LatePolicy(window=10, rate=0.2)
    # When 2 of them fail late (20%: not more than the rate), it keeps running
    for wamid in wamids[:2]:
        deliver(sessions, failed_body(wamid, 131047), policy)
    assert get(sessions, Campaign, cid).status == "running"
    # When a third fails, it pauses with the reason and the classes
    deliver(sessions, failed_body(wamids[2], 131026), policy)
    campaign = get(sessions, Campaign, cid)
    assert campaign.status == "paused"
    assert campaign.pause_reason.startswith("late failures: 3 of the last 10 sent messages failed after sending (30%")
    assert "window_closed 2, undeliverable 1" in campaign.pause_reason


def test_the_breaker_counts_only_the_last_n_sent_messages_and_a_young_campaign_against_the_whole_window(sessions: Any) -> None:
    # Given 10 sent messages and a window of the last 5: failures among the 5 oldest do not count
    cid, _, wamids = running_campaign(sessions, 10)
    policy = LatePolicy(window=5, rate=0.2)
    for wamid in wamids[:5]:
        deliver(sessions, failed_body(wamid, 131047), policy)
    assert get(sessions, Campaign, cid).status == "running"
    # And a window larger than what was sent counts the unsent part as not failed
    young, _, young_wamids = running_campaign(sessions, 3)
    for wamid in young_wamids:
        deliver(sessions, failed_body(wamid, 131047), LatePolicy(window=20, rate=0.2))
    assert get(sessions, Campaign, young).status == "running"


def test_any_131048_pauses_at_once_and_resume_starts_a_fresh_window(sessions: Any) -> None:
    cid, _, wamids = running_campaign(sessions, 6)
    deliver(sessions, failed_body(wamids[0], 131048))
    campaign = get(sessions, Campaign, cid)
    assert campaign.status == "paused" and "131048 quality_risk (Spam rate limit hit)" in campaign.pause_reason
    # When the operator resumes, failures of messages sent before the resume do not pause it again
    with sessions.begin() as session:
        campaigns.resume(session, cid)
    deliver(sessions, failed_body(wamids[1], 131048))
    for wamid in wamids[2:]:
        deliver(sessions, failed_body(wamid, 131047), LatePolicy(window=4, rate=0.2))
    assert get(sessions, Campaign, cid).status == "running"


def test_a_rate_of_zero_turns_the_rate_rule_off(sessions: Any) -> None:
    cid, _, wamids = running_campaign(sessions, 4)
    for wamid in wamids:
        deliver(sessions, failed_body(wamid, 131026), LatePolicy(window=4, rate=0))
    assert get(sessions, Campaign, cid).status == "running"


# --- retry --reason --------------------------------------------------------------------------------

def late_failed_campaign(sessions: Any) -> tuple[int, dict[str, list[int]], list[str]]:
    """A completed campaign with late failures of three classes and one delivered message."""
    cid, ids, wamids = running_campaign(sessions, 5)
    off = LatePolicy(rate=0)
    for wamid, code in zip(wamids, (131047, 131047, 131026, 131050)):
        deliver(sessions, failed_body(wamid, code), off)
    with sessions.begin() as session:
        session.execute(sa.update(Campaign).where(Campaign.id == cid).values(status="completed", finished_at=utcnow()))
    return cid, {"window_closed": ids[:2], "undeliverable": [ids[2]], "opted_out": [ids[3]], "ok": [ids[4]]}, wamids


def test_retry_reason_resends_only_that_class_keeping_both_sends_in_the_audit_trail(sessions: Any) -> None:
    cid, by_class, wamids = late_failed_campaign(sessions)
    selection = RetrySelection(campaign_id=cid, reason=FailureClass.WINDOW_CLOSED)
    with sessions() as session:
        plan = plan_retry(session, selection)
    assert (plan.total, plan.unknown, plan.by_error_code) == (2, 0, {"131047": 2})
    result = requeue(sessions, selection)
    assert (result.requeued, result.campaign_reopened) == (2, True)
    for mid, old_wamid in zip(by_class["window_closed"], wamids):
        msg = get(sessions, Message, mid)
        assert (msg.status, msg.vendor_message_id, msg.sent_at, msg.delivery_status, msg.failure_class) == (
            "queued", None, None, None, None)
        with sessions() as session:
            attempts = session.scalars(sa.select(Attempt.vendor_message_id).where(Attempt.message_id == mid)).all()
            event = session.scalars(sa.select(MessageEvent).where(MessageEvent.message_id == mid)).one()
        assert attempts == [old_wamid]   # the first send stays on record
        assert (event.from_status, event.to_status, event.actor) == ("sent", "queued", "operator")
        assert f"late failure 131047 window_closed (Re-engagement message) of messageId {old_wamid}" in event.reason
    # the other classes and the delivered message are untouched
    for mid in by_class["undeliverable"] + by_class["opted_out"] + by_class["ok"]:
        assert get(sessions, Message, mid).status == "sent"
    assert get(sessions, Campaign, cid).status == "running"


def test_retry_reason_opted_out_and_undeliverable_are_refused_unless_forced(sessions: Any) -> None:
    cid, by_class, _ = late_failed_campaign(sessions)
    for klass in (FailureClass.OPTED_OUT, FailureClass.UNDELIVERABLE):
        with sessions() as session, pytest.raises(RetryRefused, match="pass --force"):
            plan_retry(session, RetrySelection(campaign_id=cid, reason=klass))
    # Forced: the 131050 opted the person out, so the message is held back until they opt back in
    forced = RetrySelection(campaign_id=cid, reason=FailureClass.OPTED_OUT, force=True)
    with sessions() as session:
        plan = plan_retry(session, forced)
    assert (plan.total, plan.opted_out) == (0, 1)
    assert requeue(sessions, forced).requeued == 0
    phone = get(sessions, Message, by_class["opted_out"][0]).phone
    with sessions.begin() as session:
        assert opt_in(session, phone, source="operator", actor="test")
    assert requeue(sessions, forced).requeued == 1
    assert get(sessions, Message, by_class["opted_out"][0]).status == "queued"
    # undeliverable, forced, goes at once (nobody opted out)
    assert requeue(sessions, RetrySelection(campaign_id=cid, reason=FailureClass.UNDELIVERABLE, force=True)).requeued == 1


def test_retry_reason_on_one_message_checks_its_class(sessions: Any) -> None:
    _, by_class, _ = late_failed_campaign(sessions)
    with sessions() as session:
        with pytest.raises(RetryRefused, match="class undeliverable, not window_closed"):
            plan_retry(session, RetrySelection(message_id=by_class["undeliverable"][0], reason=FailureClass.WINDOW_CLOSED))
        with pytest.raises(RetryRefused, match="later reported failed"):
            plan_retry(session, RetrySelection(message_id=by_class["ok"][0], reason=FailureClass.WINDOW_CLOSED))
    assert requeue(sessions, RetrySelection(message_id=by_class["window_closed"][0],
                                            reason=FailureClass.WINDOW_CLOSED)).requeued == 1


def test_the_retry_command_with_reason_exits_1_when_refused_and_resends_with_force(database_url: str, sessions: Any) -> None:
    cid, by_class, _ = late_failed_campaign(sessions)
    env = {"DATABASE_URL": database_url}
    refused = CliRunner().invoke(retry_command, ["--campaign", str(cid), "--reason", "undeliverable"], env=env)
    assert refused.exit_code == 1 and "pass --force" in refused.output
    mixed = CliRunner().invoke(retry_command, ["--campaign", str(cid), "--reason", "undeliverable", "--status", "failed"],
                               env=env)
    assert mixed.exit_code == 2
    done = CliRunner().invoke(retry_command, ["--campaign", str(cid), "--reason", "undeliverable", "--force"], env=env)
    assert done.exit_code == 0, done.output
    assert "will requeue 1 message(s)" in done.output and "vendor code 131026" in done.output
    assert get(sessions, Message, by_class["undeliverable"][0]).status == "queued"


def test_a_failed_webhook_that_came_before_its_message_gets_its_class_when_the_sweep_matches_it(sessions: Any) -> None:
    from worker.webhooks import match_pending_events

    # Given a 131050 for a wamid not recorded yet, with no recipient in the body
    wamid = f"wamid.early.{next(_phones)}"
    assert deliver(sessions, failed_body(wamid, 131050)) is Outcome.PENDING
    # When the send path records the message, and the sweep matches pending events
    cid, ids, _ = running_campaign(sessions, 1)
    with sessions.begin() as session:
        session.execute(sa.update(Message).where(Message.id == ids[0]).values(vendor_message_id=wamid))
    with sessions.begin() as session:
        assert match_pending_events(session) >= 1
    # Then the class is recorded and the contact opted out, as if it had come in order
    msg = get(sessions, Message, ids[0])
    assert (msg.failure_code, msg.failure_class) == ("131050", "opted_out")
    with sessions() as session:
        assert is_opted_out(session, msg.phone)


def test_migration_0007_backfills_the_class_of_late_failures_already_stored(tmp_path: Any) -> None:
    from worker.db import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0009")   # the revision before 0007
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO campaigns (id, name, phone_number_id, template, status, consecutive_failures,"
                             " recipients_imported, rows_rejected, created_at, updated_at) VALUES (1, 'c', '1', '{}',"
                             " 'completed', 0, 0, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
        for mid, status, error in ((1, "failed", "131047: Re-engagement message"), (2, "failed", "(#131026) gone"),
                                   (3, "failed", "failed (the vendor gave no reason)"), (4, "delivered", None)):
            conn.execute(sa.text(
                "INSERT INTO messages (id, campaign_id, phone_number_id, phone, content, status, attempts, created_at,"
                " updated_at, delivery_status, delivery_error) VALUES (:id, 1, '1', :phone, '{}', 'sent', 1,"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00', :ds, :err)"),
                {"id": mid, "phone": f"96650000000{mid}", "ds": status, "err": error})
    upgrade(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, failure_code, failure_class FROM messages ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "131047", "window_closed"), (2, "131026", "undeliverable"),
                                        (3, None, "other"), (4, None, None)]
