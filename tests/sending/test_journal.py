"""Issue 12 item 13: the outcome journal, on SQLite and Postgres, in Redis and in memory.

An entry is recorded only while its claim token owns the row, once; a superseded one changes
nothing and is dropped; a journal entry never carries a secret.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler.sweeper import sweep
from tests.conftest import make_runtime, stack_env
from worker.models import Attempt, Message, utcnow
from worker.sending.client import AttemptRecord, SendResult
from worker.sending.journal import JournalEntry, MemoryJournal, RedisJournal, apply_entries, journal_of

CONTENT = {"body_text": "Hello", "buttons": [{"id": "yes", "title": "Yes"}]}
_phones = iter(range(40_000_000, 99_999_999))


@pytest.fixture(params=["redis", "memory"])
def journal(request, redis_url):  # noqa: ANN001
    if request.param == "memory":
        yield MemoryJournal()
        return
    j = RedisJournal(redis_url, key=f"test-journal:{uuid.uuid4().hex}")
    yield j
    j._redis.delete(j.key)


@pytest.fixture()
def rt(empty_database):  # noqa: ANN001
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", SENDING_TIMEOUT_S="5"))
    yield runtime
    runtime.close()


def add_sending(rt, token: str = "tok-1") -> int:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        m = Message(phone_number_id="123456", phone=f"9665{next(_phones)}", content=CONTENT, status="sending",
                    claim_token=token, claimed_by="host:1", queued_at=utcnow(), sending_at=utcnow() - timedelta(seconds=60))
        s.add(m)
        s.flush()
        return m.id


def entry_for(mid: int, token: str = "tok-1") -> JournalEntry:
    result = SendResult(vendor_id=777, message_id=f"wamid.{mid}", vendor_status="accepted", http_status=200)
    attempt = AttemptRecord(started_at=utcnow(), duration_ms=120, http_status=200, outcome="sent", vendor_id=777,
                            vendor_message_id=f"wamid.{mid}")
    return JournalEntry.sent(mid, token, result, [attempt], "host:1", None, error="OperationalError")


def row(rt, mid: int):  # noqa: ANN001, ANN201
    with rt.session_factory() as s:
        m = s.get(Message, mid)
        attempts = list(s.scalars(sa.select(Attempt.vendor_message_id).where(Attempt.message_id == mid)))
        return m.status, m.vendor_message_id, m.vendor_id, attempts


def test_issue12_item13_a_journaled_sent_outcome_is_recorded_once_with_its_ids(rt, journal) -> None:
    """Issue 12 item 13: applied twice (a second sweep, a leftover entry), the row is sent once."""
    mid = add_sending(rt)
    journal.append(entry_for(mid))
    journal.append(entry_for(mid))   # appending the same outcome twice keeps one entry

    assert apply_entries(journal, rt.session_factory, actor="sweeper") == 1
    journal.append(entry_for(mid))
    assert apply_entries(journal, rt.session_factory, actor="sweeper") == 0

    assert row(rt, mid) == ("sent", f"wamid.{mid}", 777, [f"wamid.{mid}"])
    assert journal.entries() == []


def test_issue12_item13_an_entry_whose_claim_was_superseded_changes_nothing(rt, journal) -> None:
    """Issue 12 item 13: the row was reclaimed (another token): the entry is dropped untouched."""
    mid = add_sending(rt, token="tok-new")
    journal.append(entry_for(mid, token="tok-old"))

    assert apply_entries(journal, rt.session_factory, actor="sweeper") == 0

    assert row(rt, mid) == ("sending", None, None, []) and journal.entries() == []


def test_issue12_item13_the_sweep_applies_the_journal_before_giving_up_on_sending_rows(rt) -> None:
    """Issue 12 item 13: a row past SENDING_TIMEOUT_S with a journaled 200 ends sent, not unknown."""
    mid = add_sending(rt)
    journal_of(rt).append(entry_for(mid))   # embedded runtime (no Redis): the memory journal

    report = sweep(rt)

    assert report.journal_applied == 1 and report.unknown == 0
    assert row(rt, mid)[0] == "sent"


def test_issue12_item13_a_journal_entry_holds_ids_and_statuses_never_a_secret(rt) -> None:
    """Issue 12 item 13: what goes to Redis is ids, statuses and attempts, nothing of the settings."""
    text = entry_for(1).to_json()
    assert "sandbox-secret" not in text and "hmac" not in text.lower()
    assert JournalEntry.from_json(text) == entry_for(1).__class__(**JournalEntry.from_json(text).__dict__)


def failure_entry_for(mid: int, status: str, token: str = "tok-1", not_before=None) -> JournalEntry:  # noqa: ANN001
    from worker.errors import PermanentError, ServerError
    from worker.status import MessageStatus

    error = (PermanentError("phone is not valid", code="invalid_phone_number", http_status=400, request_id="req_9")
             if status == "failed" else ServerError("HTTP 503", code="http_503", http_status=503))
    attempt = AttemptRecord(started_at=utcnow(), duration_ms=80, http_status=error.http_status, outcome=type(error).__name__,
                            error_code=error.code, error_message=error.message, request_id=error.request_id)
    return JournalEntry.failure(mid, token, MessageStatus(status), error, [attempt], "host:1", None, not_before)


@pytest.mark.parametrize("status", ["failed", "queued"])
def test_issue12_item13_a_journaled_failure_outcome_is_recorded_not_left_to_become_unknown(rt, journal, status) -> None:
    """Issue 12 item 13: a 400 (failed) or a 503 (queued for a retry) whose write the database refused is
    kept too; the sweep's journal pass records it with the vendor's error, instead of the row turning
    `unknown` after SENDING_TIMEOUT_S."""
    mid = add_sending(rt)
    due = utcnow() + timedelta(minutes=5)
    entry = failure_entry_for(mid, status, not_before=due if status == "queued" else None)
    journal.append(JournalEntry.from_json(entry.to_json()))   # through its stored form

    assert apply_entries(journal, rt.session_factory, actor="sweeper") == 1
    with rt.session_factory() as s:
        m = s.get(Message, mid)
    assert m.status == status
    assert m.last_error_code == entry.error_code
    if status == "queued":
        assert m.claim_token is None and abs((m.not_before - due).total_seconds()) < 1
    else:
        assert m.last_request_id == "req_9" and m.finished_at is not None
    with rt.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Attempt).where(Attempt.message_id == mid)) == 1
    assert journal.entries() == []
    # applied again (a second sweep racing the first): the token no longer owns the row, nothing changes
    journal.append(entry)
    assert apply_entries(journal, rt.session_factory, actor="sweeper") == 0
    with rt.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Attempt).where(Attempt.message_id == mid)) == 1
