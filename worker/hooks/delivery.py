"""Deliver outbox rows: claim due rows per endpoint, POST each signed, record each outcome on its own.

At least once: a row is claimed with a lease (next_attempt_at pushed past the time its lane can
take) and a token; a process that dies mid-lane leaves its rows due again when the lease ends. A
receiver that answers 2xx marks the row delivered; anything else (another status, a redirect,
which is never followed, a timeout, a refused connection or target) schedules the next try after
HOOKS_BACKOFF_BASE_S * 2**(attempts-1), capped at HOOKS_BACKOFF_MAX_S, until HOOKS_RETRY_MAX_S after
the event was written (or redelivered); then the row is dead-lettered (`hooks list` counts them).

Lanes, so that one slow endpoint never delays another. A tick claims rows for up to as many new
lanes as the Poster has free threads (HOOKS_CONCURRENCY per process), one lane per endpoint and at
most `lanes_per_endpoint` lanes of one endpoint at a time, and returns. A lane, on the Poster's own
thread, POSTs its endpoint's rows in order (each within the whole-POST deadline HOOKS_TIMEOUT_S,
worker.hooks.transport), records each outcome in its own transaction, and claims the endpoint's
next due rows while they last (at most HOOKS_BATCH_SIZE per lane). A receiver that trickles or
times out holds its own lane; the next tick starts lanes for the other endpoints on the free
threads. No tick waits for a POST, so a slow receiver never holds one of the worker's threads.

Each outcome is written in its own small transaction, with its text made storable
(worker.fit: no NUL, no lone surrogate, cut to length): a row whose write fails is logged and left
to its lease; it never stops the others from being recorded.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Callable, Iterable

import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from worker.fit import fit
from worker.hooks import outbox, transport
from worker.hooks.events import render_body
from worker.hooks.models import HookEndpoint, HookOutbox, OutboxStatus
from worker.hooks.signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, endpoint_secret, signature_header
from worker.hooks.targets import TargetPolicy, TargetRefused
from worker.models import Message, utcnow
from worker.settings import Settings

log = logging.getLogger("buttoncast.hooks")
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
    #: outcomes that could not be written (the row is tried again when its lease ends)
    unrecorded: int = 0

    def add(self, other: "DeliveryReport") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def lane_rows(settings: Settings) -> int:
    """Rows one lane claims at a time: a tick's batch shared by the Poster's threads."""
    return max(1, math.ceil(settings.hooks_batch_size / settings.hooks_concurrency))


def lanes_per_endpoint(settings: Settings) -> int:
    """Lanes one endpoint may hold at once: half the threads, so one slow endpoint leaves the other
    half to the rest (with HOOKS_CONCURRENCY=1 there is one lane, and no such promise)."""
    return max(1, settings.hooks_concurrency // 2)


def lease_s(settings: Settings) -> float:
    """How long a lane's claimed rows may take: every POST of them running to its deadline, in turn."""
    return lane_rows(settings) * settings.hooks_timeout_s + LEASE_MARGIN_S


def _due(now: datetime) -> sa.Select:
    return (sa.select(HookOutbox.id, HookOutbox.endpoint_id)
            .where(HookOutbox.status == OutboxStatus.PENDING.value, HookOutbox.next_attempt_at <= now)
            .order_by(HookOutbox.next_attempt_at, HookOutbox.id))


def claim_due(session: Session, *, limit: int, lease: float, now: datetime | None = None,
              endpoint_id: int | None = None) -> list[Claimed]:
    """Claim up to `limit` due pending rows (of one endpoint, or of any), oldest due first;
    concurrent claimers skip each other's rows."""
    now = now or utcnow()
    due = _due(now)
    if endpoint_id is not None:
        due = due.where(HookOutbox.endpoint_id == endpoint_id)
    ids = [row_id for row_id, _ in session.execute(due.limit(limit).with_for_update(skip_locked=True))]
    return _claim(session, ids, lease=lease, now=now)


def claim_lanes(session: Session, settings: Settings, *, free: int, running: Counter[int],
                now: datetime | None = None) -> list[list[Claimed]]:
    """Claim the rows of up to `free` new lanes, one per endpoint, oldest due first: at most
    `lane_rows` rows each, none for an endpoint that already holds `lanes_per_endpoint` lanes
    (`running`: lanes per endpoint in this process)."""
    now = now or utcnow()
    full = [e for e, n in running.items() if n >= lanes_per_endpoint(settings)]
    due = _due(now).where(HookOutbox.endpoint_id.not_in(full)) if full else _due(now)
    picked: dict[int, list[int]] = {}
    for row_id, endpoint_id in session.execute(due.limit(settings.hooks_batch_size).with_for_update(skip_locked=True)):
        if endpoint_id not in picked and len(picked) >= free:
            continue
        rows = picked.setdefault(endpoint_id, [])
        if len(rows) < lane_rows(settings):
            rows.append(row_id)
    claimed = _claim(session, [i for rows in picked.values() for i in rows], lease=lease_s(settings), now=now)
    lanes: dict[int, list[Claimed]] = {}
    for item in claimed:
        lanes.setdefault(item.endpoint_id, []).append(item)
    return list(lanes.values())


def _claim(session: Session, ids: list[int], *, lease: float, now: datetime) -> list[Claimed]:
    """Lease the rows `ids` that are still due (on SQLite, where FOR UPDATE is a no-op, a row another
    process leased in between is no longer due, so no row is claimed twice)."""
    if not ids:
        return []
    token = uuid.uuid4().hex
    ids = session.execute(
        sa.update(HookOutbox)
        .where(HookOutbox.id.in_(ids), HookOutbox.status == OutboxStatus.PENDING.value,
               HookOutbox.next_attempt_at <= now)
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
        .order_by(HookOutbox.id)
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
    """POSTs signed events on its own threads (at most HOOKS_CONCURRENCY lanes at once), through
    guarded connections (worker.hooks.transport); keeps a few requests.Sessions for keep-alive."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._policy = TargetPolicy.of(settings)
        self._lock = threading.Lock()
        self._running: Counter[int] = Counter()
        self._threads: set[threading.Thread] = set()
        self._sessions: list[requests.Session] = []
        self.closing = False
        #: one tick claims at a time in this process (another returns at once)
        self.claim_lock = threading.Lock()

    def lanes(self) -> tuple[int, Counter[int]]:
        """Free threads, and the lanes each endpoint holds."""
        with self._lock:
            return self._settings.hooks_concurrency - sum(self._running.values()), Counter(self._running)

    def start_lane(self, endpoint_id: int, work: Callable[[], None]) -> threading.Thread:
        """Run `work` on a thread of its own as one of `endpoint_id`'s lanes (a daemon: a process
        that exits leaves its claimed rows to their lease)."""
        def run() -> None:
            try:
                work()
            finally:
                with self._lock:
                    self._running[endpoint_id] -= 1
                    if self._running[endpoint_id] <= 0:
                        del self._running[endpoint_id]
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"hooks-endpoint-{endpoint_id}", daemon=True)
        with self._lock:
            self._running[endpoint_id] += 1
            self._threads.add(thread)
        thread.start()
        return thread

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the lanes after the POST each is making (their other rows are released)."""
        self.closing = True
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout_s)
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def post(self, item: Claimed) -> Outcome:
        """One attempt; every failure is an Outcome (a row is never left claimed by an exception)."""
        try:
            return self._post(item)
        except (transport.DeliveryFailed, TargetRefused) as exc:
            return Outcome(False, None, str(exc))
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
        session = self._borrow()
        try:
            status = transport.post(session, item.url, body=item.body, headers=headers, policy=self._policy,
                                    timeout_s=self._settings.hooks_timeout_s)
        finally:
            self._give_back(session)
        return answer_outcome(status)

    def _borrow(self) -> requests.Session:
        with self._lock:
            return self._sessions.pop() if self._sessions else transport.new_session()

    def _give_back(self, session: requests.Session) -> None:
        with self._lock:
            self._sessions.append(session)


def answer_outcome(status: int) -> Outcome:
    """A receiver's status as an outcome: its code and a fixed text, never what it wrote."""
    if 200 <= status < 300:
        return Outcome(True, status, None)
    if 300 <= status < 400:
        return Outcome(False, status, f"HTTP {status} from the receiver: redirects are not followed")
    return Outcome(False, status, f"HTTP {status} from the receiver")


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
                        last_error=fit(HookOutbox.last_error, outcome.error), claim_token=None)
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


def release(session: Session, items: Iterable[Claimed], now: datetime | None = None) -> int:
    """Give claimed rows back untried (due at once), while their tokens still own them."""
    count = 0
    for item in items:
        count += session.execute(
            sa.update(HookOutbox).where(HookOutbox.id == item.id, HookOutbox.claim_token == item.token)
            .values(claim_token=None, next_attempt_at=now or utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
    return count


def deliver_due(session_factory: sessionmaker[Session], settings: Settings, poster: Poster | None = None, *,
                wait: bool = True) -> DeliveryReport:
    """One delivery tick: start lanes for the endpoints with due rows on the Poster's free threads.
    `wait`: return when those lanes are done, with their counts (tests, one-off runs); otherwise at
    once (the beat task: no worker thread ever waits on a receiver). Returns at once, claiming
    nothing, while another tick of this Poster is claiming."""
    report = DeliveryReport()
    with session_factory() as session:
        if not outbox.CACHE.event_types(session.connection()):
            return report   # no endpoint at all: no rows (and no write lock taken on SQLite)
    endpoint_secret(settings.hooks_signing_key, 0, "")   # no usable key: ConfigError before anything is claimed
    own = poster is None
    poster = poster or Poster(settings)
    try:
        if not poster.claim_lock.acquire(blocking=False):
            return report
        try:
            free, running = poster.lanes()
            if free <= 0 or poster.closing:
                return report
            with session_factory.begin() as session:
                lanes = claim_lanes(session, settings, free=free, running=running)
            threads = []
            reports = []
            for items in lanes:
                report.claimed += len(items)
                lane_report = DeliveryReport()
                reports.append(lane_report)
                threads.append(poster.start_lane(items[0].endpoint_id, _lane(session_factory, settings, poster, items,
                                                                             lane_report)))
        finally:
            poster.claim_lock.release()
        if wait or own:
            for thread in threads:
                thread.join()
            for lane_report in reports:
                report.add(lane_report)
        return report
    finally:
        if own:
            poster.close()


def _lane(session_factory: sessionmaker[Session], settings: Settings, poster: Poster, first: list[Claimed],
          report: DeliveryReport) -> Callable[[], None]:
    """One endpoint's lane: POST its claimed rows in order, recording each, then claim its next due
    rows while there are any (at most HOOKS_BATCH_SIZE in all); stop claiming after a failure, so an
    endpoint that is down costs one claimed batch per tick, not a sweep of its backlog."""
    endpoint_id = first[0].endpoint_id

    def run() -> None:
        batch, done, failing = first, 0, False
        try:
            while batch:
                for index, item in enumerate(batch):
                    if poster.closing:
                        _release(session_factory, batch[index:])
                        return
                    outcome = poster.post(item)
                    failing = failing or not outcome.ok
                    _count(report, _record(session_factory, item, outcome, settings))
                    done += 1
                left = settings.hooks_batch_size - done
                if failing or left <= 0:
                    return
                with session_factory.begin() as session:
                    batch = claim_due(session, limit=min(left, lane_rows(settings)), lease=lease_s(settings),
                                      endpoint_id=endpoint_id)
                report.claimed += len(batch)
        except Exception:  # noqa: BLE001 - a lane must end; its unrecorded rows wait for their lease
            log.exception("hook lane of endpoint %s stopped", endpoint_id)

    return run


def _release(session_factory: sessionmaker[Session], items: list[Claimed]) -> None:
    try:
        with session_factory.begin() as session:
            release(session, items)
    except Exception:  # noqa: BLE001 - the lease gives them back anyway
        log.warning("could not release %s claimed hook rows; they are due again when their lease ends", len(items))


def _record(session_factory: sessionmaker[Session], item: Claimed, outcome: Outcome,
            settings: Settings) -> OutboxStatus | Exception | None:
    """Write one outcome in its own transaction. A write that fails (a value the database refuses,
    a lost connection) is logged and returned, never raised: the other rows are still recorded."""
    try:
        with session_factory.begin() as session:
            status = record_outcome(session, item, outcome, settings)
    except Exception as exc:  # noqa: BLE001 - one row's write never holds the others
        log.error("hook event %s to endpoint %s: the outcome could not be recorded (%s); the row is tried again "
                  "when its lease ends", item.event_id, item.endpoint_id, type(exc).__name__)
        return exc
    if status is OutboxStatus.DEAD:
        log.warning("hook event %s (%s) to endpoint %s dead-lettered after %s attempts: %s", item.event_id,
                    item.event_type, item.endpoint_id, item.attempts + 1, outcome.error)
    elif status is OutboxStatus.PENDING:
        log.info("hook event %s to endpoint %s failed (%s); will retry", item.event_id, item.endpoint_id, outcome.error)
    return status


def _count(report: DeliveryReport, status: OutboxStatus | Exception | None) -> None:
    if status is OutboxStatus.DELIVERED:
        report.delivered += 1
    elif status is OutboxStatus.PENDING:
        report.retrying += 1
    elif status is OutboxStatus.DEAD:
        report.dead += 1
    elif isinstance(status, Exception):
        report.unrecorded += 1
