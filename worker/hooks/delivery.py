"""Deliver outbox rows: claim a bounded batch of due rows, POST each signed, record the outcome.

At least once: a row is claimed with a lease (next_attempt_at pushed past the time its batch can
take) and a token; a tick that dies mid-batch leaves its rows due again when the lease ends. A
receiver that answers 2xx marks the row delivered; anything else (another status, a redirect,
which is never followed, a timeout, a refused connection) schedules the next try after
HOOKS_BACKOFF_BASE_S * 2**(attempts-1), capped at HOOKS_BACKOFF_MAX_S, until HOOKS_RETRY_MAX_S after
the event was written (or redelivered); then the row is dead-lettered (`hooks list` counts them).

The POSTs run on the tick's own small thread pool (HOOKS_CONCURRENCY) and at most one tick runs
per process at a time, so a slow receiver holds at most one of the worker's threads, never the
send path's.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterator

import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from worker.hooks import outbox
from worker.hooks.events import render_body
from worker.hooks.models import OutboxStatus, HookEndpoint, HookOutbox
from worker.hooks.signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, endpoint_secret, signature_header
from worker.models import Message, utcnow
from worker.settings import Settings

log = logging.getLogger("buttoncast.hooks")
#: what is kept of a receiver's answer: enough for an error message, never an unbounded read
RESPONSE_MAX_BYTES = 4096
ERROR_MAX_CHARS = 300
LEASE_MARGIN_S = 30.0
USER_AGENT = "buttoncast-hooks/1"


@dataclass(frozen=True)
class Claimed:
    """One outbox row claimed for delivery, with what its request needs."""

    id: int
    token: str
    url: str
    endpoint_id: int
    key_salt: str
    event_id: str
    event_type: str
    body: bytes
    attempts: int
    retry_since: datetime


@dataclass(frozen=True)
class Outcome:
    ok: bool
    http_status: int | None
    error: str | None


@dataclass
class DeliveryReport:
    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0


def lease_s(settings: Settings) -> float:
    """How long a claimed batch may take: every POST of it timing out, connect and read, in turn."""
    rounds = math.ceil(settings.hooks_batch_size / settings.hooks_concurrency)
    return rounds * 2 * settings.hooks_timeout_s + LEASE_MARGIN_S


def claim_due(session: Session, *, limit: int, lease: float, now: datetime | None = None) -> list[Claimed]:
    """Claim up to `limit` due pending rows (oldest due first); concurrent ticks skip each other's."""
    now = now or utcnow()
    token = uuid.uuid4().hex
    due = (
        sa.select(HookOutbox.id)
        .where(HookOutbox.status == OutboxStatus.PENDING.value, HookOutbox.next_attempt_at <= now)
        .order_by(HookOutbox.next_attempt_at, HookOutbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = session.execute(
        sa.update(HookOutbox)
        .where(HookOutbox.id.in_(due.scalar_subquery()), HookOutbox.status == OutboxStatus.PENDING.value)
        .values(claim_token=token, next_attempt_at=now + timedelta(seconds=lease))
        .returning(HookOutbox.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    if not ids:
        return []
    rows = session.execute(
        sa.select(HookOutbox, HookEndpoint.url, HookEndpoint.key_salt, Message.campaign_id, Message.phone)
        .join(HookEndpoint, HookEndpoint.id == HookOutbox.endpoint_id)
        .outerjoin(Message, Message.id == HookOutbox.message_id)
        .where(HookOutbox.id.in_(ids))
        .order_by(HookOutbox.next_attempt_at, HookOutbox.id)
    ).all()
    return [_claimed(row, url, salt, campaign_id, phone, token) for row, url, salt, campaign_id, phone in rows]


def _claimed(row: HookOutbox, url: str, salt: str, campaign_id: int | None, phone: str | None, token: str) -> Claimed:
    message = ({"message_id": row.message_id, "campaign_id": campaign_id, "phone": phone}
               if row.message_id is not None else ({"phone": row.phone} if row.phone else None))
    body = render_body(event_id=row.event_id, event_type=row.event_type, created=row.created_at,
                       data=json.loads(row.data or "{}"), message=message)
    return Claimed(id=row.id, token=token, url=url, endpoint_id=row.endpoint_id, key_salt=salt, event_id=row.event_id,
                   event_type=row.event_type, body=body, attempts=row.attempts, retry_since=row.retry_since)


class Poster:
    """POSTs signed events on its own HOOKS_CONCURRENCY threads, each with its own requests.Session
    (keep-alive to each receiver across ticks)."""

    def __init__(self, settings: Settings, clock=time.time) -> None:  # noqa: ANN001
        self._settings = settings
        self._clock = clock
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def post_all(self, batch: list[Claimed]) -> Iterator[Outcome]:
        """The outcomes of `batch`, in its order, HOOKS_CONCURRENCY requests at a time."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._settings.hooks_concurrency, thread_name_prefix="hooks")
        return self._pool.map(self.post, batch)

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False   # no proxy or .netrc credentials from the environment
            self._local.session = session
        return session

    def post(self, item: Claimed) -> Outcome:
        """One attempt; every failure is an Outcome (a row is never left claimed by an exception)."""
        try:
            return self._post(item)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed attempt, retried as any other
            log.exception("hook event %s to endpoint %s: unexpected error", item.event_id, item.endpoint_id)
            return Outcome(False, None, f"internal error ({type(exc).__name__})")

    def _post(self, item: Claimed) -> Outcome:
        secret = endpoint_secret(self._settings.hooks_signing_key, item.endpoint_id, item.key_salt)
        headers = {
            "Content-Type": "application/json", "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: item.event_id, EVENT_TYPE_HEADER: item.event_type,
            SIGNATURE_HEADER: signature_header(secret, item.body, int(self._clock())),
        }
        timeout = self._settings.hooks_timeout_s
        try:
            response = self._session().post(item.url, data=item.body, headers=headers, timeout=(timeout, timeout),
                                            allow_redirects=False, stream=True)
        except requests.RequestException as exc:
            return Outcome(False, None, _transport_error(exc))
        try:
            answer = response.raw.read(RESPONSE_MAX_BYTES, decode_content=False) or b""
        except Exception:  # noqa: BLE001 - the status line is what counts; the body is only for the error
            answer = b""
        finally:
            response.close()
        if 200 <= response.status_code < 300:
            return Outcome(True, response.status_code, None)
        if 300 <= response.status_code < 400:
            return Outcome(False, response.status_code, f"HTTP {response.status_code}: redirects are not followed")
        snippet = answer.decode("utf-8", "replace").strip()[:ERROR_MAX_CHARS]
        return Outcome(False, response.status_code, f"HTTP {response.status_code}" + (f": {snippet}" if snippet else ""))


def _transport_error(exc: requests.RequestException) -> str:
    """The kind of failure, never the URL (its query may carry the receiver's own token)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.ReadTimeout):
        return "read timeout"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return f"request failed ({type(exc).__name__})"


def next_try(settings: Settings, *, attempts: int, retry_since: datetime, now: datetime) -> datetime | None:
    """When to try again after `attempts` failed tries; None: the retry period is over (dead)."""
    deadline = retry_since + timedelta(seconds=settings.hooks_retry_max_s)
    if now >= deadline:
        return None
    delay = min(settings.hooks_backoff_max_s, settings.hooks_backoff_base_s * 2 ** max(0, attempts - 1))
    return min(now + timedelta(seconds=delay), deadline)


def record_outcome(session: Session, item: Claimed, outcome: Outcome, settings: Settings,
                   now: datetime | None = None) -> OutboxStatus | None:
    """Write one attempt's outcome while `item.token` still owns the row; the status written."""
    now = now or utcnow()
    attempts = item.attempts + 1
    values: dict = dict(attempts=attempts, last_attempt_at=now, last_http_status=outcome.http_status,
                        last_error=outcome.error, claim_token=None)
    if outcome.ok:
        status = OutboxStatus.DELIVERED
        values.update(delivered_at=now)
    else:
        due = next_try(settings, attempts=attempts, retry_since=item.retry_since, now=now)
        status = OutboxStatus.PENDING if due else OutboxStatus.DEAD
        values.update(next_attempt_at=due) if due else values.update(dead_at=now)
    done = session.execute(
        sa.update(HookOutbox)
        .where(HookOutbox.id == item.id, HookOutbox.claim_token == item.token)
        .values(status=status.value, **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    return status if done else None


_tick_lock = threading.Lock()


def deliver_due(session_factory: sessionmaker[Session], settings: Settings, poster: Poster | None = None) -> DeliveryReport:
    """One delivery tick: claim a batch, POST it (HOOKS_CONCURRENCY at a time), record each outcome.
    Returns at once when another tick of this process is still running."""
    report = DeliveryReport()
    if not _tick_lock.acquire(blocking=False):
        return report
    try:
        with session_factory() as session:
            if not outbox.CACHE.event_types(session.connection()):
                return report   # no endpoint at all: no rows (and no write lock taken on SQLite)
        endpoint_secret(settings.hooks_signing_key, 0, "")   # no usable key: ConfigError before anything is claimed
        with session_factory.begin() as session:
            batch = claim_due(session, limit=settings.hooks_batch_size, lease=lease_s(settings))
        report.claimed = len(batch)
        if not batch:
            return report
        own = poster is None
        poster = poster or Poster(settings)
        try:
            for item, outcome in zip(batch, poster.post_all(batch)):
                _count(report, _record(session_factory, item, outcome, settings))
        finally:
            if own:
                poster.close()
        return report
    finally:
        _tick_lock.release()


def _record(session_factory: sessionmaker[Session], item: Claimed, outcome: Outcome,
            settings: Settings) -> OutboxStatus | None:
    with session_factory.begin() as session:
        status = record_outcome(session, item, outcome, settings)
    if status is OutboxStatus.DEAD:
        log.warning("hook event %s (%s) to endpoint %s dead-lettered after %s attempts: %s", item.event_id,
                    item.event_type, item.endpoint_id, item.attempts + 1, outcome.error)
    elif status is OutboxStatus.PENDING:
        log.info("hook event %s to endpoint %s failed (%s); will retry", item.event_id, item.endpoint_id, outcome.error)
    return status


def _count(report: DeliveryReport, status: OutboxStatus | None) -> None:
    if status is OutboxStatus.DELIVERED:
        report.delivered += 1
    elif status is OutboxStatus.PENDING:
        report.retrying += 1
    elif status is OutboxStatus.DEAD:
        report.dead += 1
