"""Group commit of sent outcomes (issue 26 item 2, worker.sending.outcomes) on Postgres.

What the batch must keep from the one-message record: the row only while its claim token owns it,
the attempt row, the campaign's streak broken, the contact's last_sent_at, the message.sent outbox
row; and what it adds: one statement for many messages, and a send that returns (so Celery acks
its task) only once its outcome is committed."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env
from worker import metrics
from worker.hooks import outbox as hooks_outbox
from worker.hooks.models import HookEndpoint, HookOutbox, HookSubscription
from worker.models import Attempt, Campaign, Contact, Message
from worker.sending import store
from worker.sending.client import AttemptRecord, RateHeaders, SendResult
from worker.sending.outcomes import BatchRefused, OutcomeWriter, writer_of
from worker.sending.send import Outcome, send_deps, send_message

BUTTONS = [{"id": "yes", "title": "Yes"}]
_phones = iter(range(10_000_000))


@pytest.fixture()
def rt(clean_postgres, sandbox):  # noqa: ANN001, ANN201
    runtime = make_runtime(stack_env(database_url=clean_postgres, sandbox_url=sandbox[0], AWAL_RATE_LIMIT="1000/s",
                                     AWAL_RATE_BURST="100"))
    hooks_outbox.CACHE.invalidate()
    yield runtime
    hooks_outbox.CACHE.invalidate()
    runtime.close()


def _campaign_with(rt, count: int, *, streak: int = 0) -> tuple[int, list[int]]:  # noqa: ANN001
    """A running campaign with `count` queued messages, each to a known contact."""
    with rt.session_factory.begin() as s:
        camp = Campaign(name="c", phone_number_id="123456", template={"body_text": "x", "buttons": BUTTONS},
                        status="running", consecutive_failures=streak)
        s.add(camp)
        s.flush()
        messages = []
        for _ in range(count):
            phone = f"96651{next(_phones):07d}"
            s.add(Contact(phone=phone))
            messages.append(Message(campaign_id=camp.id, phone_number_id="123456", phone=phone,
                                    content={"body_text": "x", "buttons": BUTTONS}, status="queued"))
        s.add_all(messages)
        s.flush()
        return camp.id, [m.id for m in messages]


def _claimed(rt, message_id: int) -> str:  # noqa: ANN001
    with rt.single_statements() as conn:
        token = store.claim(conn, message_id, worker="w1")
    assert token
    return token


def _outcome(message_id: int, token: str, vendor_message_id: str) -> store.SentOutcome:
    now = datetime.now(timezone.utc)
    attempt = AttemptRecord(started_at=now, duration_ms=7, http_status=200, outcome="sent",
                            vendor_message_id=vendor_message_id, rate=RateHeaders())
    result = SendResult(vendor_id=message_id, message_id=vendor_message_id, vendor_status="sent", http_status=200,
                        rate=RateHeaders())
    return store.SentOutcome(message_id, token, result, attempt, "w1", now)


def _record_together(writer: OutcomeWriter, outcomes: list[store.SentOutcome]) -> list[object]:
    """Hand every outcome in from its own thread, as a process's send threads do; each one's answer."""
    answers: list[object] = [None] * len(outcomes)

    def one(i: int) -> None:
        try:
            answers[i] = writer.record(outcomes[i])
        except Exception as exc:  # noqa: BLE001 - the answer under test
            answers[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(outcomes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


def _batches() -> tuple[float, float]:
    """(group commits, outcomes they wrote) so far in this process: the writer's histogram."""
    samples = {s.name: s.value for s in metrics.OUTCOME_BATCH_SIZE.collect()[0].samples}
    return samples["buttoncast_outcome_batch_size_count"], samples["buttoncast_outcome_batch_size_sum"]


def test_outcomes_handed_in_together_are_written_by_one_statement_with_everything_a_record_writes(rt) -> None:
    # Given 8 claimed messages of a campaign on a failure streak, and an endpoint subscribed to message.sent
    campaign_id, mids = _campaign_with(rt, 8, streak=3)
    tokens = [_claimed(rt, m) for m in mids]
    with rt.session_factory.begin() as s:
        endpoint = HookEndpoint(url="https://hooks.example/h", key_salt="s" * 32)
        s.add(endpoint)
        s.flush()
        s.add(HookSubscription(endpoint_id=endpoint.id, event_type="message.sent"))
    hooks_outbox.CACHE.invalidate()
    before = _batches()
    # A delay long enough that all eight are in the one batch
    writer = OutcomeWriter(rt.single_statements, max_batch=64, max_delay_s=1.0)

    # When they are handed in at once
    answers = _record_together(writer, [_outcome(m, t, f"wamid.{m}") for m, t in zip(mids, tokens)])
    writer.close()

    # Then one statement wrote all of them, and each row has what the one-message record writes
    after = _batches()
    assert answers == [True] * 8 and (after[0] - before[0], after[1] - before[1]) == (1, 8)
    with rt.session_factory() as s:
        rows = s.scalars(sa.select(Message).where(Message.id.in_(mids)).order_by(Message.id)).all()
        assert [(r.status, r.vendor_message_id, r.vendor_id, r.attempts) for r in rows] == [
            ("sent", f"wamid.{m}", m, 1) for m in mids]
        assert all(r.sent_at is not None and r.finished_at == r.sent_at for r in rows)
        assert s.scalar(sa.select(sa.func.count()).select_from(Attempt).where(Attempt.message_id.in_(mids))) == 8
        assert s.get(Campaign, campaign_id).consecutive_failures == 0
        stamps = s.scalars(sa.select(Contact.last_sent_at).where(Contact.phone.in_([r.phone for r in rows]))).all()
        assert len(stamps) == 8 and None not in stamps
        events = s.scalars(sa.select(HookOutbox).where(HookOutbox.message_id.in_(mids))).all()
        assert sorted(e.message_id for e in events) == mids and {e.event_type for e in events} == {"message.sent"}
        assert len({e.event_id for e in events}) == 8 and all(f'"wamid.{e.message_id}"' in e.data for e in events)


def test_a_row_its_token_no_longer_owns_is_left_alone_and_only_that_sender_hears_so(rt) -> None:
    _, mids = _campaign_with(rt, 3)
    tokens = [_claimed(rt, m) for m in mids]
    with rt.session_factory.begin() as s:   # e.g. an operator's retry took the second back
        s.execute(sa.update(Message).where(Message.id == mids[1]).values(status="queued", claim_token=None))
    writer = OutcomeWriter(rt.single_statements, max_batch=64, max_delay_s=1.0)

    answers = _record_together(writer, [_outcome(m, t, f"wamid.{m}") for m, t in zip(mids, tokens)])
    writer.close()

    assert answers == [True, False, True]
    with rt.session_factory() as s:
        assert s.scalar(sa.select(Message.status).where(Message.id == mids[1])) == "queued"
        # the evidence stays: the vendor did accept it
        assert s.scalar(sa.select(sa.func.count()).select_from(Attempt).where(Attempt.message_id == mids[1])) == 1


def test_a_batch_the_database_refuses_is_refused_to_every_sender_and_nothing_of_it_is_written(rt) -> None:
    # Two outcomes carrying the same vendor messageId (the column is unique): the statement fails whole
    _, mids = _campaign_with(rt, 3)
    tokens = [_claimed(rt, m) for m in mids]
    writer = OutcomeWriter(rt.single_statements, max_batch=64, max_delay_s=1.0)

    answers = _record_together(writer, [_outcome(mids[0], tokens[0], "wamid.same"),
                                        _outcome(mids[1], tokens[1], "wamid.same"),
                                        _outcome(mids[2], tokens[2], "wamid.other")])
    writer.close()

    assert all(isinstance(a, BatchRefused) for a in answers)
    with rt.session_factory() as s:
        assert set(s.scalars(sa.select(Message.status).where(Message.id.in_(mids)))) == {"sending"}


def test_the_send_path_records_a_refused_batchs_messages_one_by_one(rt) -> None:
    """Through send_message: a vendor that gives two messages one messageId (issue 25's case) makes
    the batch fail; each sender then records alone, so both end sent, one without the id."""
    _, mids = _campaign_with(rt, 2)
    deps = send_deps(rt)
    deps.outcomes = OutcomeWriter(rt.single_statements, max_batch=64, max_delay_s=1.0)
    real_send = deps.client.send

    def same_id(message, phone_number_id, **kwargs):  # noqa: ANN001, ANN003, ANN202
        result = real_send(message, phone_number_id, **kwargs)
        return SendResult(vendor_id=result.vendor_id, message_id="wamid.dup", vendor_status=result.vendor_status,
                          http_status=result.http_status, rate=result.rate)

    deps.client = type("SameId", (), {"send": staticmethod(same_id)})()
    outcomes: list[Outcome] = []
    threads = [threading.Thread(target=lambda m=m: outcomes.append(send_message(m, deps))) for m in mids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    deps.outcomes.close()

    assert outcomes == [Outcome.SENT, Outcome.SENT]
    with rt.session_factory() as s:
        rows = s.execute(sa.select(Message.status, Message.vendor_message_id).where(Message.id.in_(mids))).all()
    assert sorted(rows, key=lambda r: r[1] or "") == [("sent", None), ("sent", "wamid.dup")]


def test_a_send_returns_and_so_its_task_is_acknowledged_only_once_its_outcome_is_committed(rt) -> None:
    """Celery acknowledges a send task (acks_late) when the task function returns. Hold the group
    commit back with a lock on the message row: the send must not return while the row still
    reads `sending` to everyone else, and returns `sent` once the commit went through."""
    _, (mid,) = _campaign_with(rt, 1)
    deps = send_deps(rt)
    assert deps.outcomes is not None   # Postgres: the process's writer
    done: list[Outcome] = []
    blocker = rt.engine.connect()
    blocked = threading.Event()
    real_send = deps.client.send

    def lock_then_send(message, phone_number_id, **kwargs):  # noqa: ANN001, ANN003, ANN202
        result = real_send(message, phone_number_id, **kwargs)
        blocker.execute(sa.select(Message.id).where(Message.id == mid).with_for_update())  # the row, locked
        blocked.set()
        return result

    deps.client = type("Locking", (), {"send": staticmethod(lock_then_send)})()
    sender = threading.Thread(target=lambda: done.append(send_message(mid, deps)))
    try:
        sender.start()
        assert blocked.wait(10)
        sender.join(1.0)
        with rt.engine.connect() as other:
            seen = other.scalar(sa.select(Message.status).where(Message.id == mid))
        assert sender.is_alive() and done == [] and seen == "sending"   # not returned: not acknowledged
    finally:
        blocker.rollback()   # the lock goes, the commit goes through
        blocker.close()
    sender.join(10)
    assert done == [Outcome.SENT]
    with rt.engine.connect() as other:
        assert other.scalar(sa.select(Message.status).where(Message.id == mid)) == "sent"


def test_sqlite_has_no_writer_and_each_send_records_itself(sqlite_url, sandbox) -> None:  # noqa: ANN001
    runtime = make_runtime(stack_env(database_url=sqlite_url, sandbox_url=sandbox[0]))
    try:
        assert writer_of(runtime) is None and send_deps(runtime).outcomes is None
    finally:
        runtime.close()
