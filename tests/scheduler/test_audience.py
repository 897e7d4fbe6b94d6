"""Campaigns from a segment or a follow-up (resolved at start, then frozen) and recurring series,
on SQLite and Postgres."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler import audience, series
from scheduler.campaigns import create_campaign
from tests.conftest import make_runtime, stack_env
from worker import lifecycle
from worker.contacts import segments
from worker.errors import MessageInvalid
from worker.models import Campaign, Contact, ContactTag, Message, utcnow
from worker.status import CampaignStatus, MessageStatus

BUTTONS = [{"id": "reserve", "title": "Reserve"}, {"id": "later", "title": "Later"}]
HELLO = {"body_text": "Hello {{name}} from {{city}}", "buttons": BUTTONS}
PLAIN = {"body_text": "Spring sale", "buttons": BUTTONS}


@pytest.fixture
def rt(empty_database: str) -> Any:
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9",
                                     AWAL_PHONE_NUMBER_ID="123456"))
    yield runtime
    runtime.close()


def add_contacts(rt: Any, people: dict[str, dict[str, str]], *, opted_out: set[str] = frozenset(),
                 tags: dict[str, list[str]] | None = None) -> None:
    now = utcnow()
    with rt.session_factory.begin() as session:
        for phone, attributes in people.items():
            session.add(Contact(phone=phone, first_seen_at=now, updated_at=now, attributes=attributes,
                                opted_out_at=now if phone in opted_out else None))
        session.flush()
        for phone, names in (tags or {}).items():
            for tag in names:
                session.add(ContactTag(phone=phone, tag=tag))


def segment(rt: Any, rules: dict, name: str = "riyadh") -> int:
    return segments.create_segment(rt, name=name, rules=rules, actor="test").id


def messages_of(rt: Any, campaign_id: int) -> dict[str, Message]:
    with rt.session_factory() as session:
        return {m.phone: m for m in session.scalars(sa.select(Message).where(Message.campaign_id == campaign_id))}


def campaign(rt: Any, campaign_id: int) -> Campaign:
    with rt.session_factory() as session:
        return lifecycle.load(session, campaign_id)


RIYADH = {"attribute": "city", "equals": "Riyadh"}


def test_members_are_resolved_at_start_then_frozen_and_opted_out_never_join(rt: Any) -> None:
    add_contacts(rt, {"966500000001": {"name": "Amal", "city": "Riyadh"},
                      "966500000002": {"name": "Badr", "city": "Jeddah"},
                      "966500000003": {"name": "Dana", "city": "Riyadh"}}, opted_out={"966500000003"})
    seg = segment(rt, RIYADH)
    start = utcnow() + timedelta(minutes=5)
    c = audience.create_audience_campaign(rt, name="From a segment", template=HELLO, segment_id=seg, at=start, actor="test")
    assert c.status == CampaignStatus.SCHEDULED.value and c.recipients_imported == 0
    add_contacts(rt, {"966500000004": {"name": "Eman", "city": "Riyadh"}})     # joins before the start: a member
    assert audience.resolve_due(rt, utcnow()) == []                             # not due yet: nothing resolved
    assert audience.resolve_due(rt, start) == [c.id]
    add_contacts(rt, {"966500000005": {"name": "Fahd", "city": "Riyadh"}})     # joins after: frozen out
    audience.resolve_due(rt, start + timedelta(seconds=1))
    got = messages_of(rt, c.id)
    assert sorted(got) == ["966500000001", "966500000004"]
    assert got["966500000001"].content["body_text"] == "Hello Amal from Riyadh"
    assert all(m.status == MessageStatus.PENDING.value for m in got.values())
    stored = campaign(rt, c.id)
    assert stored.audience_resolved_at is not None and stored.recipients_imported == 2 and stored.rows_rejected == 0
    with rt.session_factory.begin() as session:
        assert lifecycle.start_due(session, start) == [c.id]


def test_a_campaign_is_not_started_before_its_audience_is_resolved(rt: Any) -> None:
    add_contacts(rt, {"966500000001": {"city": "Riyadh"}})
    c = audience.create_audience_campaign(rt, name="x", template=PLAIN, segment_id=segment(rt, RIYADH), actor="test")
    with rt.session_factory.begin() as session:
        assert lifecycle.start_due(session, utcnow() + timedelta(seconds=1)) == []
    audience.resolve_due(rt, utcnow() + timedelta(seconds=1))
    with rt.session_factory.begin() as session:
        assert lifecycle.start_due(session, utcnow() + timedelta(seconds=1)) == [c.id]


def test_a_member_without_a_placeholders_attribute_is_rejected_with_the_reason(rt: Any) -> None:
    add_contacts(rt, {"966500000001": {"name": "Amal", "city": "Riyadh"}, "966500000002": {"city": "Riyadh"}})
    c = audience.create_audience_campaign(rt, name="x", template=HELLO, segment_id=segment(rt, RIYADH), actor="test")
    assert audience.resolve(rt.session_factory, c.id)
    got = messages_of(rt, c.id)
    assert got["966500000001"].status == MessageStatus.PENDING.value
    rejected = got["966500000002"]
    assert rejected.status == MessageStatus.REJECTED.value and rejected.last_error_code == audience.MISSING_ATTRIBUTE
    assert "attribute 'name'" in rejected.last_error_message
    stored = campaign(rt, c.id)
    assert (stored.recipients_imported, stored.rows_rejected) == (1, 1)
    with rt.session_factory() as session:
        assert audience.rejected_members(session, c.id) == [("966500000002", rejected.last_error_message)]


@pytest.mark.parametrize("template", [PLAIN, HELLO], ids=["same-for-all", "filled-per-member"])
def test_resolution_goes_on_where_it_stopped_with_nobody_twice_or_skipped(rt: Any, template: dict) -> None:
    people = {f"9665000001{i:02d}": {"name": f"n{i}", "city": "Riyadh"} for i in range(23)}
    add_contacts(rt, people)
    c = audience.create_audience_campaign(rt, name="x", template=template, segment_id=segment(rt, RIYADH), actor="test")
    # a deadline already past: one batch per call, as a tick whose budget ran out
    calls = 0
    while not audience.resolve(rt.session_factory, c.id, deadline=0.0, batch=5):
        calls += 1
        assert calls < 10
    assert calls == 4
    assert sorted(messages_of(rt, c.id)) == sorted(people)
    assert campaign(rt, c.id).recipients_imported == 23
    assert audience.resolve(rt.session_factory, c.id)        # done: a second beat's call changes nothing
    assert len(messages_of(rt, c.id)) == 23


def test_a_deleted_segment_pauses_the_campaign_with_the_reason(rt: Any) -> None:
    add_contacts(rt, {"966500000001": {"city": "Riyadh"}})
    seg = segment(rt, RIYADH)
    c = audience.create_audience_campaign(rt, name="x", template=PLAIN, segment_id=seg, actor="test")
    segments.delete_segment(rt, seg, actor="test")
    assert audience.resolve_due(rt, utcnow() + timedelta(seconds=1)) == []
    stored = campaign(rt, c.id)
    assert stored.status == CampaignStatus.PAUSED.value and "audience cannot be resolved" in stored.pause_reason


def _sent_campaign(rt: Any, outcomes: dict[str, dict[str, Any]]) -> int:
    """A finished campaign: phone -> the columns of its message (sent, read, tapped)."""
    now = utcnow()
    add_contacts(rt, {p: {"name": p[-2:]} for p in outcomes})
    with rt.session_factory.begin() as session:
        source = create_campaign(session, name="source", phone_number_id="123456", template=PLAIN, draft=True)
        for phone, columns in outcomes.items():
            session.add(Message(campaign_id=source.id, phone_number_id="123456", phone=phone, content=PLAIN,
                                status=MessageStatus.SENT.value, sent_at=now, **columns))
        return source.id


@pytest.mark.parametrize(("result", "button", "expected"), [
    ("tapped", "reserve", ["966500000001"]),
    ("tapped_any", None, ["966500000001", "966500000002"]),
    ("not_tapped", None, ["966500000003", "966500000004"]),
    ("not_read", None, ["966500000004"]),
])
def test_a_follow_up_reaches_that_result_of_the_campaign(rt: Any, result: str, button: str | None, expected: list) -> None:
    now = utcnow()
    source = _sent_campaign(rt, {
        "966500000001": dict(read_at=now, replied_at=now, reply_button_id="reserve"),
        "966500000002": dict(read_at=now, replied_at=now, reply_button_id="later"),
        "966500000003": dict(read_at=now),
        "966500000004": {},
    })
    follow = audience.create_follow_up(rt, source, template={"body_text": "Thanks {{name}}", "buttons": BUTTONS[:1]},
                                       result=result, button=button, actor="test")
    assert follow.follow_up_of == source and follow.name.startswith("Follow-up of source")
    assert audience.resolve(rt.session_factory, follow.id)
    assert sorted(messages_of(rt, follow.id)) == expected


def test_a_follow_up_names_a_button_the_campaign_does_not_have(rt: Any) -> None:
    source = _sent_campaign(rt, {"966500000001": {}})
    with pytest.raises(MessageInvalid) as caught:
        audience.create_follow_up(rt, source, template=PLAIN, result="tapped", button="nope", actor="test")
    assert "nope" in str(caught.value)
    with rt.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Campaign)) == 1   # nothing created


@pytest.mark.parametrize(("options", "field"), [
    (dict(segment_id=None, rules=None), "segment"),
    (dict(every="0d"), "every"),
    (dict(every="7x"), "every"),
    (dict(every="30m"), "every"),
    (dict(until="2020-01-01T00:00:00Z"), "until"),
    (dict(every="1d", until="2020-01-01T00:00:00Z"), "until"),
    (dict(segment_id=999), "segment"),
])
def test_bad_audience_options_are_refused_by_field_and_create_nothing(rt: Any, options: dict, field: str) -> None:
    seg = segment(rt, RIYADH)
    kwargs: dict[str, Any] = dict(name="x", template=PLAIN, segment_id=seg, actor="test")
    kwargs.update(options)
    with pytest.raises(MessageInvalid) as caught:
        audience.create_audience_campaign(rt, **kwargs)
    assert field in [p.field for p in caught.value.problems]
    with rt.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Campaign)) == 0


def test_a_series_starts_one_run_per_slot_and_a_missed_slot_once(rt: Any) -> None:
    add_contacts(rt, {"966500000001": {"city": "Riyadh"}, "966500000002": {"city": "Riyadh"}})
    first = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    parent = audience.create_audience_campaign(rt, name="Weekly", template=PLAIN, segment_id=segment(rt, RIYADH),
                                               at=first, every="1d", actor="test")
    assert parent.series_every_s == 86_400 and parent.series_next_at == first
    with rt.session_factory.begin() as session:      # a series never starts as a campaign of its own
        assert lifecycle.start_due(session, first + timedelta(days=9)) == []
    assert series.start_due_runs(rt, first - timedelta(seconds=1)) == []
    run1 = series.start_due_runs(rt, first + timedelta(seconds=5))
    assert len(run1) == 1 and series.start_due_runs(rt, first + timedelta(seconds=6)) == []   # that slot is taken
    # beat was down for three days and a half: one run, and the next slot after now
    back = first + timedelta(days=3, hours=12)
    run2 = series.start_due_runs(rt, back)
    assert len(run2) == 1 and series.start_due_runs(rt, back) == []
    assert campaign(rt, parent.id).series_next_at == first + timedelta(days=4)
    for run_id in run1 + run2:
        run = campaign(rt, run_id)
        assert run.series_id == parent.id and run.audience == {"segment": parent.segment_id}
        assert audience.resolve(rt.session_factory, run_id)
        # a person gets each run at most once
        assert sorted(messages_of(rt, run_id)) == ["966500000001", "966500000002"]
    with rt.session_factory() as session:
        assert [r.id for r in series.runs_of(session, parent.id)] == run2 + run1


def test_a_paused_series_starts_no_run_and_until_completes_it(rt: Any) -> None:
    from scheduler.campaigns import pause_campaign, resume_campaign

    first = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    parent = audience.create_audience_campaign(rt, name="Daily", template=PLAIN, segment_id=segment(rt, RIYADH),
                                               at=first, every="1d", until=first + timedelta(days=1, hours=1),
                                               actor="test")
    pause_campaign(rt, parent.id, actor="test")
    assert series.start_due_runs(rt, first + timedelta(minutes=1)) == []
    resume_campaign(rt, parent.id, actor="test")
    assert campaign(rt, parent.id).status == CampaignStatus.SCHEDULED.value
    assert len(series.start_due_runs(rt, first + timedelta(minutes=1))) == 1
    assert len(series.start_due_runs(rt, first + timedelta(days=1, minutes=1))) == 1   # the last slot before until
    done = campaign(rt, parent.id)
    assert done.status == CampaignStatus.COMPLETED.value and done.series_next_at is None
    assert series.start_due_runs(rt, first + timedelta(days=5)) == []


def test_deleting_the_segment_pauses_the_series_with_the_reason(rt: Any) -> None:
    seg = segment(rt, RIYADH)
    parent = audience.create_audience_campaign(rt, name="Weekly", template=PLAIN, segment_id=seg, every="1w", actor="test")
    segments.delete_segment(rt, seg, actor="test")
    stored = campaign(rt, parent.id)
    assert stored.status == CampaignStatus.PAUSED.value and str(seg) in stored.pause_reason
    assert series.start_due_runs(rt, utcnow() + timedelta(days=30)) == []


def test_the_dispatcher_tick_starts_a_series_run_resolves_it_and_serves_it(rt: Any, monkeypatch: Any) -> None:
    from scheduler import dispatcher

    sent: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, *, queue: sent.extend(ids))
    add_contacts(rt, {"966500000001": {"city": "Riyadh"}, "966500000002": {"city": "Riyadh"}})
    parent = audience.create_audience_campaign(rt, name="Daily", template=PLAIN, segment_id=segment(rt, RIYADH),
                                               every="1d", actor="test")
    report = dispatcher.dispatch_tick(rt, utcnow() + timedelta(seconds=1))
    assert len(report.runs) == 1 and report.resolved == report.runs and report.started == report.runs
    run = report.runs[0]
    assert sorted(m.id for m in messages_of(rt, run).values()) == sorted(sent)
    assert campaign(rt, parent.id).status == CampaignStatus.SCHEDULED.value      # the series itself never runs


def test_recipient_time_zones_are_stored_at_resolution_and_a_number_without_one_is_rejected(rt: Any) -> None:
    add_contacts(rt, {"966500000001": {"city": "Riyadh"}, "12085550100": {"city": "Riyadh"},
                      "80012345678": {"city": "Riyadh"}})
    c = audience.create_audience_campaign(rt, name="x", template=PLAIN, segment_id=segment(rt, RIYADH),
                                          window="09:00-21:00", tz="recipient", actor="test")
    assert audience.resolve(rt.session_factory, c.id)
    got = messages_of(rt, c.id)
    assert got["966500000001"].zone == "Asia/Riyadh" and "America/Boise" in got["12085550100"].zone
    assert got["80012345678"].status == MessageStatus.REJECTED.value and got["80012345678"].last_error_code == audience.NO_ZONE
    assert campaign(rt, c.id).zones == {"Asia/Riyadh": 1, got["12085550100"].zone: 1}
