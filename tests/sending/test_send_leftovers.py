"""Issue 25: the send path's leftovers. Item 4's in-send retry checks the gate again; and, left open
by earlier rounds, a vendor messageId seen twice and a failure replayed from the outcome journal.
The task body is called directly with the sandbox (or a stub client) and a real database, SQLite
and Postgres."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any, Callable

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env
from worker.contacts import service as contacts
from worker.models import Attempt, Campaign, Message, MessageEvent, utcnow
from worker.sending.client import AttemptRecord, SendResult
from worker.sending.journal import JournalEntry, MemoryJournal, apply_entries
from worker.sending.send import Outcome, SendDeps, send_deps, send_message

BUTTONS = [{"id": "yes", "title": "Yes"}]
CONTENT = {"body_text": "Hello", "buttons": BUTTONS}
_seq = iter(range(6_000_000, 6_999_999))


def new_phone() -> str:
    return f"96650{next(_seq):07d}"


@pytest.fixture()
def runtime(database_url, sandbox):  # noqa: ANN001
    base_url, _ = sandbox
    rt = make_runtime(stack_env(
        database_url=database_url, sandbox_url=base_url, AWAL_RATE_LIMIT="1000/s", AWAL_RATE_BURST="50",
        SEND_RETRY_MAX_WAIT_S="0.05", SEND_READ_TIMEOUT_S="1", RECORD_RETRY_MAX_S="0.3",
        AUTO_PAUSE_CONSECUTIVE_FAILURES="3", AUTO_PAUSE_CONSECUTIVE_UNKNOWN="2"))
    yield rt
    rt.close()


def queued(rt, *, phone: str | None = None, campaign_id: int | None = None) -> int:  # noqa: ANN001
    """A queued message (ad hoc, or of `campaign_id`), its contact known."""
    phone = phone or new_phone()
    with rt.session_factory.begin() as s:
        contacts.ensure_contacts(s, [phone])
        msg = Message(campaign_id=campaign_id, phone_number_id="123456", phone=phone, content=CONTENT, status="queued")
        s.add(msg)
        s.flush()
        return msg.id


def running_campaign(rt, **streaks: int) -> int:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        camp = Campaign(name="c", phone_number_id="123456", template=CONTENT, status="running", **streaks)
        s.add(camp)
        s.flush()
        return camp.id


def load(rt, model: type, row_id: int) -> Any:  # noqa: ANN001, ANN401
    with rt.session_factory() as s:
        return s.get(model, row_id)


def attempts_of(rt, mid: int) -> list[Attempt]:  # noqa: ANN001
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(Attempt).where(Attempt.message_id == mid).order_by(Attempt.id)))


def events_of(rt, mid: int) -> list[MessageEvent]:  # noqa: ANN001
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(MessageEvent).where(MessageEvent.message_id == mid).order_by(MessageEvent.id)))


# --- item 4: the gate again before each in-client retry ----------------------------------------------

class AfterTheFirstAnswer:
    """The real client; `then` runs after the first HTTP attempt's answer, before any retry."""

    def __init__(self, inner: Any, then: Callable[[], None]) -> None:   # noqa: ANN401
        self.inner, self.then = inner, then

    def send(self, message, phone_number_id, *, before_request=None, on_attempt=None) -> SendResult:  # noqa: ANN001
        seen: list[AttemptRecord] = []

        def observe(attempt: AttemptRecord) -> None:
            on_attempt(attempt)
            seen.append(attempt)
            if len(seen) == 1:
                self.then()

        return self.inner.send(message, phone_number_id, before_request=before_request, on_attempt=observe)


def test_item4_gate_is_checked_again_before_each_retry(runtime, sandbox) -> None:
    """Issue 25 item 4: the first request gets a 503; the person's STOP commits; the client's retry
    does not go out: the message ends suppressed(opted_out), as a claim after the STOP would have."""
    _, vendor = sandbox
    phone = new_phone()
    vendor.script(phone, ["503"])
    mid = queued(runtime, phone=phone)

    def stop() -> None:
        with runtime.session_factory.begin() as s:
            contacts.opt_out(s, phone, source="keyword", reason="replied 'STOP'", actor="webhook")

    deps = send_deps(runtime)
    outcome = send_message(mid, replace(deps, client=AfterTheFirstAnswer(deps.client, stop)))

    assert outcome is Outcome.SUPPRESSED
    msg = load(runtime, Message, mid)
    assert (msg.status, msg.last_error_code, msg.vendor_message_id) == ("suppressed", "opted_out", None)
    assert msg.finished_at is not None and msg.attempts == 1
    assert [a.http_status for a in attempts_of(runtime, mid)] == [503]   # one request, no retry
    assert vendor.received(phone=phone) == []
    assert [(e.from_status, e.to_status) for e in events_of(runtime, mid)][-1] == ("sending", "suppressed")


def test_item4_a_retry_with_the_gate_still_open_is_sent(runtime, sandbox) -> None:
    """Issue 25 item 4: the check before a retry changes nothing for a contact still opted in."""
    _, vendor = sandbox
    phone = new_phone()
    vendor.script(phone, ["503"])
    mid = queued(runtime, phone=phone)

    assert send_message(mid, send_deps(runtime)) is Outcome.SENT
    assert [a.http_status for a in attempts_of(runtime, mid)] == [503, 200]
    assert len(vendor.received(phone=phone)) == 1


# --- left open: a vendor messageId seen twice ----------------------------------------------------------

class SameMessageId:
    """A vendor that answers every send with the same messageId, after `retries` 503s."""

    def __init__(self, message_id: str, retries: int = 0) -> None:
        self.message_id, self.retries, self.calls = message_id, retries, 0

    def send(self, message, phone_number_id, *, before_request=None, on_attempt=None) -> SendResult:  # noqa: ANN001
        for _ in range(self.retries):
            on_attempt(AttemptRecord(started_at=utcnow(), duration_ms=2, http_status=503, outcome="ServerError",
                                     error_code="http_503", error_message="HTTP 503"))
            before_request()
        self.calls += 1
        on_attempt(AttemptRecord(started_at=utcnow(), duration_ms=3, http_status=200, outcome="sent",
                                 vendor_id=900 + self.calls, vendor_message_id=self.message_id))
        return SendResult(vendor_id=900 + self.calls, message_id=self.message_id, vendor_status="sent", http_status=200)


@pytest.mark.parametrize("retries", [0, 1], ids=["one_attempt", "after_a_retry"])
def test_leftover_vendor_message_id_seen_twice_ends_sent(runtime, retries: int, caplog) -> None:
    """Issue 25, left open: the vendor accepted both messages, so both end `sent`; the second keeps
    the duplicate messageId on its attempt row and in an event, not on the message (the column is
    unique), and a WARNING says so. One attempt on Postgres is the one-statement write; after a retry
    it is a transaction."""
    wamid = f"wamid.dup.{new_phone()}"
    first, second = queued(runtime), queued(runtime)
    deps = replace(send_deps(runtime), client=SameMessageId(wamid, retries))

    assert send_message(first, deps) is Outcome.SENT
    with caplog.at_level(logging.WARNING, logger="buttoncast"):
        assert send_message(second, deps) is Outcome.SENT

    one, two = load(runtime, Message, first), load(runtime, Message, second)
    assert (one.status, one.vendor_message_id) == ("sent", wamid)
    assert (two.status, two.vendor_message_id, two.vendor_id) == ("sent", None, 902)
    assert two.sent_at is not None and two.attempts == retries + 1
    assert [a.vendor_message_id for a in attempts_of(runtime, second)][-1] == wamid
    assert any(wamid in e.reason and f"message {first}" in e.reason for e in events_of(runtime, second))
    assert any(wamid in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_leftover_vendor_message_id_seen_twice_is_sent_when_replayed_from_the_journal(runtime) -> None:
    """Issue 25, left open: a journaled 200 whose messageId another message holds is recorded sent too."""
    wamid = f"wamid.dup.{new_phone()}"
    first = queued(runtime)
    assert send_message(first, replace(send_deps(runtime), client=SameMessageId(wamid))) is Outcome.SENT
    with runtime.session_factory.begin() as s:
        msg = Message(phone_number_id="123456", phone=new_phone(), content=CONTENT, status="sending",
                      claim_token="tok-dup", claimed_by="host:1", sending_at=utcnow() - timedelta(seconds=5))
        s.add(msg)
        s.flush()
        second = msg.id
    result = SendResult(vendor_id=77, message_id=wamid, vendor_status="sent", http_status=200)
    attempt = AttemptRecord(started_at=utcnow(), duration_ms=5, http_status=200, outcome="sent", vendor_id=77,
                            vendor_message_id=wamid)
    journal = MemoryJournal()
    journal.append(JournalEntry.sent(second, "tok-dup", result, [attempt], "host:1", None, error="OperationalError"))

    assert apply_entries(journal, runtime.session_factory, actor="sweeper") == 1

    row = load(runtime, Message, second)
    assert (row.status, row.vendor_message_id, row.vendor_id) == ("sent", None, 77)
    assert journal.entries() == []


# --- left open: a failure replayed from the outcome journal counts toward the streaks ---------------------

class RefusedTransactions:
    """The database refuses every transaction (an outage while the outcome is recorded); reads work."""

    def __init__(self, real: Any) -> None:   # noqa: ANN401
        self.real = real

    def begin(self) -> Any:   # noqa: ANN401
        raise sa.exc.OperationalError("BEGIN", {}, ConnectionRefusedError("connection refused"))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:   # noqa: ANN401
        return self.real(*args, **kwargs)


# (the sandbox's answer, the streak before, the live path's effect: which counter and whether it pauses)
STREAKS = {
    "permanent_failure": (["400"], {"consecutive_failures": 2}, ("consecutive_failures", 3, "paused")),
    "unknown": (["timeout"], {"consecutive_unknown": 1}, ("consecutive_unknown", 2, "paused")),
    # a transient failure past the budget is `failed` but, live, counts toward no streak: nor replayed
    "transient_budget_spent": (["503", "503", "503"], {"consecutive_failures": 2},
                               ("consecutive_failures", 2, "running")),
}


@pytest.mark.parametrize("case", list(STREAKS))
def test_leftover_journal_replay_counts_toward_streaks(runtime, sandbox, case: str) -> None:
    """Issue 25, left open: the database refuses a failure's write, the outcome goes to the journal,
    and the sweep's replay counts it toward the campaign's streak exactly as the live write would
    have, so the auto-pause breaker trips at its threshold (AUTO_PAUSE_CONSECUTIVE_*)."""
    _, vendor = sandbox
    script, before, (counter, after, campaign_status) = STREAKS[case]
    phone = new_phone()
    vendor.script(phone, script)
    cid = running_campaign(runtime, **before)
    mid = queued(runtime, phone=phone, campaign_id=cid)
    journal = MemoryJournal()
    deps: SendDeps = replace(send_deps(runtime), session_factory=RefusedTransactions(runtime.session_factory),
                             journal=journal, settings=replace(runtime.settings, message_max_attempts=3))

    with pytest.raises(sa.exc.OperationalError):
        send_message(mid, deps)
    assert len(journal.entries()) == 1 and load(runtime, Message, mid).status == "sending"

    assert apply_entries(journal, runtime.session_factory, actor="sweeper") == 1

    camp = load(runtime, Campaign, cid)
    assert getattr(camp, counter) == after and camp.status == campaign_status
    assert load(runtime, Message, mid).status in ("failed", "unknown")
