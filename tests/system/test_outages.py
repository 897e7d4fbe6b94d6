"""Outages do not lose work (issue 5, item 2).

- The broker's Redis down: a dispatch tick fails and says so once, nothing is marked sent or
  failed, and the next tick after Redis is back publishes the message (a private redis-server, so
  the machine's shared Redis is never touched).
- The database down when a worker has the vendor's answer: the write is retried for
  RECORD_RETRY_MAX_S; the first failure logs the vendor ids and journals the outcome (issue 12
  item 13), and the sweep records it `sent` once the database is back (not `unknown`).
- The rate limiter's Redis down mid-send: what the send path does with it (two cases below are
  expected failures of the current send path, reported to its owner).
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from scheduler.dispatcher import dispatch_tick
from scheduler.sweeper import sweep
from tests.chaos_scenario import PrivateRedis
from tests.conftest import make_runtime, stack_env
from worker import ticks
from worker.errors import LimiterUnavailable
from worker.models import Attempt, Message, MessageEvent, utcnow
from worker.queues import QUEUE_ADHOC
from worker.ratelimit import MemoryRateLimiter
from worker.runtime import install_runtime
from worker.sending.client import client_of
from worker.sending.journal import journal_of
from worker.sending.outcomes import OutcomeWriter
from worker.sending.send import Outcome, send_deps, send_message

CONTENT = {"body_text": "Hello", "buttons": [{"id": "yes", "title": "Yes"}]}
_phones = iter(range(20_000_000, 99_999_999))


def add_queued(rt) -> int:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        m = Message(phone_number_id="123456", phone=f"9665{next(_phones)}", content=CONTENT, status="queued", queued_at=utcnow())
        s.add(m)
        s.flush()
        return m.id


def load(rt, mid: int) -> Message:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.get(Message, mid)


def attempts_of(rt, mid: int) -> list[int | None]:  # noqa: ANN001
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(Attempt.http_status).where(Attempt.message_id == mid).order_by(Attempt.id)))


@pytest.fixture()
def private_redis(tmp_path):  # noqa: ANN001
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for a private broker", pytrace=False)
    server = PrivateRedis(tmp_path)  # port chosen, server not started: Redis is "down"
    yield server
    server.kill()


@pytest.mark.slow
def test_with_the_brokers_redis_down_a_dispatch_tick_fails_logs_once_and_marks_nothing(clean_postgres, private_redis, caplog, monkeypatch) -> None:
    # Given a queued message and a broker whose Redis is down. (Each failing tick takes ~19 s:
    # send_task subscribes to the result backend, whose reconnect policy retries before giving up.)
    # (an empty database: the tick publishes every due message, not only this test's)
    rt = make_runtime(stack_env(database_url=clean_postgres, sandbox_url="http://127.0.0.1:9",
                                broker_url=private_redis.url, AWAL_RATE_LIMIT="1000/s"))
    install_runtime(rt)
    monkeypatch.setattr(ticks, "_failing", {})
    mid = add_queued(rt)
    caplog.set_level(logging.INFO, logger="buttoncast.scheduler")
    try:
        # When two dispatch ticks run
        for _ in range(2):
            assert ticks.run_tick("dispatch", dispatch_tick) is None

        # Then one ERROR line, and the message is still queued with no task out (not sent, not failed)
        errors = [r for r in caplog.records if r.name == "buttoncast.scheduler" and r.levelno == logging.ERROR]
        assert len(errors) == 1 and "dispatch tick failed" in errors[0].getMessage()
        msg = load(rt, mid)
        assert (msg.status, msg.enqueued_at, msg.attempts) == ("queued", None, 0) and attempts_of(rt, mid) == []

        # When Redis is back (empty), the next tick publishes it and says it recovered
        private_redis.start()
        assert ticks.run_tick("dispatch", dispatch_tick) is not None
        assert any("dispatch tick recovered" in r.getMessage() for r in caplog.records)
        assert load(rt, mid).enqueued_at is not None
        assert redis.Redis.from_url(private_redis.url).llen(QUEUE_ADHOC) == 1
    finally:
        install_runtime(None)
        rt.close()


class DatabaseGoesAway:
    """The send path's two ways into the database (transactions and one-statement connections),
    both failing like an unreachable database on demand."""

    def __init__(self, sessions, connect, error=None) -> None:  # noqa: ANN001
        self.sessions, self.real_connect, self.down_until = sessions, connect, 0.0
        self.error = error or (lambda: OperationalError("BEGIN", {}, ConnectionRefusedError("database unreachable")))

    def _check(self) -> None:
        if time.monotonic() < self.down_until:
            raise self.error()

    def begin(self):  # noqa: ANN201
        self._check()
        return self.sessions.begin()

    @contextmanager
    def connect(self):  # noqa: ANN201
        """A connection whose statements fail while the database is away, including one a task
        opened before the outage and still holds (worker.sending.send keeps one per task on Postgres)."""
        self._check()
        with self.real_connect() as conn:
            yield _FailsWhenAway(conn, self._check)

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return self.sessions(*args, **kwargs)


class _FailsWhenAway:
    def __init__(self, conn, check) -> None:  # noqa: ANN001
        self._conn, self._check = conn, check

    def execute(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self._check()
        return self._conn.execute(*args, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._conn, name)


class OutageAfterAnswer:
    """The vendor answers, and at that moment the database goes away for `outage_s`."""

    def __init__(self, real, sessions: DatabaseGoesAway, outage_s: float) -> None:  # noqa: ANN001
        self.real, self.sessions, self.outage_s = real, sessions, outage_s

    def send(self, message, phone_number_id, **kwargs):  # noqa: ANN001, ANN003, ANN201
        result = self.real.send(message, phone_number_id, **kwargs)
        self.sessions.down_until = time.monotonic() + self.outage_s
        return result


def deps_with_outage(rt, outage_s: float, record_retry_max_s: float, error=None):  # noqa: ANN001, ANN201
    deps = send_deps(rt)
    sessions = DatabaseGoesAway(rt.session_factory, rt.single_statements, error)
    deps.session_factory, deps.connect = sessions, sessions.connect
    if deps.outcomes is not None:   # Postgres: the group commit's connections go away too
        deps.outcomes = OutcomeWriter(sessions.connect, max_batch=rt.settings.outcome_batch_max,
                                      max_delay_s=rt.settings.outcome_batch_delay_s)
    deps.client = OutageAfterAnswer(client_of(rt), sessions, outage_s)
    deps.settings = rt.settings.replace(record_retry_max_s=record_retry_max_s)
    return deps


@pytest.fixture()
def rt(database_url, sandbox):  # noqa: ANN001
    runtime = make_runtime(stack_env(database_url=database_url, sandbox_url=sandbox[0], AWAL_RATE_LIMIT="1000/s",
                                     SEND_READ_TIMEOUT_S="1", SEND_RETRY_MAX_WAIT_S="0.05", SENDING_TIMEOUT_S="5"))
    yield runtime
    runtime.close()


@pytest.mark.parametrize("error", [
    None,   # unreachable: OperationalError
    # a hung database: every pooled connection busy for the pool's timeout (the pool is bounded)
    lambda: PoolTimeout("QueuePool limit of size 16 overflow 20 reached, connection timed out, timeout 30.00"),
], ids=["unreachable", "pool-timeout"])
def test_a_short_database_outage_at_record_time_is_ridden_out_by_retrying_the_write(rt, sandbox, error) -> None:
    mid = add_queued(rt)

    assert send_message(mid, deps_with_outage(rt, outage_s=0.6, record_retry_max_s=10, error=error)) is Outcome.SENT

    msg = load(rt, mid)
    [received] = sandbox[1].received(phone=msg.phone)
    assert msg.status == "sent" and msg.vendor_message_id == received["message_id"]


def test_issue12_item13_a_long_database_outage_keeps_the_outcome_and_the_sweep_records_it_sent(rt, sandbox, caplog) -> None:
    """Issue 12 item 13: the write fails past RECORD_RETRY_MAX_S; the vendor ids were logged at the
    first failure, the outcome was journaled, and the sweep (before its sending -> unknown step)
    records the message `sent` with its messageId and attempt row."""
    mid = add_queued(rt)
    caplog.set_level(logging.WARNING, logger="buttoncast.send")

    with pytest.raises(OperationalError):
        send_message(mid, deps_with_outage(rt, outage_s=60, record_retry_max_s=0.5))

    msg = load(rt, mid)
    [received] = sandbox[1].received(phone=msg.phone)
    first = next(r for r in caplog.records if f"recording message {mid} failed" in r.getMessage())
    assert first.levelno == logging.WARNING and f"messageId={received['message_id']}" in first.getMessage()
    [line] = [r.getMessage() for r in caplog.records if "RECONCILE" in r.getMessage()]
    assert f"message {mid}" in line and "outcome journal" in line
    assert msg.status == "sending" and [e.message_id for e in journal_of(rt).entries()] == [mid]
    # The sweep runs after SENDING_TIMEOUT_S: the journal wins over the lost-worker guess
    sweep(rt, now=utcnow() + timedelta(seconds=rt.settings.sending_timeout_s + 1))
    msg = load(rt, mid)
    assert (msg.status, msg.vendor_message_id) == ("sent", received["message_id"])
    assert attempts_of(rt, mid) == [200] and journal_of(rt).entries() == []
    with rt.session_factory() as s:
        assert s.scalar(sa.select(MessageEvent.actor).where(MessageEvent.message_id == mid)) == "sweeper"
    sweep(rt, now=utcnow() + timedelta(seconds=rt.settings.sending_timeout_s + 2))   # idempotent
    assert attempts_of(rt, mid) == [200] and len(sandbox[1].received(phone=msg.phone)) == 1


class RefusedThenOutage:
    """The vendor refuses the message (400), and at that moment the database goes away."""

    def __init__(self, sessions: DatabaseGoesAway, outage_s: float) -> None:
        self.sessions, self.outage_s = sessions, outage_s

    def send(self, message, phone_number_id, *, before_request=None, on_attempt=None):  # noqa: ANN001, ANN201
        from worker.errors import PermanentError
        from worker.sending.client import AttemptRecord

        error = PermanentError("phone is not a WhatsApp number", code="invalid_phone_number", http_status=400,
                               request_id="req_outage")
        on_attempt(AttemptRecord(started_at=utcnow(), duration_ms=5, http_status=400, outcome="PermanentError",
                                 error_code=error.code, error_message=error.message, request_id=error.request_id))
        self.sessions.down_until = time.monotonic() + self.outage_s
        raise error


def test_issue12_item13_a_failure_outcome_the_database_refused_is_journaled_and_recorded_failed_not_unknown(rt) -> None:
    """Issue 12 item 13: the vendor's 400 arrives while the database is down past RECORD_RETRY_MAX_S;
    the outcome is journaled, and the sweep records the message `failed` with the vendor's code
    (before, the row stayed `sending` and the sweep turned it `unknown`)."""
    mid = add_queued(rt)
    deps = deps_with_outage(rt, outage_s=60, record_retry_max_s=0.3)
    deps.client = RefusedThenOutage(deps.session_factory, outage_s=60)

    with pytest.raises(OperationalError):
        send_message(mid, deps)

    assert load(rt, mid).status == "sending" and [e.status for e in journal_of(rt).entries()] == ["failed"]
    sweep(rt, now=utcnow() + timedelta(seconds=rt.settings.sending_timeout_s + 1))
    msg = load(rt, mid)
    assert (msg.status, msg.last_error_code, msg.last_request_id) == ("failed", "invalid_phone_number", "req_outage")
    assert attempts_of(rt, mid) == [400] and journal_of(rt).entries() == []


class LimiterRedisGoesDown(MemoryRateLimiter):
    """An in-memory limiter that starts failing like RedisRateLimiter does when Redis is unreachable."""

    def __init__(self, *args, fail_acquire_after: int = 10**9, fail_observe: bool = False, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.acquires, self.fail_acquire_after, self.fail_observe = 0, fail_acquire_after, fail_observe

    def acquire(self, scope, *, max_wait_s):  # noqa: ANN001, ANN201
        self.acquires += 1
        if self.acquires > self.fail_acquire_after:
            raise LimiterUnavailable("rate limiter unreachable (ConnectionError)")
        return super().acquire(scope, max_wait_s=max_wait_s)

    def observe(self, scope, **kwargs) -> None:  # noqa: ANN001, ANN003
        if self.fail_observe:
            raise LimiterUnavailable("rate limiter unreachable (ConnectionError)")
        super().observe(scope, **kwargs)


def limiter_for(rt, **kwargs) -> LimiterRedisGoesDown:  # noqa: ANN001
    return LimiterRedisGoesDown(rate=rt.settings.rate_limit, burst=rt.settings.rate_burst, **kwargs)


def test_with_the_limiters_redis_down_before_the_claim_the_message_stays_queued(rt, sandbox) -> None:
    mid = add_queued(rt)
    deps = send_deps(rt)
    deps.limiter = limiter_for(rt, fail_acquire_after=0)

    assert send_message(mid, deps) is Outcome.DEFERRED  # nothing sent; back to the dispatcher shortly

    msg = load(rt, mid)
    assert (msg.status, msg.attempts) == ("queued", 0) and sandbox[1].received(phone=msg.phone) == []
    assert msg.enqueued_at is None and msg.not_before is not None


def test_with_the_limiters_redis_down_between_a_503_and_the_retry_the_message_is_requeued_with_its_attempt(rt, sandbox) -> None:
    # Given a 503 on the first request, and Redis gone when the in-client retry asks for a slot
    mid = add_queued(rt)
    phone = load(rt, mid).phone
    sandbox[1].script(phone, ["503"])
    deps = send_deps(rt)
    deps.limiter = limiter_for(rt, fail_acquire_after=1)

    try:
        send_message(mid, deps)
    finally:
        # Then the vendor never acted, so the message must go back to the queue with its 503 on record
        msg = load(rt, mid)
        assert sandbox[1].received(phone=phone) == []
        assert msg.status == "queued" and attempts_of(rt, mid) == [503]


def test_with_the_limiters_redis_down_when_the_200_arrives_the_message_is_still_recorded_sent(rt, sandbox) -> None:
    # Given the vendor sends rate-limit headers (as the real one always does) and Redis is gone
    sandbox[1].configure(rate_limit="1000/s")
    mid = add_queued(rt)
    deps = send_deps(rt)
    deps.limiter = limiter_for(rt, fail_observe=True)

    try:
        send_message(mid, deps)
    finally:
        msg = load(rt, mid)
        [received] = sandbox[1].received(phone=msg.phone)
        assert msg.status == "sent" and msg.vendor_message_id == received["message_id"]


def test_a_claim_whose_answer_is_lost_with_its_connection_puts_the_message_back_unsent(rt, sandbox, monkeypatch) -> None:
    """Found by the chaos bench (issue 26): the database went away just after committing a claim,
    so the worker never heard it took the row. The row was `sending`, never sent, and the sweep
    made it `unknown` (a lost worker's). Now the worker puts it back under its own token."""
    from worker.sending import send as send_module
    from worker.sending import store

    mid = add_queued(rt)
    real_claim = store.claim_job

    def claim_then_lose_the_answer(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_claim(*args, **kwargs)   # committed...
        raise OperationalError("claim", {}, ConnectionResetError("server closed the connection unexpectedly"))

    monkeypatch.setattr(send_module.store, "claim_job", claim_then_lose_the_answer)
    assert send_message(mid, send_deps(rt)) is Outcome.DEFERRED

    msg = load(rt, mid)
    assert (msg.status, msg.claim_token) == ("queued", None) and sandbox[1].received(phone=msg.phone) == []
    monkeypatch.setattr(send_module.store, "claim_job", real_claim)
    assert send_message(mid, send_deps(rt)) is Outcome.SENT   # and it goes out once, later
    assert len(sandbox[1].received(phone=msg.phone)) == 1


def test_a_lost_claim_answer_during_a_long_outage_is_put_back_by_the_sweep_from_the_journal(rt, sandbox, monkeypatch) -> None:
    from worker.sending import send as send_module
    from worker.sending import store

    mid = add_queued(rt)
    real_claim = store.claim_job
    deps = send_deps(rt)
    sessions = DatabaseGoesAway(rt.session_factory, rt.single_statements)
    deps.connect = sessions.connect
    deps.settings = rt.settings.replace(record_retry_max_s=0.3)

    def claim_then_the_database_goes(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_claim(*args, **kwargs)
        sessions.down_until = time.monotonic() + 60
        raise OperationalError("claim", {}, ConnectionResetError("server closed the connection unexpectedly"))

    monkeypatch.setattr(send_module.store, "claim_job", claim_then_the_database_goes)
    with pytest.raises(OperationalError):
        send_message(mid, deps)
    # (Postgres: the claim was its own transaction, committed. SQLite: it rolled back with the error.)
    assert load(rt, mid).status == ("queued" if rt.settings.sqlite else "sending")
    assert [e.message_id for e in journal_of(rt).entries()] == [mid]

    # The sweep, even after SENDING_TIMEOUT_S, applies the journal first: queued, not unknown
    sweep(rt, now=utcnow() + timedelta(seconds=rt.settings.sending_timeout_s + 1))
    msg = load(rt, mid)
    assert msg.status == "queued" and msg.last_error_code == (None if rt.settings.sqlite else "claim_answer_lost")
    assert sandbox[1].received(phone=msg.phone) == [] and journal_of(rt).entries() == []


def test_a_claim_that_never_reached_the_database_leaves_the_message_for_the_next_tick(rt, sandbox, monkeypatch) -> None:
    """The same error before the claim ran (e.g. a pool timeout): nothing to undo, but the task is
    done, so the row is handed back to the dispatcher (no task of its own) instead of waiting
    QUEUED_TASK_TIMEOUT_S for the sweep."""
    from worker.sending import send as send_module

    mid = add_queued(rt)
    with rt.session_factory.begin() as s:   # as the dispatcher leaves it: its task is on the broker
        s.execute(sa.update(Message).where(Message.id == mid).values(enqueued_at=utcnow()))

    def never_reaches_it(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OperationalError("claim", {}, ConnectionRefusedError("database unreachable"))

    monkeypatch.setattr(send_module.store, "claim_job", never_reaches_it)
    assert send_message(mid, send_deps(rt)) is Outcome.DEFERRED
    msg = load(rt, mid)
    assert (msg.status, msg.enqueued_at, msg.claim_token) == ("queued", None, None)
    assert sandbox[1].received(phone=msg.phone) == []
