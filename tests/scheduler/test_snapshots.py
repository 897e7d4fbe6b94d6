"""Tally snapshots (scheduler.snapshots), on SQLite and Postgres: a stored snapshot reads back as the
scan found it, an older scan never replaces a newer one, a deleted campaign takes its snapshot
along, and beat's sweep recounts what has activity (a running campaign, one whose status changed,
a completed one whose messages webhooks still touch) and leaves a quiet one alone."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler import campaigns, report, snapshots
from scheduler.sweeper import sweep
from tests.conftest import make_runtime, stack_env
from worker.models import Campaign, CampaignTally, Message, utcnow
from worker.status import CampaignStatus
from worker.webhooks.models import WebhookEvent

TEMPLATE = {"body_text": "Hello", "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]}


@pytest.fixture()
def rt(empty_database):  # noqa: ANN001
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9"))
    yield runtime
    runtime.close()


def make_campaign(rt, status: str, sent: int = 3, pending: int = 2, taps: int = 1) -> int:  # noqa: ANN001
    now = utcnow()
    with rt.session_factory.begin() as s:
        c = campaigns.create_campaign(s, name=f"c-{status}", phone_number_id="123456", template=TEMPLATE)
        c.status = status
        for i in range(sent + pending):
            done = i < sent
            s.add(Message(campaign_id=c.id, phone_number_id="123456", phone=f"96650{c.id:03d}{i:04d}", content=TEMPLATE,
                          status="sent" if done else "pending", sent_at=now if done else None,
                          delivered_at=now if done else None, vendor_message_id=f"wamid.{c.id}.{i}" if done else None,
                          replied_at=now if i < taps else None, reply_button_id="yes" if i < taps else None,
                          reply_button_title="Yes" if i < taps else None))
        s.flush()
        return c.id


def stored(rt, campaign_id: int) -> snapshots.Snapshot | None:  # noqa: ANN001
    with rt.read_sessions() as s:
        return snapshots.load(s, campaign_id)


def age_snapshot(rt, campaign_id: int, seconds: float) -> None:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        row = s.get(CampaignTally, campaign_id)
        row.taken_at = row.taken_at - timedelta(seconds=seconds)


def test_a_stored_snapshot_reads_back_as_the_scan_found_it(rt) -> None:  # noqa: ANN001
    cid = make_campaign(rt, "running")
    taken = snapshots.refresh(rt, cid)
    back = stored(rt, cid)
    with rt.read_sessions() as s:
        direct = report.tally(s, cid)
    assert back == taken
    assert back.tally.counts == direct.counts and back.tally.counts["sent"] == 3 and back.tally.counts["pending"] == 2
    assert back.tally.funnel.taps == [("yes", "Yes", 1)] and back.tally.funnel.delivered == 3


def test_an_older_scan_never_replaces_a_newer_snapshot(rt) -> None:  # noqa: ANN001
    cid = make_campaign(rt, "running")
    newer = snapshots.refresh(rt, cid)
    older = replace(newer, taken_at=newer.taken_at - timedelta(seconds=10), scan_ms=1)
    snapshots.store(rt, older)
    assert stored(rt, cid).taken_at == newer.taken_at


def test_a_deleted_campaign_takes_its_snapshot_along(rt) -> None:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        cid = campaigns.create_campaign(s, name="draft", phone_number_id="123456", template=TEMPLATE, draft=True).id
        s.add(Message(campaign_id=cid, phone_number_id="123456", phone="966500000001", content=TEMPLATE))
    snapshots.refresh(rt, cid)
    campaigns.discard_draft(rt, cid)
    with rt.read_sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(CampaignTally)) == 0


def test_the_sweep_counts_a_running_campaign_that_has_no_snapshot(rt) -> None:  # noqa: ANN001
    cid = make_campaign(rt, "running")
    result = sweep(rt)
    assert result.tallies_refreshed == 1 and stored(rt, cid).tally.counts["sent"] == 3


def test_the_sweep_recounts_running_and_just_changed_campaigns_and_leaves_quiet_ones(rt) -> None:  # noqa: ANN001
    running, quiet, changed = (make_campaign(rt, s) for s in ("running", "completed", "paused"))
    for cid in (running, quiet, changed):
        snapshots.refresh(rt, cid)
        age_snapshot(rt, cid, 60)
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Campaign).where(Campaign.id.in_([running, quiet])).values(updated_at=utcnow() - timedelta(seconds=120)))
        s.execute(sa.update(Campaign).where(Campaign.id == changed).values(status=CampaignStatus.CANCELLED.value))
    before = {cid: stored(rt, cid).taken_at for cid in (running, quiet, changed)}
    sweep(rt)
    after = {cid: stored(rt, cid).taken_at for cid in (running, quiet, changed)}
    assert after[running] > before[running] and after[changed] > before[changed]
    assert after[quiet] == before[quiet]


def test_a_completed_campaign_is_recounted_while_webhooks_still_touch_its_messages(rt) -> None:  # noqa: ANN001
    # Given a completed campaign counted a minute ago, quiet since
    cid = make_campaign(rt, "completed", sent=3, pending=0, taps=0)
    snapshots.refresh(rt, cid)
    age_snapshot(rt, cid, 60)
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Campaign).where(Campaign.id == cid).values(updated_at=utcnow() - timedelta(seconds=120)))
    sweep(rt)
    quiet = stored(rt, cid)
    assert quiet.tally.funnel.replied == 0
    # When a button tap arrives for one of its messages (the receiver applies it and keeps the event)
    now = utcnow()
    with rt.session_factory.begin() as s:
        message = s.scalars(sa.select(Message).where(Message.campaign_id == cid).order_by(Message.id)).first()
        message.replied_at, message.reply_button_id, message.reply_button_title = now, "yes", "Yes"
        s.add(WebhookEvent(dedupe_key=hashlib.sha256(b"tap").hexdigest(), event_type="message.received", kind="reply",
                           vendor_message_id=message.vendor_message_id, occurred_at=now, received_at=now, matched=True,
                           message_id=message.id, applied_at=now, body="{}"))
    age_snapshot(rt, cid, 60)   # the snapshot is older than the tap
    sweep(rt)
    # Then the next sweep counts it again, tap included
    after = stored(rt, cid)
    assert after.taken_at > quiet.taken_at and after.tally.funnel.replied == 1
    assert after.tally.funnel.taps == [("yes", "Yes", 1)]


def test_a_sweep_within_its_budget_leaves_the_rest_for_the_next(rt) -> None:  # noqa: ANN001
    first, second = make_campaign(rt, "running"), make_campaign(rt, "running")
    assert snapshots.refresh_due(rt, budget_s=0.0) == 0
    assert stored(rt, first) is None and stored(rt, second) is None
    assert snapshots.refresh_due(rt) == 2
