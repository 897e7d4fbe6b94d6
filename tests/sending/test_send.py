"""The send task's body, called directly with real collaborators: the sandbox over HTTP, a real
database (SQLite and Postgres) and both rate limiters. Scenarios from the send-path issue."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env
from worker.errors import MessageInvalid
from worker.models import Attempt, Message, MessageEvent
from worker.sending.enqueue import enqueue_message, enqueue_payload
from worker.sending.send import Outcome, send_deps, send_message
from worker.status import MessageStatus

BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
_phone_seq = iter(range(0, 9_999_999))


def new_phone() -> str:
    return f"96650{next(_phone_seq):07d}"  # valid Saudi mobile numbers


@pytest.fixture(params=["memory", "redis"])
def runtime(request, database_url, sandbox):  # noqa: ANN001
    base_url, _ = sandbox
    extra = {"SEND_READ_TIMEOUT_S": "1", "SEND_RETRY_MAX_WAIT_S": "0.05", "AWAL_RATE_LIMIT": "1000/s", "AWAL_RATE_BURST": "50"}
    if request.param == "redis":
        extra["REDIS_URL"] = request.getfixturevalue("redis_url")
        import redis

        redis.Redis.from_url(extra["REDIS_URL"]).flushdb()  # no 429 block or vendor window left by another test
    rt = make_runtime(stack_env(database_url=database_url, sandbox_url=base_url, **extra))
    yield rt
    rt.close()


def enqueue(rt, phone: str | None = None, **kw) -> int:  # noqa: ANN001
    # Given a message stored as queued (the embedded runtime hands publishing to the dispatcher)
    return enqueue_message(phone=phone or new_phone(), body_text="Hello {{x}} 🎉", buttons=BUTTONS, runtime=rt, **kw)


def load(rt, message_id: int) -> Message:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.get(Message, message_id)


def attempts_of(rt, message_id: int) -> list[Attempt]:  # noqa: ANN001
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(Attempt).where(Attempt.message_id == message_id).order_by(Attempt.id)))


def test_queued_message_is_sent_and_the_vendor_ids_are_recorded(runtime, sandbox) -> None:
    _, vendor = sandbox
    mid = enqueue(runtime)
    assert load(runtime, mid).status == MessageStatus.QUEUED.value

    assert send_message(mid, send_deps(runtime)) is Outcome.SENT

    msg = load(runtime, mid)
    [received] = vendor.received(phone=msg.phone)
    assert msg.status == "sent"
    assert msg.vendor_message_id == received["message_id"] and msg.vendor_message_id.startswith("wamid.")
    assert msg.vendor_id == received["id"] and msg.vendor_status == "sent"
    assert msg.sent_at is not None and msg.attempts == 1
    [attempt] = attempts_of(runtime, mid)
    assert attempt.http_status == 200 and attempt.outcome == "sent" and attempt.worker


def test_a_400_ends_failed_with_the_vendors_code(runtime, sandbox) -> None:
    _, vendor = sandbox
    phone = new_phone()
    vendor.script(phone, ["400"])
    mid = enqueue(runtime, phone)

    assert send_message(mid, send_deps(runtime)) is Outcome.FAILED

    msg = load(runtime, mid)
    assert msg.status == "failed"
    assert msg.last_error_code and msg.last_error_code != "permanent"
    assert msg.last_request_id and msg.last_request_id.startswith("req_")
    assert [a.http_status for a in attempts_of(runtime, mid)] == [400]


def test_two_503s_then_200_ends_sent_with_three_attempt_rows(runtime, sandbox) -> None:
    _, vendor = sandbox
    phone = new_phone()
    vendor.script(phone, ["503", "503"])
    mid = enqueue(runtime, phone)

    assert send_message(mid, send_deps(runtime)) is Outcome.SENT

    assert load(runtime, mid).status == "sent"
    assert [a.http_status for a in attempts_of(runtime, mid)] == [503, 503, 200]
    assert len(vendor.received(phone=phone)) == 1


def test_a_read_timeout_ends_unknown_and_the_vendor_received_it_exactly_once(runtime, sandbox) -> None:
    _, vendor = sandbox
    phone = new_phone()
    vendor.script(phone, ["timeout"])
    mid = enqueue(runtime, phone)

    assert send_message(mid, send_deps(runtime)) is Outcome.UNKNOWN

    msg = load(runtime, mid)
    assert msg.status == "unknown" and msg.last_error_code == "read_timeout"
    assert len(vendor.received(phone=phone)) == 1
    # never resent on its own: a second delivery of the task does nothing
    assert send_message(mid, send_deps(runtime)) is Outcome.SKIPPED
    assert len(vendor.received(phone=phone)) == 1


def test_the_same_task_delivered_twice_sends_once(runtime, sandbox) -> None:
    _, vendor = sandbox
    mid = enqueue(runtime)
    deps = send_deps(runtime)

    assert send_message(mid, deps) is Outcome.SENT
    assert send_message(mid, deps) is Outcome.SKIPPED
    assert len(vendor.received(phone=load(runtime, mid).phone)) == 1


def test_a_429_requeues_without_spending_the_retry_budget_and_blocks_the_scope(runtime, sandbox) -> None:
    _, vendor = sandbox
    phone = new_phone()
    vendor.script(phone, ["429"])
    mid = enqueue(runtime, phone)

    assert send_message(mid, send_deps(runtime)) is Outcome.REQUEUED

    msg = load(runtime, mid)
    assert msg.status == "queued" and msg.attempts == 0 and msg.not_before is not None
    assert msg.enqueued_at is None  # handed to the dispatcher, no long ETA on the broker
    state = runtime.limiter.state(runtime.scope)
    assert state.blocked_until is not None and state.blocked_until > state.as_of


def test_transient_failures_past_the_budget_end_failed(runtime, sandbox) -> None:
    _, vendor = sandbox
    phone = new_phone()
    vendor.script(phone, ["503"] * 3)
    mid = enqueue(runtime, phone)
    rt = make_runtime({**_env_of(runtime), "MESSAGE_MAX_ATTEMPTS": "3"})

    assert send_message(mid, send_deps(rt)) is Outcome.FAILED
    msg = load(runtime, mid)
    assert msg.status == "failed" and msg.attempts == 3 and msg.last_error_code
    rt.close()


def test_the_same_idempotency_key_twice_creates_one_message(runtime) -> None:
    number = new_phone()
    key = f"order-42-confirmation-{number}"   # the database is shared by the runtime's params
    first = enqueue(runtime, number, idempotency_key=key)
    second = enqueue(runtime, number, idempotency_key=key)
    assert first == second
    with runtime.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Message).where(Message.idempotency_key == key)) == 1
    # Issue 25 item 6: the same key for another message is refused, never answered with the first one's id
    with pytest.raises(MessageInvalid, match="idempotency_key: was already used for a different message"):
        enqueue(runtime, new_phone(), idempotency_key=key)


def test_an_invalid_broker_payload_is_stored_as_rejected_and_the_result_says_why(runtime) -> None:
    result = enqueue_payload({"phone": "12ab", "body_text": " ", "buttons": [{"id": "a", "title": "x" * 21}]}, runtime)
    assert result["status"] == "rejected"
    fields = {e["field"] for e in result["errors"]}
    assert {"phone", "body_text", "buttons[0].title"} <= fields
    msg = load(runtime, result["message_id"])
    assert msg.status == "rejected" and "buttons[0].title" in msg.last_error_message


def test_a_paused_campaign_message_goes_back_to_pending_untouched(runtime, sandbox) -> None:
    _, vendor = sandbox
    _, mid = _queued_in_campaign(runtime, campaign_status="paused")

    assert send_message(mid, send_deps(runtime)) is Outcome.PAUSED
    row = load(runtime, mid)
    assert row.status == "pending" and row.attempts == 0
    assert vendor.received(phone=row.phone) == []
    with runtime.session_factory() as s:
        assert s.scalar(sa.select(MessageEvent.to_status).where(MessageEvent.message_id == mid)) == "pending"


def _env_of(rt) -> dict[str, str]:  # noqa: ANN001
    s = rt.settings
    env = {"DATABASE_URL": s.database_url, "AWAL_BASE_URL": s.awal_base_url, "AWAL_CLIENT_ID": s.awal_client_id,
           "AWAL_DOMAIN": s.awal_domain, "AWAL_HMAC_SECRET": s.awal_hmac_secret.reveal(),
           "AWAL_PHONE_NUMBER_ID": s.awal_phone_number_id, "SEND_RETRY_MAX_WAIT_S": "0.05",
           "AWAL_RATE_LIMIT": str(s.rate_limit), "AWAL_RATE_BURST": str(s.rate_burst)}
    if s.redis_url:
        env["REDIS_URL"] = s.redis_url
    return env


def _queued_in_campaign(rt, *, campaign_status: str = "running", consecutive_failures: int = 0) -> tuple[int, int]:  # noqa: ANN001
    """A campaign and one queued message of it; returns (campaign id, message id)."""
    from worker.models import Campaign

    with rt.session_factory.begin() as s:
        camp = Campaign(name="c", phone_number_id="123456", template={"body_text": "x", "buttons": BUTTONS},
                        status=campaign_status, consecutive_failures=consecutive_failures)
        s.add(camp)
        s.flush()
        msg = Message(campaign_id=camp.id, phone_number_id="123456", phone=new_phone(),
                      content={"body_text": "x", "buttons": BUTTONS}, status="queued")
        s.add(msg)
        s.flush()
        return camp.id, msg.id


def test_a_success_breaks_the_campaigns_failure_streak_in_the_same_write(runtime, sandbox) -> None:
    from worker.models import Campaign

    # Given a running campaign with 3 permanent failures in a row
    campaign_id, mid = _queued_in_campaign(runtime, consecutive_failures=3)
    with runtime.session_factory() as s:
        before = s.get(Campaign, campaign_id).updated_at

    # When its next message is sent
    assert send_message(mid, send_deps(runtime)) is Outcome.SENT

    # Then the streak is back to 0 (so auto-pause counts from scratch) and the row says when
    with runtime.session_factory() as s:
        camp = s.get(Campaign, campaign_id)
        assert camp.consecutive_failures == 0 and camp.updated_at is not None and camp.updated_at >= before
    assert load(runtime, mid).status == "sent"


def test_recording_with_a_token_that_no_longer_owns_the_row_changes_nothing_but_keeps_the_evidence(runtime) -> None:
    from datetime import datetime, timezone

    from worker.sending import store
    from worker.sending.client import AttemptRecord, RateHeaders, SendResult

    _, mid = _queued_in_campaign(runtime)
    with runtime.single_statements() as conn:
        token = store.claim(conn, mid, worker="w1")
    assert token
    with runtime.session_factory.begin() as s:  # e.g. an operator's retry took the message back
        s.execute(sa.update(Message).where(Message.id == mid).values(status="queued", claim_token=None))
    attempt = AttemptRecord(started_at=datetime.now(timezone.utc), duration_ms=5, http_status=200, outcome="sent",
                            vendor_message_id="wamid.late", rate=RateHeaders())
    result = SendResult(vendor_id=1, message_id="wamid.late", vendor_status="sent", http_status=200, rate=RateHeaders())

    with runtime.single_statements() as conn:   # one attempt: one statement on Postgres
        owned = store.record_sent(conn, mid, token, result, [attempt], "w1")
    with runtime.session_factory.begin() as s:   # several: a transaction
        owned_too = store.record_sent(s, mid, token, result, [attempt, attempt], "w1")

    assert owned is False and owned_too is False
    row = load(runtime, mid)
    assert row.status == "queued" and row.vendor_message_id is None
    assert [a.vendor_message_id for a in attempts_of(runtime, mid)] == ["wamid.late"] * 3


def test_a_task_holds_no_database_connection_while_the_vendor_answers_and_checks_out_two(runtime) -> None:
    """Issue 16 goal 3 and issue 26 item 1: the claim returns the message (one statement on Postgres;
    the claim and the load in one unit on SQLite) on one pooled connection, which goes back to the
    pool before the HTTP request, so a process never holds a connection per waiting thread; the
    record takes one more (on Postgres, the process's group commit takes it for its batch)."""
    mid = enqueue(runtime)
    deps = send_deps(runtime)
    pool = runtime.engine.pool
    checkouts: list[int] = []
    sa.event.listen(runtime.engine, "checkout", lambda *_a: checkouts.append(1))
    held_during_send: list[int] = []
    real_send = deps.client.send

    def send(message, phone_number_id, **kwargs):  # noqa: ANN001, ANN003, ANN202
        held_during_send.append(pool.checkedout())
        return real_send(message, phone_number_id, **kwargs)

    deps.client = type("Watched", (), {"send": staticmethod(send)})()
    assert send_message(mid, deps) is Outcome.SENT
    assert held_during_send == [0] and pool.checkedout() == 0
    assert len(checkouts) == 2   # the claim (with the load) on one, the record on the other


@pytest.mark.parametrize("campaign_status", ["paused", "cancelled"])
def test_a_task_never_holds_two_database_connections_at_once(runtime, campaign_status: str) -> None:
    """Issue 16: the pool is bounded (DATABASE_POOL_SIZE + overflow) while a process runs 64
    threads. A thread that held its load's connection while it opened a transaction for a paused
    or cancelled campaign's message could, with every connection so held, wait for ever."""
    _, mid = _queued_in_campaign(runtime, campaign_status=campaign_status)
    pool = runtime.engine.pool
    most: list[int] = [0]
    sa.event.listen(runtime.engine, "checkout", lambda *_a: most.__setitem__(0, max(most[0], pool.checkedout())))
    outcome = send_message(mid, send_deps(runtime))
    assert outcome is (Outcome.PAUSED if campaign_status == "paused" else Outcome.CANCELLED)
    assert most[0] == 1 and pool.checkedout() == 0


def test_a_worker_process_shares_a_bounded_pool_among_many_threads_without_waiting_forever(migrated_postgres, sandbox) -> None:
    """Issue 16: a worker process keeps at most DATABASE_POOL_SIZE connections (no overflow), so
    processes x threads cannot pass Postgres's max_connections; 32 threads on a pool of 3 all send,
    none waits for ever, and never more than 3 are open."""
    import threading

    from celery import signals

    import worker.celery_app  # noqa: F401 - what every worker process loads: it bounds the pool on worker_init
    from worker.runtime import install_runtime

    rt = make_runtime(stack_env(database_url=migrated_postgres, sandbox_url=sandbox[0], AWAL_RATE_LIMIT="1000/s",
                                AWAL_RATE_BURST="100", DATABASE_POOL_SIZE="3"))
    install_runtime(rt)
    try:
        signals.worker_init.send(sender=None)   # what Celery sends as a worker process starts
        assert rt.pool_overflow == 0
        mids = [enqueue(rt) for _ in range(64)]
        pool, most, outcomes = rt.engine.pool, [0], []
        sa.event.listen(rt.engine, "checkout", lambda *_a: most.__setitem__(0, max(most[0], pool.checkedout())))
        deps = send_deps(rt)
        chunks = [mids[i::32] for i in range(32)]
        threads = [threading.Thread(target=lambda chunk=chunk: outcomes.extend(send_message(m, deps) for m in chunk))
                   for chunk in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(o.value for o in outcomes) == ["sent"] * 64
        assert most[0] <= 3 and pool.checkedout() == 0
    finally:
        install_runtime(None)
        rt.close()


def test_a_thread_that_wakes_inside_a_429_block_takes_a_slot_after_it_instead_of_going_back_to_the_database(runtime) -> None:
    """Issue 26: slots are reserved ahead; another worker's 429 may start a block while this thread
    sleeps for its slot. It used to send its message back to the database (due after the block, so
    after a dispatcher tick too); it now asks for a slot after the block and sends."""
    import time

    from worker.ratelimit import MemoryRateLimiter, RedisRateLimiter
    from worker.settings import RateLimit

    mid = enqueue(runtime)
    deps = send_deps(runtime)
    rate = RateLimit.parse("20/s", "AWAL_RATE_LIMIT")
    if runtime.settings.redis_url:
        deps.limiter = RedisRateLimiter.from_url(runtime.settings.redis_url, rate=rate, burst=1)
    else:
        deps.limiter = MemoryRateLimiter(rate=rate, burst=1)
    deps.limiter.acquire(deps.scope, max_wait_s=5)   # another message took the slot at hand: ours is ahead
    blocks: list[float] = []

    def sleep_while_another_worker_meets_a_429(seconds: float) -> None:
        if not blocks:
            now = deps.limiter.state(deps.scope).as_of or time.time()
            deps.limiter.block(deps.scope, until=now + 0.3)
            blocks.append(now)
        time.sleep(seconds)

    deps.sleep = sleep_while_another_worker_meets_a_429
    assert send_message(mid, deps) is Outcome.SENT
    assert blocks and load(runtime, mid).status == "sent"
