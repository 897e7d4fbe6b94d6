"""Issue 12 item 7: no row is left where nothing will move it.

The invariant, over every campaign status x every send outcome, with the status change happening
while the send is in flight (a stub client changes the campaign's status inside send(), the way an
operator or the dispatcher would at that moment): each row ends in a state from which its campaign
can finish, and once the operator resumes (or schedules) what is paused (or a draft), the dispatcher
brings every campaign to a final status. send.send_message is called directly, on SQLite and Postgres.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from typing import Callable

import pytest
import sqlalchemy as sa

from scheduler import campaigns, dispatcher
from scheduler.dispatcher import dispatch_tick
from tests.conftest import make_runtime, stack_env
from worker.errors import AmbiguousError, AuthenticationFailed, PermanentError, RateLimited, ServerError
from worker.models import Campaign, Message, MessageEvent, utcnow
from worker.ratelimit.base import Reservation
from worker.sending.client import AttemptRecord, SendResult
from worker.sending.send import send_deps, send_message
from worker.status import CampaignStatus, MessageStatus

CONTENT = {"body_text": "Hi", "buttons": [{"id": "a", "title": "A"}]}
FINAL = {s.value for s in MessageStatus if s.is_final}
FINAL_CAMPAIGN = {CampaignStatus.COMPLETED.value, CampaignStatus.CANCELLED.value}
OUTCOMES = ("sent", "permanent", "transient", "429", "rate_slot", "deferred_before_claim", "401", "ambiguous")
STATUSES = [s.value for s in CampaignStatus]


def _set_status(rt, campaign_id: int, status: str) -> None:  # noqa: ANN001
    """What happens to the campaign while its message is in a worker's hands (committed at once)."""
    with rt.session_factory.begin() as s:
        if status == CampaignStatus.PAUSED.value:
            campaigns.pause(s, campaign_id)
        elif status == CampaignStatus.CANCELLED.value:
            campaigns.cancel(s, campaign_id)
        elif status == CampaignStatus.COMPLETED.value:
            # The only way there with a send in flight: the sweeper gave up on the slow worker
            # (sending -> unknown) and the dispatcher completed the campaign; then the answer comes.
            s.execute(sa.update(Message).where(Message.campaign_id == campaign_id, Message.status == "sending")
                      .values(status="unknown", finished_at=utcnow()))
            s.execute(sa.update(Campaign).where(Campaign.id == campaign_id).values(status=status, finished_at=utcnow()))
        elif status != CampaignStatus.RUNNING.value:   # draft/scheduled: no operator path from running
            s.execute(sa.update(Campaign).where(Campaign.id == campaign_id).values(status=status))


class InFlightClient:
    """Plays the vendor: changes the campaign's status mid-request, then answers with `outcome`."""

    def __init__(self, rt, outcome: str, status_by_phone: dict[str, tuple[int, str]], limiter: "RefusingLimiter") -> None:  # noqa: ANN001
        self.rt, self.outcome, self.status_by_phone, self.limiter = rt, outcome, status_by_phone, limiter

    def send(self, message, phone_number_id, *, before_request=None, on_attempt=None) -> SendResult:  # noqa: ANN001
        before_request()                            # the first request holds its slot already
        campaign_id, status = self.status_by_phone[message.phone]
        _set_status(self.rt, campaign_id, status)
        if self.outcome == "rate_slot":             # an in-client retry that finds no rate slot soon
            self.limiter.refuse = True
            before_request()
        http = {"sent": 200, "permanent": 400, "transient": 503, "429": 429, "401": 401}.get(self.outcome)
        on_attempt(AttemptRecord(started_at=utcnow(), duration_ms=3, http_status=http, outcome=self.outcome))
        if self.outcome == "sent":
            return SendResult(vendor_id=1, message_id=f"wamid-{message.phone}", vendor_status="sent", http_status=200)
        raise {
            "permanent": PermanentError("invalid parameter", code="validation_failed", http_status=400),
            "transient": ServerError("service unavailable", code="http_503", http_status=503),
            "429": RateLimited("too many requests", retry_after=0.01, http_status=429),
            "401": AuthenticationFailed("bad signature", code="http_401", http_status=401),
            "ambiguous": AmbiguousError("read timeout", code="read_timeout"),
        }[self.outcome]


class AcceptingClient:
    def send(self, message, phone_number_id, *, before_request=None, on_attempt=None) -> SendResult:  # noqa: ANN001
        before_request()
        on_attempt(AttemptRecord(started_at=utcnow(), duration_ms=3, http_status=200, outcome="sent"))
        return SendResult(vendor_id=1, message_id=f"wamid-{message.phone}", vendor_status="sent", http_status=200)


class RefusingLimiter:
    """The real limiter, except that it refuses a slot when told to (or, for a deferral before the
    claim, changes the campaign's status while the worker waits and then refuses)."""

    def __init__(self, inner, on_acquire: Callable[[], None] | None = None) -> None:  # noqa: ANN001
        self.inner, self.on_acquire, self.refuse = inner, on_acquire, False

    def acquire(self, scope: str, *, max_wait_s: float) -> Reservation:
        if self.on_acquire is not None:
            self.on_acquire()
            self.refuse = True
        if self.refuse:
            return Reservation(granted=False, wait_s=0.01, reason="test: no slot")
        return self.inner.acquire(scope, max_wait_s=max_wait_s)

    def __getattr__(self, name: str):  # noqa: ANN204 - observe, block, state: the real limiter's
        return getattr(self.inner, name)


@pytest.fixture()
def rt(empty_database):  # noqa: ANN001, ANN201
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9",
                                     AWAL_RATE_LIMIT="1000/s", AWAL_RATE_BURST="100",
                                     REQUEUE_BACKOFF_BASE_S="0.01", REQUEUE_BACKOFF_MAX_S="0.01"))
    yield runtime
    runtime.close()


def seed(rt) -> dict[str, tuple[int, int, str]]:  # noqa: ANN001
    """One running campaign per status to be reached mid-send: a queued message (in flight) and a
    pending one (still to send). Returns status -> (campaign id, in-flight message id, phone)."""
    now = utcnow()
    seeded = {}
    with rt.session_factory.begin() as s:
        for i, status in enumerate(STATUSES):
            camp = Campaign(name=f"c-{status}", phone_number_id="1", template=CONTENT, status="running",
                            scheduled_at=now - timedelta(minutes=1), started_at=now - timedelta(minutes=1))
            s.add(camp)
            s.flush()
            phone = f"96650000{i:04d}"
            flying = Message(campaign_id=camp.id, phone_number_id="1", phone=phone, content=CONTENT,
                             status="queued", queued_at=now, enqueued_at=now)
            # and one still to send (already sent where the campaign is to complete: it has nothing left)
            other = "sent" if status == CampaignStatus.COMPLETED.value else "pending"
            s.add_all([flying, Message(campaign_id=camp.id, phone_number_id="1", phone=f"96651000{i:04d}",
                                       content=CONTENT, status=other)])
            s.flush()
            seeded[status] = (camp.id, flying.id, phone)
    return seeded


def state(rt) -> tuple[dict[int, str], dict[int, list[tuple[int, str]]]]:  # noqa: ANN001
    with rt.session_factory() as s:
        camps = dict(s.execute(sa.select(Campaign.id, Campaign.status)).all())
        msgs: dict[int, list[tuple[int, str]]] = {}
        for mid, cid, status in s.execute(sa.select(Message.id, Message.campaign_id, Message.status)):
            msgs.setdefault(cid, []).append((mid, status))
    return camps, msgs


def drive_to_the_end(rt, monkeypatch) -> None:  # noqa: ANN001
    """The operator resumes what is paused and schedules drafts; dispatcher ticks and workers run."""
    published: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, *, queue: published.extend(ids))
    deps = dataclasses.replace(send_deps(rt), client=AcceptingClient())
    deadline = time.monotonic() + 60   # generous: the loop ends as soon as every campaign is final
    while time.monotonic() < deadline:
        camps, _ = state(rt)
        with rt.session_factory.begin() as s:
            for cid, status in camps.items():
                if status == CampaignStatus.PAUSED.value:
                    campaigns.resume(s, cid)
                elif status == CampaignStatus.DRAFT.value:
                    campaigns.schedule(s, cid, utcnow() - timedelta(seconds=1))
        dispatch_tick(rt)
        while published:
            send_message(published.pop(0), deps)
        if set(state(rt)[0].values()) <= FINAL_CAMPAIGN:
            return
        time.sleep(0.02)   # let the short not-before times pass


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_every_row_can_finish_and_every_campaign_ends_whatever_changed_mid_send(rt, outcome, monkeypatch) -> None:
    """Issue 12 item 7: given a send in flight while its campaign becomes draft/scheduled/running/
    paused/completed/cancelled, when the vendor answers `outcome`, then no row is left `sending`, no
    non-final row belongs to a completed or cancelled campaign (a cancelled one's row is `cancelled`
    with an event), and after resume/schedule plus dispatcher ticks every campaign is final."""
    seeded = seed(rt)
    status_by_phone = {phone: (cid, status) for status, (cid, _, phone) in seeded.items()}
    limiter = RefusingLimiter(rt.limiter)
    deps = dataclasses.replace(send_deps(rt), client=InFlightClient(rt, outcome, status_by_phone, limiter), limiter=limiter)
    for status, (cid, mid, _) in seeded.items():
        if outcome == "deferred_before_claim":
            limiter.on_acquire = lambda cid=cid, status=status: _set_status(rt, cid, status)
        limiter.refuse = False
        send_message(mid, deps)

        camps, msgs = state(rt)
        for row_id, row_status in msgs[cid]:
            assert row_status != MessageStatus.SENDING.value, (status, outcome)
            assert row_status in FINAL or camps[cid] not in FINAL_CAMPAIGN, \
                f"campaign {camps[cid]} (was set {status}) holds a {row_status} row after {outcome}: nothing would move it"

    cancelled_cid, cancelled_mid, _ = seeded[CampaignStatus.CANCELLED.value]
    with rt.session_factory() as s:
        row = s.get(Message, cancelled_mid)
        if outcome not in ("sent", "permanent", "ambiguous"):
            assert row.status == MessageStatus.CANCELLED.value and row.finished_at is not None
        if outcome not in ("sent", "permanent", "ambiguous", "deferred_before_claim"):  # the latter: cancel() took it
            reasons = s.scalars(sa.select(MessageEvent.reason).where(MessageEvent.message_id == cancelled_mid,
                                                                     MessageEvent.to_status == "cancelled")).all()
            assert reasons and not s.scalars(sa.select(MessageEvent.to_status).where(
                MessageEvent.message_id == cancelled_mid, MessageEvent.to_status.in_(["queued", "pending"]))).all()

    drive_to_the_end(rt, monkeypatch)
    camps, msgs = state(rt)
    assert set(camps.values()) <= FINAL_CAMPAIGN, camps
    assert all(s in FINAL for rows in msgs.values() for _, s in rows), msgs


def test_a_row_a_racing_write_left_queued_in_a_cancelled_campaign_is_cancelled_by_the_next_tick(rt, monkeypatch) -> None:
    """Issue 12 item 7: a worker's write that committed at the same moment as the cancel (so neither
    saw the other) left a row queued/pending in a cancelled campaign: the dispatcher's tick, which
    never serves cancelled campaigns, finalises it with an event, so `run --until-idle` can end."""
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, *, queue: None)
    now = utcnow()
    with rt.session_factory.begin() as s:
        camp = Campaign(name="c", phone_number_id="1", template=CONTENT, status="cancelled", finished_at=now)
        s.add(camp)
        s.flush()
        left = [Message(campaign_id=camp.id, phone_number_id="1", phone=f"9665200000{i}", content=CONTENT, status=st)
                for i, st in enumerate(["queued", "pending", "sent"])]
        s.add_all(left)
    report = dispatch_tick(rt)
    assert report.cancelled_leftovers == 2
    with rt.session_factory() as s:
        assert [s.get(Message, m.id).status for m in left] == ["cancelled", "cancelled", "sent"]
        assert s.scalar(sa.select(sa.func.count()).select_from(MessageEvent).where(MessageEvent.to_status == "cancelled")) == 2
    assert dispatch_tick(rt).cancelled_leftovers == 0
