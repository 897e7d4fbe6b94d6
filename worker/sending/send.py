"""The send task's body: wait for a rate slot, claim (and load), send, record.

It depends on two small protocols owned here (a client and a rate limiter), so tests hand in the
sandbox-backed client or a stub, and the Redis and in-memory limiters are interchangeable.
"""

from __future__ import annotations

import enum
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from worker import metrics
from worker.db import DATABASE_UNAVAILABLE
from worker.errors import (
    AmbiguousError,
    AwalError,
    ConfigurationFailure,
    LimiterUnavailable,
    MessageInvalid,
    PermanentError,
    RateLimited,
    TransientError,
)
from worker.logs import log_outcome
from worker.message import ButtonMessage, MessageContent
from worker.models import utcnow
from worker.runtime import Runtime
from worker.sending import gate as consent_gate
from worker.sending import journal, store
from worker.sending.client import AttemptRecord, SendResult, client_of
from worker.sending.journal import journal_of
from worker.sending.outcomes import BatchRefused, OutcomeWriter, writer_of
from worker.settings import Settings
from worker.status import CampaignStatus, MessageStatus
from worker.window import next_opening

log = logging.getLogger("buttoncast.send")


class Outcome(str, enum.Enum):
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    REQUEUED = "requeued"    # transient failure or 429: queued again with a not-before time
    DEFERRED = "deferred"    # no rate slot soon: back to the database before sending
    PAUSED = "paused"        # campaign paused (or 401): back to pending, untouched
    CANCELLED = "cancelled"
    SKIPPED = "skipped"      # not ours to send: duplicate delivery, already final, not yet due
    SUPPRESSED = "suppressed"  # the gate held it: opted out, window closed, frequency cap (worker.sending.gate)
    EXPIRED = "expired"      # not sent before its expires_at


class Client(Protocol):
    def send(self, message: ButtonMessage, phone_number_id: str, *, before_request=None, on_attempt=None) -> SendResult: ...  # noqa: ANN001,E501


class Limiter(Protocol):
    def acquire(self, scope: str, *, max_wait_s: float): ...  # noqa: ANN201
    def observe(self, scope: str, *, limit, remaining, reset_at) -> None: ...  # noqa: ANN001
    def block(self, scope: str, *, until: float, reason: str = "429") -> None: ...
    def state(self, scope: str): ...  # noqa: ANN201


class RateSlotUnavailable(TransientError):
    """No rate slot within RATE_WAIT_MAX_S before an in-client retry: stop and go back to the DB."""

    code = "rate_wait"

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"no rate slot for {wait_s:.1f}s")
        self.wait_s = wait_s


class GateClosed(AwalError):
    """The gate, checked again before an in-client retry, bars the message now (opted out since
    its claim, expired, ...): the retry does not go out and the message ends as a claim would end it."""

    def __init__(self, reason: str) -> None:
        super().__init__(consent_gate.explain(reason), code=reason)
        self.reason = reason


class GateUnchecked(TransientError):
    """The database could not answer the gate before an in-client retry: the retry does not go out."""

    code = "gate_unchecked"


@dataclass
class SendDeps:
    session_factory: sessionmaker[Session]                        # transactions of several statements
    connect: Callable[[], AbstractContextManager[Connection]]     # one statement each (worker.db.single_statements)
    client: Client
    limiter: Limiter
    scope: str
    settings: Settings
    worker_name: str
    sleep: Callable[[float], None] = time.sleep
    journal: journal.OutcomeJournal | None = None   # outcomes the database refused (issue 12 item 13)
    hold_connection: bool = False   # keep a connection between a task's one-statement writes (Postgres; see _Statements)
    outcomes: OutcomeWriter | None = None   # the process's group commit of sent outcomes (Postgres; worker.sending.outcomes)


def send_deps(runtime: Runtime) -> SendDeps:
    """What a send needs, from this process's runtime."""
    return SendDeps(
        session_factory=runtime.session_factory, connect=runtime.single_statements, client=client_of(runtime),
        limiter=runtime.limiter, scope=runtime.scope, settings=runtime.settings, worker_name=runtime.worker_name,
        journal=journal_of(runtime), hold_connection=not runtime.settings.sqlite, outcomes=writer_of(runtime),
    )


def send_message(message_id: int, deps: SendDeps) -> Outcome:
    """Take one message as far as it can go now. Safe to call twice for the same id."""
    statements = _Statements(deps)
    try:
        return _send(message_id, deps, statements)
    finally:
        statements.release()


class _Statements:
    """Where a task's one-statement writes go: `statements()` is a unit for one statement.

    Postgres: one pooled autocommit connection is kept from one statement to the next (each still
    its own transaction) instead of a checkout and a check-in per statement, which cost more CPU
    than the statement's own Python; it is released before anything that waits (a rate slot's sleep,
    the vendor's answer), so a process never holds more connections than statements in flight.
    SQLite: `deps.connect` per statement, since there a unit is a transaction holding the write lock.
    """

    def __init__(self, deps: SendDeps) -> None:
        self._deps = deps
        self._held: AbstractContextManager[Connection] | None = None
        self._conn: Connection | None = None

    def __call__(self) -> AbstractContextManager[store.Unit]:
        if not self._deps.hold_connection:
            return self._deps.connect()
        if self._held is None:
            held = self._deps.connect()
            self._conn, self._held = held.__enter__(), held
        return nullcontext(self._conn)

    def release(self) -> None:
        held, self._held, self._conn = self._held, None, None
        if held is not None:
            held.__exit__(None, None, None)


def _send(message_id: int, deps: SendDeps, connect: _Statements) -> Outcome:
    """A rate slot, then the claim that returns the message (one statement on Postgres), the
    request, and the record (a group commit on Postgres): two round trips to the database."""
    s = deps.settings
    wait_s = _take_slot(deps, message_id)
    if wait_s:   # no rate slot soon: back to the database, due then (only a queued, due row: else not ours)
        with connect() as conn:
            deferred = store.defer(conn, message_id, not_before=utcnow() + timedelta(seconds=wait_s),
                                   actor=deps.worker_name)
        return _done(Outcome.DEFERRED if deferred else Outcome.SKIPPED, None, message_id)

    gate = consent_gate.Gate(frequency_cap=s.marketing_frequency_cap)
    token = store.new_token()
    try:
        with connect() as conn:
            claimed = store.claim_job(conn, message_id, worker=deps.worker_name, gate=gate, token=token)
    except DATABASE_UNAVAILABLE:
        connect.release()
        if _release_lost_claim(deps, message_id, token):
            return _done(Outcome.DEFERRED, None, message_id)
        raise
    connect.release()   # none held while the vendor answers (nor on the slow path: one connection a thread)
    if claimed is None:
        return _not_claimed(message_id, deps, gate)
    token, job = claimed

    opens_at = next_opening(job.window_start, job.window_end, job.window_tz, utcnow(), group=job.zone)
    if opens_at is not None:   # a task that outlived its window on the broker: back, due when it reopens
        with deps.connect() as conn:
            store.unclaim(conn, job.id, token, not_before=opens_at.astimezone(timezone.utc))
        log.info("message %s outside its campaign's send window; due again at %s", job.id, opens_at.isoformat())
        return _done(Outcome.DEFERRED, job, message_id)
    message = _build(job)
    if message is None:
        return _record_invalid(job, token, deps)

    attempts: list[AttemptRecord] = []
    try:
        result = deps.client.send(
            message, job.phone_number_id,
            before_request=_pace_retries(deps, job.id, gate),
            on_attempt=lambda a: _observe(deps, attempts, a),
        )
    except AwalError as error:
        return _record_error(job, token, error, attempts, deps)
    # Logged before the write, so the vendor's ids are on record whatever happens to the write.
    log_outcome(log, logging.INFO, "sent", campaign_id=job.campaign_id, message_id=job.id, status="sent",
                vendor_message_id=result.message_id, vendor_id=result.vendor_id, attempts=len(attempts))
    # One attempt (the usual case): the process's group commit on Postgres. After in-client retries: a transaction.
    batched = (store.SentOutcome(job.id, token, result, attempts[0], deps.worker_name, utcnow())
               if deps.outcomes is not None and len(attempts) == 1 else None)
    _record(deps, lambda unit: store.record_sent(unit, job.id, token, result, attempts, deps.worker_name, job.campaign_id,
                                                    job.phone),
            job, result, unit=connect if len(attempts) == 1 else None, batched=batched,
            entry=journal.JournalEntry.sent(job.id, token, result, attempts, deps.worker_name, job.campaign_id))
    return _done(Outcome.SENT, job, message_id)


class ClaimAnswerLost(TransientError):
    """The claim's connection broke before its answer came back: nothing was sent."""

    code = "claim_answer_lost"


def _release_lost_claim(deps: SendDeps, message_id: int, token: str) -> bool:
    """The claim's connection broke before its answer came back (found by the chaos bench: a
    database outage that began mid-claim). The server may have committed it: the row would be
    `sending` under our token and never sent, and the sweep would take it for a lost worker's
    (`unknown`). Put it back, due now, if our token holds it: at once, retrying for
    RECORD_RETRY_MAX_S, and through the outcome journal, which the sweep applies before it gives
    up on `sending` rows, for a longer outage. True once the database answered."""
    error = ClaimAnswerLost("the answer to the claim was lost with its connection; nothing was sent")
    entry = journal.JournalEntry.failure(message_id, token, MessageStatus.QUEUED, error, [], deps.worker_name, None,
                                         utcnow())
    kept = journal.keep(deps.journal, entry)
    try:
        for attempt in Retrying(stop=stop_after_delay(deps.settings.record_retry_max_s),
                                wait=wait_exponential(multiplier=0.2, max=5),
                                retry=retry_if_exception_type(DATABASE_UNAVAILABLE), reraise=True):
            with attempt, deps.connect() as conn:
                if not store.unclaim(conn, message_id, token, not_before=utcnow()):   # the claim did not take it:
                    store.defer(conn, message_id, not_before=utcnow(), actor=deps.worker_name)   # a new task, next tick
    except DATABASE_UNAVAILABLE:
        log.warning("message %s: the answer to its claim was lost with the database; NOT sent; %s", message_id,
                    "kept in the outcome journal: the sweep puts it back when the database returns" if kept else
                    "if the claim took the row the sweep marks it unknown, but it was not sent")
        return False
    if kept:
        journal.forget(deps.journal, entry)
    log.info("message %s: the answer to its claim was lost with its connection; back to queued, not sent", message_id)
    return True


def _take_slot(deps: SendDeps, message_id: int) -> float:
    """Sleep until this message's rate slot: 0 to go on, else how long until one could be had (the
    message goes back to the database, due then). A thread that wakes inside a 429 block another
    worker started meanwhile asks once more, for a slot after the block, instead of sending the
    message back through the database and the dispatcher's tick (issue 26: a 429 cost a tick)."""
    s = deps.settings
    wait_s = 0.0
    for _ in range(2):
        try:
            reservation = deps.limiter.acquire(deps.scope, max_wait_s=s.rate_wait_max_s)
            if not reservation.granted:
                return reservation.wait_s
            wait_s = _sleep_for_slot(deps, reservation.wait_s)
        except LimiterUnavailable as exc:
            log.warning("message %s deferred: %s", message_id, exc.message)
            return s.rate_wait_max_s  # nothing was sent; the dispatcher re-publishes it shortly
        if not wait_s:
            return 0.0
    return wait_s


def _not_claimed(message_id: int, deps: SendDeps, gate: consent_gate.Gate) -> Outcome:
    """The claim did not take the row. Only now (the rare case) ask why: not queued or not due
    (a duplicate or stale task: not ours), its campaign paused (back to pending, untouched) or
    cancelled, or the gate bars it (suppressed or expired)."""
    with deps.connect() as conn:
        job = store.load_job(conn, message_id)
    if job is None or job.status != MessageStatus.QUEUED.value:
        return _done(Outcome.SKIPPED, job, message_id)
    if job.not_before is not None and job.not_before > utcnow():
        return _done(Outcome.SKIPPED, job, message_id)  # a stale copy; the dispatcher re-publishes when due
    if job.campaign_status == CampaignStatus.PAUSED.value:
        with deps.session_factory.begin() as session:  # only if still queued: a conditional UPDATE
            store.return_to_pending(session, job.id, reason="campaign paused", actor=deps.worker_name)
        return _done(Outcome.PAUSED, job, message_id)
    if job.campaign_status == CampaignStatus.CANCELLED.value:
        with deps.session_factory.begin() as session:
            store.cancel_one(session, job.id, actor=deps.worker_name)
        return _done(Outcome.CANCELLED, job, message_id)
    return _hold_or_skip(job, deps, gate)


def _hold_or_skip(job: store.SendJob, deps: SendDeps, gate: consent_gate.Gate) -> Outcome:
    """The claim did not take the row. Only now (the rare case) ask why: if the gate bars it, it
    ends suppressed or expired; otherwise someone else has it, or it is not due."""
    with deps.session_factory.begin() as session:
        reason = consent_gate.hold(session, job.id, gate=gate, actor=deps.worker_name)
    if reason is None:
        return _done(Outcome.SKIPPED, job, job.id)
    expired = reason == consent_gate.EXPIRED
    log_outcome(log, logging.INFO, consent_gate.explain(reason), campaign_id=job.campaign_id, message_id=job.id,
                status=MessageStatus.EXPIRED.value if expired else MessageStatus.SUPPRESSED.value, error_code=reason)
    return _done(Outcome.EXPIRED if expired else Outcome.SUPPRESSED, job, job.id)


def _build(job: store.SendJob) -> ButtonMessage | None:
    content = MessageContent.from_dict(job.content, validate=False)
    try:
        return ButtonMessage.build(phone=job.phone, **content.as_dict())
    except MessageInvalid:
        return None


def _record_invalid(job: store.SendJob, token: str, deps: SendDeps) -> Outcome:
    """Stored content that no longer validates never reaches the vendor (e.g. limits tightened)."""
    content = MessageContent.from_dict(job.content, validate=False)
    try:
        ButtonMessage.build(phone=job.phone, **content.as_dict())
    except MessageInvalid as exc:
        problem = str(exc)
    with deps.session_factory.begin() as session:
        if store.record_error(session, job.id, token, status=MessageStatus.REJECTED,
                              error=PermanentError(problem, code="invalid_message"), attempts=[], worker=deps.worker_name):
            store.add_event(session, job.id, MessageStatus.SENDING.value, MessageStatus.REJECTED.value,
                            f"stored content no longer validates: {problem}", deps.worker_name)
    return _done(Outcome.FAILED, job, job.id)


def _pace_retries(deps: SendDeps, message_id: int, gate: consent_gate.Gate) -> Callable[[], None]:
    """The first request already holds a slot and passed the gate at its claim; every in-client
    retry needs a slot of its own and passes the gate again (issue 25 item 4: a STOP committed
    after the claim stops the retry)."""
    first = [True]

    def before_request() -> None:
        if first[0]:
            first[0] = False
            return
        try:
            reservation = deps.limiter.acquire(deps.scope, max_wait_s=deps.settings.rate_wait_max_s)
            if not reservation.granted:
                raise RateSlotUnavailable(reservation.wait_s)
            blocked_s = _sleep_for_slot(deps, reservation.wait_s)
        except LimiterUnavailable:
            raise RateSlotUnavailable(deps.settings.rate_wait_max_s) from None
        if blocked_s:
            raise RateSlotUnavailable(blocked_s)
        _check_gate_again(deps, message_id, gate)

    return before_request


def _check_gate_again(deps: SendDeps, message_id: int, gate: consent_gate.Gate) -> None:
    """Raise GateClosed if the gate bars the message now; GateUnchecked if the database cannot say."""
    try:
        with deps.connect() as conn:
            reason = consent_gate.barred_reason(conn, message_id, gate=gate, now=utcnow())
    except DATABASE_UNAVAILABLE as exc:
        raise GateUnchecked(f"the gate could not be checked before a retry ({type(exc).__name__})") from None
    if reason is not None:
        raise GateClosed(reason)


def _block_everyone(deps: SendDeps, retry_after_s: float) -> None:
    """Tell every worker to stop until Retry-After, on the limiter's clock (Redis server time)."""
    try:
        limiter_now = deps.limiter.state(deps.scope).as_of or time.time()
        deps.limiter.block(deps.scope, until=limiter_now + retry_after_s)
        metrics.RATE_BLOCKS.inc()
    except LimiterUnavailable as exc:  # this message's not_before still holds it back
        log.warning("could not share a 429 block with other workers: %s", exc.message)


def _sleep_for_slot(deps: SendDeps, wait_s: float) -> float:
    """Sleep until a reserved slot; return how long a 429 block set meanwhile still lasts (0: go).

    Slots are reserved ahead, so a worker that slept may wake inside a block another worker's
    429 started; it must not spend the request on a certain 429.
    """
    metrics.RATE_WAIT_SECONDS.observe(wait_s)
    if wait_s <= 0:
        return 0.0
    deps.sleep(wait_s)
    state = deps.limiter.state(deps.scope)
    now = state.as_of or time.time()
    return state.blocked_until - now if state.blocked_until and state.blocked_until > now else 0.0


def _observe(deps: SendDeps, attempts: list[AttemptRecord], attempt: AttemptRecord) -> None:
    attempts.append(attempt)
    metrics.SEND_SECONDS.observe(attempt.duration_ms / 1000)
    if attempt.http_status == 429:   # every one: a full window's 429 is retried in the task (client.WindowFull)
        metrics.RATE_LIMITED.inc()
    if attempt.rate.present:
        try:
            deps.limiter.observe(deps.scope, limit=attempt.rate.limit, remaining=attempt.rate.remaining,
                                 reset_at=attempt.rate.reset_at)
        except LimiterUnavailable as exc:  # advisory: never worth losing the vendor's answer
            log.warning("could not record the vendor's rate headers: %s", exc.message)


def _record_error(job: store.SendJob, token: str, error: AwalError, attempts: list[AttemptRecord], deps: SendDeps) -> Outcome:
    """Map an error class to the message's next state. Reads as the state machine's failure edges."""
    s = deps.settings
    fields = dict(campaign_id=job.campaign_id, message_id=job.id, error_code=error.code, request_id=error.request_id)
    counted = job.attempts + sum(1 for a in attempts if a.http_status != 429)

    def kept(status: MessageStatus, not_before: datetime | None = None, streak: str | None = None,
             threshold: int | None = None) -> journal.JournalEntry:
        """What the outcome journal keeps if the database refuses this outcome (issue 12 item 13),
        with the campaign streak this write counts it toward, so a replay counts it too (issue 25)."""
        return journal.JournalEntry.failure(job.id, token, status, error, attempts, deps.worker_name,
                                            job.campaign_id, not_before, streak=streak, streak_threshold=threshold)

    if isinstance(error, GateClosed):
        return _record_held(job, token, error, attempts, deps)

    if isinstance(error, RateLimited):   # (counted in _observe, with the 429s retried in the task)
        _block_everyone(deps, error.retry_after)
        due = utcnow() + timedelta(seconds=error.retry_after)
        _record(deps, lambda ss: store.record_error(ss, job.id, token, status=MessageStatus.QUEUED, error=error,
                                                    attempts=attempts, worker=deps.worker_name, not_before=due), job,
                entry=kept(MessageStatus.QUEUED, due))
        log_outcome(log, logging.INFO, f"rate limited; retry after {error.retry_after:.0f}s", status="queued", **fields)
        return _done(Outcome.REQUEUED, job, job.id)

    if isinstance(error, RateSlotUnavailable):
        due = utcnow() + timedelta(seconds=error.wait_s)

        def put_back(ss: Session) -> None:
            if store.record_error(ss, job.id, token, status=MessageStatus.QUEUED, error=error, attempts=attempts,
                                  worker=deps.worker_name, not_before=due) == MessageStatus.QUEUED.value:
                store.add_event(ss, job.id, MessageStatus.SENDING.value, MessageStatus.QUEUED.value,
                                f"retry needs a rate slot; {error.message}; due {due:%H:%M:%S}", deps.worker_name)
        _record(deps, put_back, job, entry=kept(MessageStatus.QUEUED, due))
        return _done(Outcome.DEFERRED, job, job.id)

    if isinstance(error, ConfigurationFailure) and job.campaign_id is not None:
        # 401, TLS or proxy: wrong for every message, so pause the campaign; this one goes back
        # untouched. (An ad-hoc message falls through to PermanentError: failed with the code.)
        def pause(ss: Session) -> None:
            if store.record_error(ss, job.id, token, status=MessageStatus.PENDING, error=error, attempts=attempts,
                                  worker=deps.worker_name) == MessageStatus.PENDING.value:   # not cancelled meanwhile
                store.add_event(ss, job.id, MessageStatus.SENDING.value, MessageStatus.PENDING.value,
                                f"{error.summary}: not the recipient's fault", deps.worker_name)
            store.pause_campaign(ss, job.campaign_id, reason=f"{error.summary} {error.code}: {error.message}")
        _record(deps, pause, job, entry=kept(MessageStatus.PENDING))
        log_outcome(log, logging.ERROR, f"{error.summary}; campaign paused", status="pending", **fields)
        return _done(Outcome.PAUSED, job, job.id)

    if isinstance(error, PermanentError):
        def fail(ss: Session) -> None:
            store.record_error(ss, job.id, token, status=MessageStatus.FAILED, error=error, attempts=attempts, worker=deps.worker_name)
            if job.campaign_id is not None:
                store.note_campaign_failure(ss, job.campaign_id, threshold=s.auto_pause_consecutive_failures,
                                            reason=f"{error.code}: {error.message}")
        _record(deps, fail, job, entry=kept(MessageStatus.FAILED, streak=journal.STREAK_FAILURES,
                                            threshold=s.auto_pause_consecutive_failures))
        log_outcome(log, logging.WARNING, f"failed: {error.message}", status="failed", **fields)
        return _done(Outcome.FAILED, job, job.id)

    if isinstance(error, AmbiguousError):
        def unknown(ss: Session) -> None:
            written = store.record_error(ss, job.id, token, status=MessageStatus.UNKNOWN, error=error,
                                         attempts=attempts, worker=deps.worker_name)
            if written and job.campaign_id is not None:   # a row we still owned: count it once
                store.note_campaign_unknown(ss, job.campaign_id, threshold=s.auto_pause_consecutive_unknown,
                                            reason=f"{error.code}: {error.message}")
        _record(deps, unknown, job, entry=kept(MessageStatus.UNKNOWN, streak=journal.STREAK_UNKNOWN,
                                               threshold=s.auto_pause_consecutive_unknown))
        log_outcome(log, logging.WARNING, "unknown: request sent, no answer; not resent automatically", status="unknown", **fields)
        return _done(Outcome.UNKNOWN, job, job.id)

    # TransientError: the vendor did not act. Retry later, until the budget runs out.
    if counted >= s.message_max_attempts:
        _record(deps, lambda ss: store.record_error(ss, job.id, token, status=MessageStatus.FAILED, error=error,
                                                    attempts=attempts, worker=deps.worker_name), job,
                entry=kept(MessageStatus.FAILED))
        log_outcome(log, logging.WARNING, f"failed after {counted} attempts: {error.message}", status="failed", **fields)
        return _done(Outcome.FAILED, job, job.id)
    due = store.backoff_until(counted, base_s=s.requeue_backoff_base_s, max_s=s.requeue_backoff_max_s)
    _record(deps, lambda ss: store.record_error(ss, job.id, token, status=MessageStatus.QUEUED, error=error,
                                                attempts=attempts, worker=deps.worker_name, not_before=due), job,
            entry=kept(MessageStatus.QUEUED, due))
    log_outcome(log, logging.INFO, f"transient failure; retry at {due:%H:%M:%S}", status="queued", **fields)
    return _done(Outcome.REQUEUED, job, job.id)


def _record_held(job: store.SendJob, token: str, error: GateClosed, attempts: list[AttemptRecord],
                 deps: SendDeps) -> Outcome:
    """The gate barred an in-client retry: the message ends `suppressed` with the reason (or
    `expired`), as the claim's gate would have ended it, keeping the attempts it made."""
    status = MessageStatus.EXPIRED if error.reason == consent_gate.EXPIRED else MessageStatus.SUPPRESSED

    def held(ss: Session) -> None:
        if store.record_error(ss, job.id, token, status=status, error=error, attempts=attempts,
                              worker=deps.worker_name):
            store.add_event(ss, job.id, MessageStatus.SENDING.value, status.value,
                            f"{error.reason}: {error.message}; checked again before a retry", deps.worker_name)
    _record(deps, held, job, entry=journal.JournalEntry.failure(job.id, token, status, error, attempts,
                                                                deps.worker_name, job.campaign_id))
    log_outcome(log, logging.INFO, f"{error.message} (before a retry)", campaign_id=job.campaign_id,
                message_id=job.id, status=status.value, error_code=error.reason)
    return _done(Outcome.EXPIRED if status is MessageStatus.EXPIRED else Outcome.SUPPRESSED, job, job.id)


def _record(deps: SendDeps, write: Callable[[store.Unit], object], job: store.SendJob, result: SendResult | None = None,
            unit: Callable[[], AbstractContextManager[store.Unit]] | None = None,
            entry: journal.JournalEntry | None = None, batched: store.SentOutcome | None = None) -> None:
    """Write an outcome in one unit (a transaction; `deps.connect` for a one-statement write),
    retrying while the database is unreachable (RECORD_RETRY_MAX_S). `batched`: first through the
    process's group commit (worker.sending.outcomes), which returns once the outcome is durable;
    a batch refused for any reason but an outage is written alone here.

    Issue 12 item 13: on the FIRST failed write the vendor ids go to a WARNING line and `entry` (the
    outcome, if the caller gave one) to the outcome journal, which the sweep applies once the
    database is back; a SIGKILL during the retries loses nothing. If the retries still fail, an
    ERROR line says so; the journal (when it took the entry) records the outcome later (`sent` with its ids, or the failure).
    """
    try:
        if batched is not None and deps.outcomes is not None and _record_batched(deps.outcomes, batched):
            return
        with (unit or deps.session_factory.begin)() as opened:   # the usual case: written at once, no retry machinery
            write(opened)
        return
    except DATABASE_UNAVAILABLE as exc:
        log.warning("recording message %s failed (%s), retrying for up to %ss: vendor messageId=%s vendor id=%s",
                    job.id, exc.__class__.__name__, deps.settings.record_retry_max_s,
                    result.message_id if result else None, result.vendor_id if result else None)
        if entry is not None:
            entry = replace(entry, error=exc.__class__.__name__)
        kept = entry is not None and journal.keep(deps.journal, entry)
    try:
        for attempt in Retrying(
            stop=stop_after_delay(deps.settings.record_retry_max_s),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(DATABASE_UNAVAILABLE),
            reraise=True,
        ):
            # A fresh connection for each retry: the task's own one may be the one that broke.
            with attempt, (deps.connect if unit else deps.session_factory.begin)() as opened:
                write(opened)
    except DATABASE_UNAVAILABLE:
        log.error(
            "RECONCILE: could not record the outcome of message %s (campaign %s): vendor messageId=%s vendor id=%s%s",
            job.id, job.campaign_id, result.message_id if result else None, result.vendor_id if result else None,
            "; kept in the outcome journal, the sweep records it when the database is back" if kept else "",
        )
        raise
    if kept:
        journal.forget(deps.journal, entry)


def _record_batched(writer: OutcomeWriter, outcome: store.SentOutcome) -> bool:
    """True once the group commit holds the outcome; False when its batch was refused (write alone)."""
    try:
        writer.record(outcome)
    except BatchRefused:
        return False
    return True


def _done(outcome: Outcome, job: store.SendJob | None, message_id: int) -> Outcome:
    metrics.MESSAGES.labels(outcome=outcome.value).inc()
    if outcome in (Outcome.SKIPPED,):
        log.debug("message %s skipped (status %s)", message_id, job.status if job else "missing")
    return outcome
