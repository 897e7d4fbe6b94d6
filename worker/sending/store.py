"""Every write the send path makes to a message row, each one conditional and atomic.

A claim is one conditional UPDATE (only a `queued` row becomes `sending`), and every outcome write
is guarded by the claim token, so a task delivered twice, a sweeper racing a live worker, or a stale
worker coming back cannot move a message it no longer owns.
"""

from __future__ import annotations

import json
import logging
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from worker import lifecycle
from worker.errors import AwalError
from worker.fit import fit
from worker.hooks import outbox as hooks_outbox
from worker.hooks.events import HookEvent, new_event_id
from worker.hooks.models import OutboxStatus
from worker.models import Attempt, Campaign, Contact, Message, MessageEvent, UTCDateTime, utcnow
from worker.sending import gate as consent_gate
from worker.sending.client import AttemptRecord, SendResult
from worker.sending.gate import NO_CAP, Gate
from worker.status import CampaignStatus, MessageStatus

Q, S = MessageStatus.QUEUED.value, MessageStatus.SENDING.value
log = logging.getLogger("buttoncast.store")


Unit = Session | sa.Connection   # a transaction, or (Postgres) an autocommit connection for one statement


def _core(unit: Unit) -> sa.Connection:
    """The connection, for the send path's statements: run through Core they skip the ORM's
    bulk-UPDATE machinery (about 0.8 ms of CPU per statement), same SQL, same transaction."""
    return unit.connection() if isinstance(unit, Session) else unit


class _Prepared:
    """A hot Postgres statement compiled once and run on the driver's own connection (issue 26 item
    5): SQLAlchemy's per-execution work (the statement's cache key, parameter and result processing)
    cost more worker CPU than the claim's database time (py-spy: 19 % of a worker's busy time was
    the claim, most of it SQLAlchemy). Parameters go in as the columns hold them (datetimes naive
    UTC, as UTCDateTime binds them); psycopg prepares the statement on each connection. Errors come
    out as SQLAlchemy's (OperationalError, IntegrityError, ...), so callers catch what they caught."""

    def __init__(self, statement: sa.Executable) -> None:
        compiled = statement.compile(dialect=postgresql.psycopg.dialect())
        self.sql = str(compiled)
        self._fixed = {name: value for name, value in compiled.params.items() if value is not None}

    def rows(self, conn: sa.Connection, params: dict) -> list[tuple]:
        driver = conn.connection.driver_connection
        try:
            with driver.cursor() as cursor:
                cursor.execute(self.sql, {**self._fixed, **params}, prepare=True)
                return cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            if driver.broken or driver.closed:
                conn.invalidate(exc)   # never back to the pool
            raise sa.exc.DBAPIError.instance(self.sql, params, exc, psycopg.Error, dialect=conn.dialect) from exc


def _naive_utc(value: datetime | None) -> datetime | None:
    """What a UTCDateTime column holds: naive UTC."""
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value is not None else None


def _aware_utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None else None


def _param(name: str, type_: sa.types.TypeEngine | None = None) -> sa.BindParameter:
    return sa.bindparam(name, type_=type_)


# The hot statements are built once: constructing an UPDATE with its WHERE clause cost more CPU
# than executing it (about 0.2 ms each, measured with `bench/send_loop.py --profile`).
_NOW = _param("p_now", UTCDateTime())   # one "now" per statement: when the write happened
_LOAD_JOB = (
    sa.select(
        Message.id, Message.status, Message.campaign_id, Campaign.status, Message.phone_number_id,
        Message.phone, Message.content, Message.attempts, Message.not_before,
        Campaign.window_start, Campaign.window_end, Campaign.window_tz,   # issue 12 item 8: checked at send time
        Message.zone,                                                      # issue 22 item 6: --tz recipient
    )
    .outerjoin(Campaign, Campaign.id == Message.campaign_id)
    .where(Message.id == _param("p_message_id"))
)


def _claim_statement(*, capped: bool) -> sa.Update:
    """queued -> sending, only if the gate lets the message through (worker.sending.gate: opted out,
    expired, window closed, frequency cap are conditions of this same UPDATE)."""
    return (
        sa.update(Message)
        .where(
            Message.id == _param("p_message_id"),
            Message.status == Q,
            sa.or_(Message.not_before.is_(None), Message.not_before <= _NOW),
            *consent_gate.conditions(capped=capped),
        )
        .values(status=S, claim_token=_param("p_token"), claimed_by=_param("p_worker"),
                sending_at=_NOW, updated_at=_NOW)
        .execution_options(synchronize_session=False)
    )


_CLAIM = _claim_statement(capped=False)
_CLAIM_CAPPED = _claim_statement(capped=True)


@dataclass(frozen=True)
class SendJob:
    """What a worker needs to send one message, read in one query."""

    id: int
    status: str
    campaign_id: int | None
    campaign_status: str | None
    phone_number_id: str
    phone: str
    content: dict
    attempts: int
    not_before: datetime | None
    window_start: str | None = None   # the campaign's daily send window (worker.window); None: always open
    window_end: str | None = None
    window_tz: str | None = None
    zone: str | None = None           # window_tz "recipient": the number's zone group (worker.window)


_CAMPAIGN_STOPPED = (   # a paused or cancelled campaign's message is not claimed: the slow path puts it back
    sa.select(Campaign.id)
    .where(Campaign.id == Message.campaign_id,   # (no IN list: an expanding parameter would not compile once, see _Prepared)
           sa.or_(Campaign.status == CampaignStatus.PAUSED.value, Campaign.status == CampaignStatus.CANCELLED.value))
    .exists()
)


def _claim_job_statement(*, capped: bool) -> sa.Select:
    """Postgres: the claim and the load as ONE statement (issue 26 item 1). The UPDATE ... RETURNING
    of `_claim_statement` (queued -> sending, the gate's conditions, the campaign neither paused nor
    cancelled) as a CTE, joined to its campaign for the send window: a row is a claimed SendJob."""
    claimed = (
        _claim_statement(capped=capped)
        .where(~_CAMPAIGN_STOPPED)
        .returning(Message.id, Message.campaign_id, Message.phone_number_id, Message.phone, Message.content,
                   Message.attempts, Message.not_before, Message.zone)
        .cte("claimed")
    )
    c = claimed.c
    return (
        sa.select(c.id, sa.literal(S, sa.String()), c.campaign_id, Campaign.status, c.phone_number_id, c.phone,
                  c.content, c.attempts, c.not_before, Campaign.window_start, Campaign.window_end,
                  Campaign.window_tz, c.zone)
        .select_from(claimed.outerjoin(Campaign, Campaign.id == c.campaign_id))
    )


_CLAIM_JOB = _Prepared(_claim_job_statement(capped=False))
_CLAIM_JOB_CAPPED = _Prepared(_claim_job_statement(capped=True))
_CLAIM_UNLESS_STOPPED = _CLAIM.where(~_CAMPAIGN_STOPPED)
_CLAIM_UNLESS_STOPPED_CAPPED = _CLAIM_CAPPED.where(~_CAMPAIGN_STOPPED)


def new_token() -> str:
    """A claim token: who holds a `sending` row, checked by every write that follows the claim."""
    return uuid.uuid4().hex


def claim_job(unit: Unit, message_id: int, *, worker: str, gate: Gate = NO_CAP, now: datetime | None = None,
              token: str | None = None) -> tuple[str, SendJob] | None:
    """Claim a message and read what sending it needs: (claim token, job), or None when the claim
    did not take the row (not queued, not due, its campaign paused or cancelled, or the gate bars
    it: the caller's slow path asks `load_job` and `gate.hold` why). `token`: the caller's (it can
    release a claim whose answer was lost, see `unclaim`), else a new one.

    Postgres: one statement and one round trip. SQLite (one writer, no UPDATE ... RETURNING in a
    CTE): the claim, then the load, in the caller's unit."""
    token = token or new_token()
    now = now or utcnow()
    params = {"p_message_id": message_id, "p_now": now, "p_token": token, "p_worker": worker, **gate.params(now)}
    conn = _core(unit)
    if conn.dialect.name == "postgresql":
        raw = {k: _naive_utc(v) if isinstance(v, datetime) else v for k, v in params.items()}
        rows = (_CLAIM_JOB_CAPPED if gate.frequency_cap else _CLAIM_JOB).rows(conn, raw)
        if not rows:
            return None
        job = SendJob(*rows[0])
        return token, replace(job, not_before=_aware_utc(job.not_before))
    if conn.execute(_CLAIM_UNLESS_STOPPED_CAPPED if gate.frequency_cap else _CLAIM_UNLESS_STOPPED, params).rowcount != 1:
        return None
    job = load_job(conn, message_id)
    return (token, job) if job else None


def unclaim(unit: Unit, message_id: int, token: str, *, not_before: datetime) -> bool:
    """A claimed message that must not go now after all: back to queued, due at `not_before`,
    untouched otherwise; only while `token` holds it. Used when its send window closed while its
    task waited on the broker, and when the claim's answer was lost with its connection (the
    claim may have committed: the row would be `sending`, never sent)."""
    written = _back_unless_cancelled(
        unit, _owned(message_id, token),
        dict(status=Q, claim_token=None, not_before=not_before, enqueued_at=None, updated_at=utcnow()),
        from_status=S, actor=None, now=utcnow(),
    )
    return written == Q


def load_job(unit: Unit, message_id: int) -> SendJob | None:
    row = _core(unit).execute(_LOAD_JOB, {"p_message_id": message_id}).one_or_none()
    return SendJob(*row) if row else None


def claim(unit: Unit, message_id: int, *, worker: str, now: datetime | None = None, gate: Gate = NO_CAP) -> str | None:
    """queued -> sending, atomically, if the gate lets it through. Returns the claim token, or None
    if someone else has it, it is not due, or the gate bars it (worker.sending.gate.hold says why)."""
    token = uuid.uuid4().hex
    now = now or utcnow()
    params = {"p_message_id": message_id, "p_now": now, "p_token": token, "p_worker": worker, **gate.params(now)}
    result = _core(unit).execute(_CLAIM_CAPPED if gate.frequency_cap else _CLAIM, params)
    return token if result.rowcount == 1 else None


def _owned(message_id: int | sa.BindParameter, token: str | sa.BindParameter):  # noqa: ANN202
    # `unknown` is included: a sweeper may have given up on a slow worker that then got an answer;
    # a definite answer from the vendor is better evidence than the sweeper's guess.
    return sa.and_(
        Message.id == message_id,
        Message.claim_token == token,
        Message.status.in_([S, MessageStatus.UNKNOWN.value]),
    )


_ATTEMPT_FIELDS = ("started_at", "duration_ms", "http_status", "outcome", "error_code", "error_message",
                   "request_id", "vendor_message_id")   # AttemptRecord's fields that are Attempt columns


def _attempt_values(a: AttemptRecord) -> dict:
    """The attempt's columns, every string fitted to its column (worker.fit)."""
    values = {c: getattr(a, c) for c in _ATTEMPT_FIELDS}
    for c in _ATTEMPT_FIELDS:
        if isinstance(values[c], str):
            values[c] = fit(Attempt.__table__.c[c], values[c])
    return values


def _attempt_row(message_id: int, a: AttemptRecord, worker: str) -> dict:
    return dict(message_id=message_id, worker=worker, **_attempt_values(a))


def _add_attempts(unit: Unit, message_id: int, attempts: list[AttemptRecord], worker: str) -> None:
    if attempts:
        _core(unit).execute(sa.insert(Attempt), [_attempt_row(message_id, a, worker) for a in attempts])


def _counted(attempts: list[AttemptRecord]) -> int:
    """HTTP attempts that count against the retry budget: 429s are not the message's fault."""
    return sum(1 for a in attempts if a.http_status != 429)


_RECORD_SENT = (
    sa.update(Message)
    .where(_owned(_param("p_message_id"), _param("p_token")))
    .values(
        status=MessageStatus.SENT.value, vendor_id=_param("p_vendor_id", sa.BigInteger()),
        vendor_message_id=_param("p_vendor_message_id", sa.String()), vendor_status=_param("p_vendor_status", sa.String()),
        sent_at=_NOW, finished_at=_NOW, updated_at=_NOW, attempts=Message.attempts + _param("p_counted", sa.Integer()),
        last_error_code=None, last_error_message=None, last_request_id=None, not_before=None,
    )
    .execution_options(synchronize_session=False)
)
# A send breaks both streaks: permanent failures and ambiguous (unknown) outcomes.
_STREAK_RUNNING = sa.or_(Campaign.consecutive_failures != 0, Campaign.consecutive_unknown != 0)
_RESET_FAILURE_STREAK = (
    sa.update(Campaign)
    .where(Campaign.id == _param("p_campaign_id"), _STREAK_RUNNING)
    .values(consecutive_failures=0, consecutive_unknown=0, updated_at=_NOW)
    .execution_options(synchronize_session=False)
)


_CONTACT_SENT = (   # the contact's last sent time (a contact made at enqueue or import; none: nothing to do)
    sa.update(Contact)
    .where(Contact.phone == _param("p_phone", sa.String()))
    .values(last_sent_at=_NOW)
    .execution_options(synchronize_session=False)
)


_CONTACT_SENT_BY_MESSAGE = (
    sa.update(Contact)
    .where(Contact.phone == sa.select(Message.phone).where(Message.id == _param("p_message_id")).scalar_subquery())
    .values(last_sent_at=_NOW)
    .execution_options(synchronize_session=False)
)


def _record_sent_statement(with_hook: bool = False) -> sa.Select:
    """Postgres: the sent-row UPDATE, its attempt row, the failure-streak reset and the contact's
    last-sent stamp as ONE statement (data-modifying CTEs), so on an autocommit connection the whole
    record is one round trip and still atomic. Selects how many message rows the claim token still
    owned (0 or 1). `with_hook`: one more CTE writes the message.sent outbox rows (worker.hooks.outbox)."""
    sent = _RECORD_SENT.returning(Message.id, Message.campaign_id, Message.phone).cte("sent")
    streak = (
        sa.update(Campaign)
        .where(Campaign.id.in_(sa.select(sent.c.campaign_id)), _STREAK_RUNNING)
        .values(consecutive_failures=0, consecutive_unknown=0, updated_at=_NOW)
        .cte("streak")
    )
    attempt = sa.insert(Attempt).values(
        message_id=_param("p_message_id"), worker=_param("p_worker", sa.String()),
        **{c: _param(f"p_attempt_{c}", Attempt.__table__.c[c].type) for c in _ATTEMPT_FIELDS},
    ).cte("attempt")
    contact = (
        sa.update(Contact)
        .where(Contact.phone.in_(sa.select(sent.c.phone)))
        .values(last_sent_at=_NOW)
        .cte("contact")
    )
    hook = [hooks_outbox.sent_event_cte(sent)] if with_hook else []
    return sa.select(sa.func.count()).select_from(sent).add_cte(streak, attempt, contact, *hook)


_RECORD_SENT_ONE_STATEMENT = _record_sent_statement()
_RECORD_SENT_ONE_STATEMENT_WITH_HOOK = _record_sent_statement(with_hook=True)


def record_sent(
    unit: Unit, message_id: int, token: str, result: SendResult, attempts: list[AttemptRecord], worker: str,
    campaign_id: int | None = None, phone: str | None = None,
) -> bool:
    """sending -> sent with the vendor's ids, the attempt rows, and the campaign's failure streak
    broken; only while `token` still owns the row. The contact's last_sent_at too (Postgres one
    statement; otherwise by `phone`, or the message row's phone when it is not given).

    One attempt (the usual case) on a Postgres connection outside a transaction: one statement.
    Otherwise `unit` must be a transaction (several attempts after in-client retries keep their
    order in the table only when inserted in order; PostgreSQL runs the parts of one statement in no
    particular order).

    A messageId the vendor already gave another message (the column is unique) does not stop the
    record (issue 25): the vendor accepted this message, so it is sent all the same, without the
    id on its row; the id stays on its attempt row and in an event, and a WARNING names both."""
    conn = _core(unit)
    now = utcnow()
    params = {"p_message_id": message_id, "p_token": token, "p_now": now, "p_vendor_id": result.vendor_id,
              "p_vendor_message_id": fit(Message.vendor_message_id, result.message_id),
              "p_vendor_status": fit(Message.vendor_status, result.vendor_status),
              "p_counted": _counted(attempts), "p_worker": worker, "p_campaign_id": campaign_id}
    try:
        with _savepoint(unit):
            return _write_sent(conn, params, result, attempts, phone)
    except sa.exc.IntegrityError:
        holder = _vendor_message_id_holder(conn, message_id, params["p_vendor_message_id"])
        if holder is None:
            raise
    log.warning("message %s: the vendor's messageId %s already belongs to message %s; recorded sent without it "
                "(kept on the attempt row)", message_id, params["p_vendor_message_id"], holder)
    done = _write_sent(conn, dict(params, p_vendor_message_id=None), result, attempts, phone)
    if done:
        why = (f"the vendor's messageId {params['p_vendor_message_id']} already belongs to message {holder}: "
               "sent, with the id on this message's attempt row only")
        conn.execute(sa.insert(MessageEvent).values(message_id=message_id, at=now, from_status=S, actor=worker,
                                                    to_status=MessageStatus.SENT.value,
                                                    reason=fit(MessageEvent.reason, why)))
    return done


def _savepoint(unit: Unit) -> AbstractContextManager[object]:
    """Postgres aborts a whole transaction at a refused statement: inside one, a savepoint lets it
    go on. (SQLite undoes only the statement; an autocommit connection has no transaction.)"""
    conn = _core(unit)
    if conn.dialect.name != "postgresql" or conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return nullcontext()
    return conn.begin_nested()   # on the connection: a Session's own savepoint would start only at its next use


def _vendor_message_id_holder(unit: Unit, message_id: int, vendor_message_id: str | None) -> int | None:
    """Another message that holds this vendor messageId, if any."""
    if vendor_message_id is None:
        return None
    return _core(unit).execute(sa.select(Message.id).where(
        Message.vendor_message_id == vendor_message_id, Message.id != message_id).limit(1)).scalar()


def _write_sent(conn: sa.Connection, params: dict, result: SendResult, attempts: list[AttemptRecord],
                phone: str | None) -> bool:
    """record_sent's writes with its parameters (the vendor messageId among them, or None)."""
    params = dict(params)   # the one-statement write adds its own
    message_id, worker, campaign_id = params["p_message_id"], params["p_worker"], params["p_campaign_id"]
    now = params["p_now"]
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        if len(attempts) != 1 or conn.dialect.name != "postgresql":
            raise ValueError(f"recording {len(attempts)} attempts on {conn.dialect.name} needs a transaction")
        params.update({f"p_attempt_{c}": v for c, v in _attempt_values(attempts[0]).items()})
        statement = _RECORD_SENT_ONE_STATEMENT
        if hooks_outbox.subscribed(conn, HookEvent.MESSAGE_SENT):   # a cached answer, not a query
            statement = _RECORD_SENT_ONE_STATEMENT_WITH_HOOK
            params.update(hooks_outbox.sent_params(vendor_id=result.vendor_id, vendor_message_id=params["p_vendor_message_id"],
                                                   vendor_status=params["p_vendor_status"], now=now))
        return conn.execute(statement, params).scalar_one() == 1
    done = conn.execute(_RECORD_SENT, params).rowcount
    _add_attempts(conn, message_id, attempts, worker)
    if campaign_id is not None:
        conn.execute(_RESET_FAILURE_STREAK, params)
    if done:   # a replay from the journal passes no phone: the message row knows it
        conn.execute(_CONTACT_SENT if phone is not None else _CONTACT_SENT_BY_MESSAGE,
                     {"p_phone": phone, "p_message_id": message_id, "p_now": params["p_now"]})
    if done == 1:
        hooks_outbox.emit(conn, HookEvent.MESSAGE_SENT, message_id=message_id, now=now, data=hooks_outbox.sent_data(
            vendor_id=result.vendor_id, vendor_message_id=params["p_vendor_message_id"],
            vendor_status=result.vendor_status, now=now))
    return done == 1


@dataclass(frozen=True)
class SentOutcome:
    """One `sent` answer on its way to the database in a group commit (worker.sending.outcomes):
    a message the vendor accepted at its first attempt, still owned by `token`."""

    message_id: int
    token: str
    result: SendResult
    attempt: AttemptRecord
    worker: str
    at: datetime        # when the vendor answered: the row's sent_at


def _batch_sql(with_hook: bool) -> _Prepared:
    """Postgres: every outcome of a batch in ONE statement (issue 26 item 2), the batch form of
    `_record_sent_statement`: one UPDATE of the message rows from arrays (only where the claim token
    still owns the row), their attempt rows, the campaigns' streaks broken, the contacts' last-sent
    stamps and (`with_hook`) the message.sent outbox rows. Returns the ids written."""
    hook = f""",
hook AS (
  INSERT INTO hook_outbox (endpoint_id, event_id, event_type, message_id, phone, data, created_at, status,
                           attempts, next_attempt_at, retry_since)
  SELECT hs.endpoint_id, s.event_id, '{HookEvent.MESSAGE_SENT.value}', s.id, NULL, s.hook_data, s.at,
         '{OutboxStatus.PENDING.value}', 0, s.at, s.at
  FROM sent AS s JOIN hook_subscriptions AS hs ON hs.event_type = '{HookEvent.MESSAGE_SENT.value}'
)""" if with_hook else ""
    return _Prepared(sa.text(f"""
WITH input AS (
  SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS varchar[]), CAST(:vendor_ids AS bigint[]),
                       CAST(:vendor_message_ids AS varchar[]), CAST(:vendor_statuses AS varchar[]),
                       CAST(:counted AS integer[]), CAST(:ats AS timestamp[]), CAST(:event_ids AS varchar[]),
                       CAST(:hook_data AS text[]))
         AS i(id, token, vendor_id, vendor_message_id, vendor_status, counted, at, event_id, hook_data)
),
sent AS (
  UPDATE messages AS m
  SET status = '{MessageStatus.SENT.value}', vendor_id = i.vendor_id, vendor_message_id = i.vendor_message_id,
      vendor_status = i.vendor_status, sent_at = i.at, finished_at = i.at, updated_at = i.at,
      attempts = m.attempts + i.counted, last_error_code = NULL, last_error_message = NULL,
      last_request_id = NULL, not_before = NULL
  FROM input AS i
  WHERE m.id = i.id AND m.claim_token = i.token AND m.status IN ('{S}', '{MessageStatus.UNKNOWN.value}')
  RETURNING m.id, m.campaign_id, m.phone, i.at, i.event_id, i.hook_data
),
attempt AS (
  INSERT INTO attempts (message_id, worker, {", ".join(_ATTEMPT_FIELDS)})
  SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:workers AS varchar[]), CAST(:a_started_at AS timestamp[]),
                       CAST(:a_duration_ms AS integer[]), CAST(:a_http_status AS integer[]),
                       CAST(:a_outcome AS varchar[]), CAST(:a_error_code AS varchar[]),
                       CAST(:a_error_message AS text[]), CAST(:a_request_id AS varchar[]),
                       CAST(:a_vendor_message_id AS varchar[]))
),
streak AS (
  UPDATE campaigns SET consecutive_failures = 0, consecutive_unknown = 0, updated_at = (SELECT max(at) FROM sent)
  WHERE id IN (SELECT campaign_id FROM sent) AND (consecutive_failures <> 0 OR consecutive_unknown <> 0)
),
contact AS (
  UPDATE contacts AS c SET last_sent_at = s.at FROM sent AS s WHERE c.phone = s.phone
){hook}
SELECT id FROM sent"""))


_BATCH = {False: _batch_sql(False), True: _batch_sql(True)}


def record_sent_batch(conn: sa.Connection, outcomes: list[SentOutcome]) -> set[int]:
    """Postgres, on an autocommit connection: record every outcome as `record_sent` would, in one
    statement (atomic: all or none). Returns the ids written; an id missing is a row its token no
    longer owned (its evidence, the attempt row, is kept as `record_sent` keeps it).

    A messageId another message already holds makes the whole statement fail (IntegrityError): the
    caller records that batch one by one, where `record_sent` handles it."""
    with_hook = hooks_outbox.subscribed(conn, HookEvent.MESSAGE_SENT)
    params: dict[str, list] = {k: [] for k in ("ids", "tokens", "vendor_ids", "vendor_message_ids", "vendor_statuses",
                                               "counted", "ats", "event_ids", "hook_data", "workers",
                                               *(f"a_{c}" for c in _ATTEMPT_FIELDS))}
    for o in outcomes:
        vendor_message_id = fit(Message.vendor_message_id, o.result.message_id)
        vendor_status = fit(Message.vendor_status, o.result.vendor_status)
        params["ids"].append(o.message_id)
        params["tokens"].append(o.token)
        params["vendor_ids"].append(o.result.vendor_id)
        params["vendor_message_ids"].append(vendor_message_id)
        params["vendor_statuses"].append(vendor_status)
        params["counted"].append(_counted([o.attempt]))
        params["ats"].append(_naive_utc(o.at))
        params["workers"].append(o.worker)
        params["event_ids"].append(new_event_id() if with_hook else None)
        params["hook_data"].append(json.dumps(hooks_outbox.sent_data(
            vendor_id=o.result.vendor_id, vendor_message_id=vendor_message_id, vendor_status=vendor_status, now=o.at),
            sort_keys=True, default=str) if with_hook else None)
        for c, v in _attempt_values(o.attempt).items():
            params[f"a_{c}"].append(_naive_utc(v) if c == "started_at" else v)
    return {row[0] for row in _BATCH[with_hook].rows(conn, params)}


def record_error(
    session: Session,
    message_id: int,
    token: str,
    *,
    status: MessageStatus,
    error: AwalError,
    attempts: list[AttemptRecord],
    worker: str,
    not_before: datetime | None = None,
) -> str | None:
    """Record a failure outcome: failed, unknown, or back to queued/pending with a not-before time.

    Returns the status written (None when `token` no longer owns the row). A row sent back to
    queued/pending whose campaign was cancelled meanwhile is written `cancelled` instead (see
    `_back_unless_cancelled`)."""
    now = utcnow()
    values: dict = dict(
        status=status.value, updated_at=now, attempts=Message.attempts + _counted(attempts),
        last_error_code=fit(Message.last_error_code, error.code), last_error_message=fit(Message.last_error_message, error.message),
        last_request_id=fit(Message.last_request_id, error.request_id),
        not_before=not_before,
    )
    if status in (MessageStatus.QUEUED, MessageStatus.PENDING):
        values.update(claim_token=None, enqueued_at=None)
        written = _back_unless_cancelled(session, _owned(message_id, token), values, from_status=S, actor=worker, now=now)
    else:
        if status.is_final:
            values["finished_at"] = now
        done = _core(session).execute(
            sa.update(Message).where(_owned(message_id, token)).values(**values).execution_options(synchronize_session=False)
        ).rowcount
        written = status.value if done else None
        if done and status in (MessageStatus.FAILED, MessageStatus.REJECTED):
            hooks_outbox.emit(session, HookEvent.MESSAGE_FAILED, message_id=message_id, now=now, data={
                "status": status.value, "stage": "send", "error_code": error.code,
                "error_message": error.message[:1000], "request_id": error.request_id})
    _add_attempts(session, message_id, attempts, worker)
    return written


CANCELLED_IN_FLIGHT = "campaign cancelled while the send was in flight"
_CAMPAIGN_CANCELLED = (
    sa.select(Campaign.id)
    .where(Campaign.id == Message.campaign_id, Campaign.status == CampaignStatus.CANCELLED.value)
    .exists()
)


def _back_unless_cancelled(unit: Unit, where: sa.ColumnElement[bool], values: dict, *, from_status: str,
                           actor: str | None, now: datetime) -> str | None:
    """Issue 12 item 7: the one write that returns a row to queued/pending. If its campaign is
    cancelled the same statement writes `cancelled` (nothing would ever move a queued row of a
    cancelled campaign) and an event says why; if its campaign had completed meanwhile (a late
    answer after the sweeper's `unknown`), the campaign reopens so the dispatcher serves the row.
    Returns the status written, or None when `where` matched nothing."""
    target = values["status"]
    values = dict(values, status=sa.case((_CAMPAIGN_CANCELLED, MessageStatus.CANCELLED.value), else_=target),
                  finished_at=sa.case((_CAMPAIGN_CANCELLED, now), else_=None))
    row = _core(unit).execute(
        sa.update(Message).where(where).values(**values)
        .returning(Message.id, Message.status, Message.campaign_id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    if row.status == MessageStatus.CANCELLED.value:
        _core(unit).execute(sa.insert(MessageEvent).values(
            message_id=row.id, at=now, from_status=from_status, to_status=row.status, reason=CANCELLED_IN_FLIGHT, actor=actor))
    elif row.campaign_id is not None:
        lifecycle.reopen(_core(unit), row.campaign_id, now)
    return row.status


def defer(unit: Unit, message_id: int, *, not_before: datetime, from_status: str = Q, actor: str | None = None) -> bool:
    """A queued message that could not get a rate slot soon: back to the database, due later.

    Its task is done; the dispatcher publishes a new one when `not_before` has passed. Only a due
    row: a stale copy of a task must not bring forward a later not_before (a backoff's). (On a
    Postgres autocommit connection the rare cancelled case is two statements: the row first.)
    """
    now = utcnow()
    written = _back_unless_cancelled(
        unit, sa.and_(Message.id == message_id, Message.status == from_status,
                      sa.or_(Message.not_before.is_(None), Message.not_before <= now)),
        dict(status=Q, not_before=not_before, enqueued_at=None, updated_at=utcnow()),
        from_status=from_status, actor=actor, now=utcnow(),
    )
    return written == Q


def return_to_pending(session: Session, message_id: int, *, reason: str, actor: str, token: str | None = None) -> bool:
    """Paused campaign (or a 401): the message goes back untouched, to be dispatched on resume."""
    cond = _owned(message_id, token) if token else sa.and_(Message.id == message_id, Message.status == Q)
    from_status = S if token else Q
    written = _back_unless_cancelled(
        session, cond,
        dict(status=MessageStatus.PENDING.value, claim_token=None, enqueued_at=None, queued_at=None,
             not_before=None, updated_at=utcnow()),
        from_status=from_status, actor=actor, now=utcnow(),
    )
    if written == MessageStatus.PENDING.value:
        add_event(session, message_id, from_status, MessageStatus.PENDING.value, reason, actor)
    return written == MessageStatus.PENDING.value


def cancel_one(session: Session, message_id: int, *, actor: str) -> bool:
    done = session.execute(
        sa.update(Message)
        .where(Message.id == message_id, Message.status == Q)
        .values(status=MessageStatus.CANCELLED.value, finished_at=utcnow(), updated_at=utcnow(), enqueued_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if done:
        add_event(session, message_id, Q, MessageStatus.CANCELLED.value, "campaign cancelled", actor)
    return done == 1


def add_event(session: Session, message_id: int, from_status: str | None, to_status: str, reason: str, actor: str | None) -> None:
    session.add(MessageEvent(message_id=message_id, from_status=from_status, to_status=to_status,
                             reason=fit(MessageEvent.reason, reason), actor=actor))


def note_campaign_failure(session: Session, campaign_id: int, *, threshold: int, reason: str) -> bool:
    """Count a permanent failure; pause the campaign when the streak reaches `threshold`."""
    return _note_streak(session, campaign_id, Campaign.consecutive_failures, threshold=threshold,
                        reason=f"consecutive permanent failures; last: {reason}")


def note_campaign_unknown(session: Session, campaign_id: int, *, threshold: int, reason: str) -> bool:
    """Count an ambiguous outcome (`unknown`); pause the campaign when the streak reaches
    `threshold`, so a systematic fault does not turn a whole campaign `unknown` at full rate."""
    return _note_streak(session, campaign_id, Campaign.consecutive_unknown, threshold=threshold,
                        reason=f"ambiguous outcomes (unknown: request sent, no answer) without a send; last: {reason}")


def _note_streak(session: Session, campaign_id: int, counter: sa.orm.InstrumentedAttribute, *, threshold: int,
                 reason: str) -> bool:
    """Add one to a streak counter (reset by every send, see record_sent); pause at `threshold`."""
    streak = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id)
        .values({counter.key: counter + 1})
        .returning(counter)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none() or 0
    if streak >= threshold:
        return pause_campaign(session, campaign_id, reason=f"{streak} {reason}")
    return False


def pause_campaign(session: Session, campaign_id: int, *, reason: str) -> bool:
    """running/scheduled -> paused with the reason shown to operators (worker.lifecycle)."""
    return lifecycle.pause_by_engine(session, campaign_id, reason=reason)


def backoff_until(attempts: int, *, base_s: float, max_s: float, now: datetime | None = None) -> datetime:
    delay = min(max_s, base_s * (2 ** max(0, attempts - 1)))
    return (now or utcnow()) + timedelta(seconds=delay)
