"""Contacts and consent (issue 13 items 1-5, 7, 8): the contact model and its history, the one gate
every send passes (opted out, window closed, frequency cap, expiry), where opt-outs come from, and
what import, dispatch and retry do with them. Each test runs on SQLite and on Postgres."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from scheduler import campaigns, dispatcher
from scheduler.dispatcher import dispatch_tick
from scheduler.retry import RetryRefused, RetrySelection, plan_retry, requeue
from tests.conftest import make_runtime, stack_env
from worker.contacts import service as contacts
from worker.contacts.importer import import_optouts
from worker.errors import ConfigError, MessageInvalid
from worker.models import Campaign, Contact, ContactEvent, Message, MessageEvent, utcnow
from worker.sending.enqueue import enqueue_message, enqueue_payload
from worker.sending.send import Outcome, send_deps, send_message
from worker.settings import FrequencyCap, Settings
from worker.status import MessageStatus
from worker.webhooks.apply import record_and_apply
from worker.webhooks.events import parse_body

BUTTONS = [{"id": "yes", "title": "Yes"}]
CONTENT = {"body_text": "Hi", "buttons": BUTTONS}
_seq = iter(range(1_000_000, 4_999_999))


def new_phone() -> str:
    return f"96650{next(_seq):07d}"   # valid Saudi mobile numbers (libphonenumber judges them at entry)


@pytest.fixture()
def runtime(database_url, sandbox):  # noqa: ANN001
    base_url, _ = sandbox
    rt = make_runtime(stack_env(database_url=database_url, sandbox_url=base_url, AWAL_RATE_LIMIT="1000/s",
                                AWAL_RATE_BURST="50", SEND_RETRY_MAX_WAIT_S="0.05"))
    yield rt
    rt.close()


def _env_of(rt, **extra: str) -> dict[str, str]:  # noqa: ANN001
    s = rt.settings
    return stack_env(database_url=s.database_url, sandbox_url=s.awal_base_url, AWAL_RATE_LIMIT="1000/s",
                     AWAL_RATE_BURST="50", **extra)


def enqueue(rt, phone: str, **kw) -> int:  # noqa: ANN001
    return enqueue_message(phone=phone, body_text="Hello", buttons=BUTTONS, runtime=rt, **kw)


def load(rt, message_id: int) -> Message:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.get(Message, message_id)


def inbound(rt, phone: str, text: str | None = None, *, button: str | None = None, at: datetime | None = None,  # noqa: ANN001
            event_id: str | None = None) -> None:
    """What the receiver does with one signed message.received body (record and apply, one transaction)."""
    data = {"message_id": event_id or f"in.{new_phone()}", "from": phone, "type": "text", "body": text,
            "timestamp": (at or utcnow()).isoformat()}
    if button:
        data.update(type="button_reply", button={"id": button, "title": button.title()})
    body = json.dumps({"event": "message.received", "data": data}).encode()
    with rt.session_factory.begin() as s:
        record_and_apply(s, parse_body(body, received_at=utcnow()), body, contacts.ConsentRules.from_settings(rt.settings))


def opted_out(rt, phone: str) -> bool:  # noqa: ANN001
    with rt.session_factory() as s:
        return contacts.is_opted_out(s, phone)


# --- item 1: the contact model -------------------------------------------------------------------

def test_opt_out_and_in_are_recorded_with_their_sources_and_repeats_change_nothing(runtime) -> None:
    """Issue 13 item 1: each consent change is an event with its source; a repeat is not a change."""
    phone = new_phone()
    t0 = utcnow()
    with runtime.session_factory.begin() as s:
        assert contacts.opt_out(s, phone, source="keyword", reason="replied 'STOP'", actor="webhook", at=t0)
        assert not contacts.opt_out(s, phone, source="operator", at=t0 + timedelta(seconds=1))
        assert contacts.opt_in(s, phone, source="operator", actor="operator", at=t0 + timedelta(seconds=2))
        assert not contacts.opt_in(s, phone, source="operator", at=t0 + timedelta(seconds=3))
        with pytest.raises(ValueError):
            contacts.opt_out(s, phone, source="rumour")
    with runtime.session_factory() as s:
        view = contacts.get_contact(s, phone)
    # a newer repeat adds no history but moves the time consent is ordered by (issue 25 item 4)
    assert not view.opted_out and view.opted_in_at == t0 + timedelta(seconds=3)
    assert [(h.action, h.source, h.reason) for h in view.history] == [
        ("opt_out", "keyword", "replied 'STOP'"), ("opt_in", "operator", None)]


def test_an_opt_out_older_than_the_last_opt_in_arriving_late_changes_nothing(runtime) -> None:
    """Issue 13 item 1: events out of order (a STOP webhook retried after a later START) keep the latest."""
    phone, t0 = new_phone(), utcnow()
    with runtime.session_factory.begin() as s:
        contacts.opt_out(s, phone, source="keyword", at=t0)
        contacts.opt_in(s, phone, source="keyword", at=t0 + timedelta(minutes=5))
        assert not contacts.opt_out(s, phone, source="keyword", at=t0 + timedelta(minutes=1))
    assert not opted_out(runtime, phone)


def test_inbound_messages_open_the_24_hour_window_and_the_latest_one_counts(runtime) -> None:
    """Issue 13 items 1 and 5: window open until the last inbound message + 24 h."""
    phone, now = new_phone(), utcnow()
    with runtime.session_factory.begin() as s:
        contacts.record_inbound(s, phone, at=now - timedelta(hours=2))
        contacts.record_inbound(s, phone, at=now - timedelta(hours=30))   # an older event arriving late
    with runtime.session_factory() as s:
        view = contacts.get_contact(s, phone)
    assert view.last_inbound_at == now - timedelta(hours=2)
    assert view.window_open_until == now + timedelta(hours=22) and view.window_open(now)
    assert not view.window_open(now + timedelta(hours=23))


def test_a_send_records_the_contacts_last_sent_time(runtime) -> None:
    """Issue 13 item 1: contacts are filled by sends (enqueue makes the contact, the send stamps it)."""
    phone = new_phone()
    mid = enqueue(runtime, phone)
    assert send_message(mid, send_deps(runtime)) is Outcome.SENT
    with runtime.session_factory() as s:
        contact = s.get(Contact, phone)
    assert contact is not None and contact.last_sent_at == load(runtime, mid).sent_at


def test_the_migration_backfills_contacts_from_messages_and_inbound_webhook_events(database_url, tmp_path) -> None:
    """Issue 13 item 1: first seen and last sent from messages, last inbound from message.received."""
    from worker.db import make_engine, upgrade

    if database_url.startswith("postgresql"):
        admin = sa.create_engine(database_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        name = f"consent_backfill_{new_phone()}"
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = database_url.rsplit("/", 1)[0] + "/" + name
    else:
        url = f"sqlite:///{tmp_path / 'backfill.db'}"
    upgrade(url, "0003")
    engine = make_engine(url)
    t = datetime(2026, 11, 1, 12, 0)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO messages (phone_number_id, phone, content, status, attempts, created_at, "
                          "updated_at, sent_at) VALUES ('1', '966500000001', '{}', 'sent', 1, :a, :a, :b), "
                          "('1', '966500000001', '{}', 'pending', 0, :b, :b, NULL)"),
                  {"a": t, "b": t + timedelta(hours=1)})
        c.execute(sa.text("INSERT INTO webhook_events (dedupe_key, event_type, kind, phone, occurred_at, received_at, "
                          "matched, body) VALUES ('k1', 'message.received', 'inbound', '966500000001', :c, :c, false, '{}'), "
                          "('k2', 'message.received', 'inbound', '966500000002', :d, :d, false, '{}')"),
                  {"c": t + timedelta(hours=2), "d": t + timedelta(hours=3)})
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as c:
        rows = c.execute(sa.select(Contact.phone, Contact.first_seen_at, Contact.last_sent_at, Contact.last_inbound_at)
                         .order_by(Contact.phone)).all()
    engine.dispose()
    t = t.replace(tzinfo=timezone.utc)
    assert [tuple(r) for r in rows] == [("966500000001", t, t + timedelta(hours=1), t + timedelta(hours=2)),
                        ("966500000002", t + timedelta(hours=3), None, t + timedelta(hours=3))]
    if database_url.startswith("postgresql"):
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE "{name}"'))
        admin.dispose()


# --- item 2 and 3: the gate, fed by replies ------------------------------------------------------

def test_a_stop_reply_holds_the_next_ad_hoc_send_as_suppressed_and_start_lets_it_go(runtime, sandbox) -> None:
    """Issue 13 items 2 and 3: STOP (trimmed, any case) is in effect once the receiver's transaction
    committed; the next claim is held, the vendor gets nothing; START opts back in."""
    _, vendor = sandbox
    phone = new_phone()
    inbound(runtime, phone, "  sToP \n")
    assert opted_out(runtime, phone)
    held = enqueue(runtime, phone)
    assert send_message(held, send_deps(runtime)) is Outcome.SUPPRESSED
    msg = load(runtime, held)
    assert (msg.status, msg.last_error_code) == ("suppressed", "opted_out") and msg.finished_at is not None
    assert vendor.received(phone=phone) == []
    with runtime.session_factory() as s:
        [event] = s.scalars(sa.select(MessageEvent).where(MessageEvent.message_id == held)).all()
    assert (event.from_status, event.to_status) == ("queued", "suppressed") and "opted out" in event.reason

    inbound(runtime, phone, "START")
    later = enqueue(runtime, phone)
    assert send_message(later, send_deps(runtime)) is Outcome.SENT
    assert len(vendor.received(phone=phone)) == 1


@pytest.mark.parametrize("text", ["إيقاف", "الغاء", "توقف", "UNSUBSCRIBE", "stopall"])
def test_arabic_and_english_opt_out_keywords(runtime, text: str) -> None:
    """Issue 13 item 3: the default OPT_OUT_KEYWORDS cover English and Arabic."""
    phone = new_phone()
    inbound(runtime, phone, text)
    assert opted_out(runtime, phone)


def test_text_that_only_contains_a_keyword_is_not_an_opt_out(runtime) -> None:
    """Issue 13 item 3: the whole text must be the keyword ("don't stop" is not a request to stop)."""
    phone = new_phone()
    inbound(runtime, phone, "please don't stop sending")
    assert not opted_out(runtime, phone)
    with runtime.session_factory() as s:
        assert contacts.get_contact(s, phone).window_open()   # but it did open the window


def test_a_tap_on_an_opt_out_button_opts_out_with_source_button(runtime) -> None:
    """Issue 13 item 3: OPT_OUT_BUTTON_IDS (default stop, unsubscribe, opt_out)."""
    phone = new_phone()
    inbound(runtime, phone, button="stop")
    with runtime.session_factory() as s:
        view = contacts.get_contact(s, phone)
    assert view.opted_out and view.opt_out_source == "button"


def test_a_duplicate_webhook_delivery_records_one_consent_event(runtime) -> None:
    """Issue 13 item 3: the vendor retries; the dedupe key keeps one event, so one history row."""
    phone = new_phone()
    inbound(runtime, phone, "STOP", event_id="dup-1")
    inbound(runtime, phone, "STOP", event_id="dup-1")
    with runtime.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(ContactEvent).where(ContactEvent.phone == phone)) == 1


def test_keyword_settings_replace_the_defaults() -> None:
    """Issue 13 item 3: the lists are settings; an empty value means none."""
    s = Settings.from_env({"OPT_OUT_KEYWORDS": "Halt, Basta", "OPT_OUT_BUTTON_IDS": ""})
    rules = contacts.ConsentRules.from_settings(s)
    assert rules.for_text(" halt ") == "opt_out" and rules.for_text("STOP") is None
    assert rules.for_button("stop") is None and rules.for_text("unstop") == "opt_in"
    with pytest.raises(ConfigError, match="share stop"):
        Settings.from_env({"OPT_IN_KEYWORDS": "start,STOP"})


def test_require_open_window_holds_a_closed_window_and_sends_an_open_one(runtime, sandbox) -> None:
    """Issue 13 item 5: require_open_window on ad-hoc enqueue: closed -> suppressed(window_closed)."""
    _, vendor = sandbox
    never, stale, fresh = new_phone(), new_phone(), new_phone()
    with runtime.session_factory.begin() as s:
        contacts.record_inbound(s, stale, at=utcnow() - timedelta(hours=25))
        contacts.record_inbound(s, fresh, at=utcnow() - timedelta(hours=23))
    ids = {p: enqueue(runtime, p, require_open_window=True) for p in (never, stale, fresh)}
    outcomes = {p: send_message(i, send_deps(runtime)) for p, i in ids.items()}
    assert outcomes == {never: Outcome.SUPPRESSED, stale: Outcome.SUPPRESSED, fresh: Outcome.SENT}
    assert load(runtime, ids[stale]).last_error_code == "window_closed"
    assert [r["phone"] for r in vendor.received()] == [fresh]


def test_expiry_on_every_ad_hoc_entry_point(runtime, sandbox) -> None:
    """Issue 13 item 8: expires_at via enqueue_message and the send_task payload (ISO text)."""
    _, vendor = sandbox
    past = utcnow() - timedelta(seconds=1)
    by_python = enqueue(runtime, new_phone(), expires_at=past)
    by_payload = enqueue_payload({"phone": new_phone(), "body_text": "Hi", "buttons": BUTTONS,
                                  "expires_at": past.isoformat()}, runtime)["message_id"]
    still_valid = enqueue(runtime, new_phone(), expires_at=utcnow() + timedelta(hours=1))
    assert send_message(by_python, send_deps(runtime)) is Outcome.EXPIRED
    assert send_message(by_payload, send_deps(runtime)) is Outcome.EXPIRED
    assert send_message(still_valid, send_deps(runtime)) is Outcome.SENT
    assert load(runtime, by_payload).status == "expired" and len(vendor.received()) == 1


def test_bad_gate_fields_are_refused_with_their_names(runtime) -> None:
    """Issue 13 items 5 and 8: a naive or malformed expires_at, a non-boolean require_open_window."""
    with pytest.raises(MessageInvalid, match="expires_at"):
        enqueue(runtime, new_phone(), expires_at=datetime(2030, 1, 1))
    result = enqueue_payload({"phone": new_phone(), "body_text": "Hi", "buttons": BUTTONS,
                              "expires_at": "tomorrow", "require_open_window": "yes"}, runtime)
    assert result["status"] == "rejected"
    assert {e["field"] for e in result["errors"]} == {"expires_at", "require_open_window"}


# --- the dispatcher, campaigns, the frequency cap, retry -----------------------------------------

def seed_campaign(rt, phones: list[str], **fields) -> int:  # noqa: ANN001
    now = utcnow()
    with rt.session_factory.begin() as s:
        camp = Campaign(name="c", phone_number_id="1", template=CONTENT, status="running", scheduled_at=now,
                        started_at=now, **fields)
        s.add(camp)
        s.flush()
        s.execute(sa.insert(Message), [dict(campaign_id=camp.id, phone_number_id="1", phone=p, content=CONTENT,
                                            status="pending", expires_at=fields.get("expires_at"),
                                            require_open_window=fields.get("require_open_window", False))
                                       for p in phones])
        return camp.id


@pytest.fixture()
def published(monkeypatch):  # noqa: ANN001, ANN201
    sent: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, *, queue: sent.extend(ids))
    return sent


def test_the_dispatcher_never_publishes_opted_out_or_expired_recipients(empty_database, published) -> None:
    """Issue 13 items 2 and 8: held at the dispatcher's claim, in the same UPDATE, with an event each."""
    rt = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", AWAL_RATE_LIMIT="100/s"))
    ok, stopped = new_phone(), new_phone()
    with rt.session_factory.begin() as s:
        contacts.opt_out(s, stopped, source="import")
    live = seed_campaign(rt, [ok, stopped])
    late = seed_campaign(rt, [new_phone()], expires_at=utcnow() - timedelta(minutes=1))
    dispatch_tick(rt)
    with rt.session_factory() as s:
        rows = {(m.campaign_id, m.phone): m for m in s.scalars(sa.select(Message))}
        events = s.scalars(sa.select(MessageEvent)).all()
    assert [rows[(live, ok)].id] == published
    assert (rows[(live, stopped)].status, rows[(live, stopped)].last_error_code) == ("suppressed", "opted_out")
    [expired] = [m for (c, _), m in rows.items() if c == late]
    assert expired.status == "expired" and expired.enqueued_at is None
    assert sorted(e.to_status for e in events) == ["expired", "suppressed"]
    rt.close()


def test_an_opt_out_arriving_mid_campaign_holds_that_phones_queued_message(runtime, published) -> None:
    """Issue 13 item 2: checked at claim time, the last moment: a task already on the broker is held."""
    phone = new_phone()
    campaign_id = seed_campaign(runtime, [phone])
    dispatch_tick(runtime)
    [mid] = published
    inbound(runtime, phone, "STOP")                 # arrives while the task waits on the broker
    assert send_message(mid, send_deps(runtime)) is Outcome.SUPPRESSED
    with runtime.session_factory() as s:
        assert campaigns.status_counts(s, campaign_id)["suppressed"] == 1


def test_the_frequency_cap_holds_campaign_messages_and_exempts_ad_hoc(runtime) -> None:
    """Issue 13 item 7: MARKETING_FREQUENCY_CAP=2/7d: a third campaign message in 7 days is held."""
    rt = make_runtime(_env_of(runtime, MARKETING_FREQUENCY_CAP="2/7d"))
    phone = new_phone()
    sent_before = utcnow() - timedelta(days=1)
    old = utcnow() - timedelta(days=8)
    with rt.session_factory.begin() as s:
        for at in (sent_before, old):   # one campaign message in the period, one before it
            camp = Campaign(name="old", phone_number_id="1", template=CONTENT, status="completed")
            s.add(camp)
            s.flush()
            s.execute(sa.insert(Message), [dict(campaign_id=camp.id, phone_number_id="1", phone=phone, content=CONTENT,
                                                status="sent", sent_at=at)])
        s.execute(sa.insert(Message), [dict(campaign_id=None, phone_number_id="1", phone=phone, content=CONTENT,
                                            status="sent", sent_at=sent_before)])   # ad-hoc: not counted
    second, third = (seed_campaign(rt, [phone]) for _ in range(2))
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Message).where(Message.campaign_id.in_([second, third])).values(status="queued"))
        ids = {c: s.scalar(sa.select(Message.id).where(Message.campaign_id == c)) for c in (second, third)}
    assert send_message(ids[second], send_deps(rt)) is Outcome.SENT       # 1 in the period before it
    assert send_message(ids[third], send_deps(rt)) is Outcome.SUPPRESSED  # 2 now
    assert load(rt, ids[third]).last_error_code == "frequency_cap"
    assert send_message(enqueue(rt, phone), send_deps(rt)) is Outcome.SENT  # ad-hoc is exempt
    rt.close()


def test_frequency_cap_setting_parses_and_refuses_nonsense() -> None:
    """Issue 13 item 7: default off; e.g. 2/7d, 1/24h, 3/1w."""
    assert Settings.from_env({}).marketing_frequency_cap is None
    cap = Settings.from_env({"MARKETING_FREQUENCY_CAP": "2/7d"}).marketing_frequency_cap
    assert (cap.count, cap.period_s, str(cap)) == (2, 7 * 86400, "2/7d")
    assert FrequencyCap.parse("1/24h").period_s == 86400
    for bad in ("2 per week", "0/7d", "2/7y"):
        with pytest.raises(ConfigError, match="MARKETING_FREQUENCY_CAP"):
            Settings.from_env({"MARKETING_FREQUENCY_CAP": bad})


def test_retry_never_requeues_to_an_opted_out_contact_until_they_opt_back_in(runtime) -> None:
    """Issue 13 item 2: `retry` of suppressed and failed messages skips opted-out contacts."""
    phone = new_phone()
    campaign_id = seed_campaign(runtime, [phone, new_phone()])
    with runtime.session_factory.begin() as s:
        contacts.opt_out(s, phone, source="keyword")
        s.execute(sa.update(Message).where(Message.campaign_id == campaign_id, Message.phone == phone)
                  .values(status="suppressed", last_error_code="opted_out"))
        s.execute(sa.update(Message).where(Message.campaign_id == campaign_id, Message.phone != phone)
                  .values(status="failed", last_error_code="x"))
    selection = RetrySelection(campaign_id=campaign_id, status=MessageStatus.SUPPRESSED)
    with runtime.session_factory() as s:
        plan = plan_retry(s, selection)
        mid = s.scalar(sa.select(Message.id).where(Message.campaign_id == campaign_id, Message.phone == phone))
    assert (plan.total, plan.opted_out) == (0, 1)
    assert requeue(runtime.session_factory, selection).requeued == 0
    with runtime.session_factory() as s, pytest.raises(RetryRefused, match="opted out"):
        plan_retry(s, RetrySelection(message_id=mid))
    with runtime.session_factory.begin() as s:
        contacts.opt_in(s, phone, source="keyword")
    assert requeue(runtime.session_factory, selection).requeued == 1
    assert load(runtime, mid).status == "queued"


def test_campaign_import_reports_opted_out_recipients_and_copies_the_gate_fields(runtime, tmp_path) -> None:
    """Issue 13 items 2, 5 and 8: import counts opted-out recipients; each message carries
    require_open_window and expires_at from its campaign."""
    stopped = new_phone()
    with runtime.session_factory.begin() as s:
        contacts.opt_out(s, stopped, source="operator")
    csv_path = tmp_path / "r.csv"
    csv_path.write_text(f"phone\n{stopped}\n{new_phone()}\n{new_phone()}\n")
    until = utcnow() + timedelta(hours=6)
    campaign_id, result = campaigns.create_with_recipients(
        runtime.session_factory, csv_path, name="x", phone_number_id="1", template=CONTENT,
        require_open_window=True, expires_at=until)
    assert (result.imported, result.opted_out) == (3, 1)
    with runtime.session_factory() as s:
        rows = s.scalars(sa.select(Message).where(Message.campaign_id == campaign_id)).all()
        known = s.scalar(sa.select(sa.func.count()).select_from(Contact).where(Contact.phone.in_([m.phone for m in rows])))
    assert {(m.require_open_window, m.expires_at) for m in rows} == {(True, until)}
    assert known == 3   # the import made a contact for every recipient


def test_opt_out_button_is_appended_validated_and_counts_toward_three(runtime) -> None:
    """Issue 13 item 4: --opt-out-button "stop:Stop offers"."""
    ids = runtime.settings.opt_out_button_ids
    two = {"body_text": "Hi", "buttons": [{"id": "a", "title": "A"}, {"id": "b", "title": "B"}]}
    assert campaigns.with_opt_out_button(two, "stop:Stop offers", opt_out_button_ids=ids)["buttons"][-1] == {
        "id": "stop", "title": "Stop offers"}
    with pytest.raises(MessageInvalid, match="OPT_OUT_BUTTON_IDS"):
        campaigns.with_opt_out_button(two, "nope:No more", opt_out_button_ids=ids)
    with pytest.raises(MessageInvalid, match="ID:TITLE"):
        campaigns.with_opt_out_button(two, "stop", opt_out_button_ids=ids)
    three = {**two, "buttons": two["buttons"] + [{"id": "c", "title": "C"}]}
    with runtime.session_factory.begin() as s, pytest.raises(MessageInvalid):
        campaigns.create_campaign(s, name="x", phone_number_id="1",
                                  template=campaigns.with_opt_out_button(three, "stop:Stop", opt_out_button_ids=ids))


def test_suppression_list_import_streams_in_batches_and_reports_new_and_known(runtime, tmp_path) -> None:
    """Issue 13 item 4: contacts import --optouts: new opt-outs, already opted out, rejected rows."""
    known = new_phone()
    with runtime.session_factory.begin() as s:
        contacts.opt_out(s, known, source="keyword")
    fresh = [new_phone() for _ in range(5)]
    path = tmp_path / "optouts.csv"
    path.write_text("phone,reason\n" + "".join(f"+{p},from CRM\n" for p in fresh) + f"{known},\nnot-a-phone,x\n{fresh[0]},again\n")
    result = import_optouts(runtime, path, batch_rows=2)
    assert (result.opted_out, result.already_opted_out, result.rejected) == (5, 2, 1)
    assert result.problems and result.problems[0].startswith("line 8:")
    with runtime.session_factory() as s:
        view = contacts.get_contact(s, fresh[0])
    assert view.opted_out and view.opt_out_source == "import" and view.opt_out_note == "from CRM"
    assert [h.source for h in view.history] == ["import"]


def test_the_dispatcher_holds_closed_windows_and_capped_contacts_without_publishing(empty_database, published) -> None:
    """Issue 13 items 5 and 7: --require-open-window and MARKETING_FREQUENCY_CAP judged at the
    dispatcher's claim too (once per row), so a held recipient costs no task and no rate slot."""
    rt = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", AWAL_RATE_LIMIT="100/s",
                                MARKETING_FREQUENCY_CAP="1/1d"))
    open_, closed, capped_phone = new_phone(), new_phone(), new_phone()
    with rt.session_factory.begin() as s:
        contacts.record_inbound(s, open_, at=utcnow() - timedelta(hours=1))
        contacts.record_inbound(s, capped_phone, at=utcnow() - timedelta(hours=1))
        old = Campaign(name="earlier", phone_number_id="1", template=CONTENT, status="completed")
        s.add(old)
        s.flush()
        s.add(Message(campaign_id=old.id, phone_number_id="1", phone=capped_phone, content=CONTENT, status="sent",
                      sent_at=utcnow() - timedelta(hours=2)))
    campaign_id = seed_campaign(rt, [open_, closed, capped_phone], require_open_window=True)
    dispatch_tick(rt)
    with rt.session_factory() as s:
        rows = {m.phone: m for m in s.scalars(sa.select(Message).where(Message.campaign_id == campaign_id))}
    assert published == [rows[open_].id]
    assert (rows[closed].status, rows[closed].last_error_code) == ("suppressed", "window_closed")
    assert (rows[capped_phone].status, rows[capped_phone].last_error_code) == ("suppressed", "frequency_cap")
    rt.close()
