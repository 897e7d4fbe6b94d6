"""The outcome journal (issue 12 item 13): a vendor answer the database could not take is kept.

A worker that got a 200 while the database refuses writes appends the outcome here on the FIRST
failed write (and logs the vendor ids at WARNING), before it starts retrying: a watchdog or a
SIGKILL during the retries no longer loses it. The sweep applies the entries once the database is
back, before it turns stale `sending` rows into `unknown`; each write is guarded by the claim token,
so an entry applied twice, or one the worker's own retry already recorded, changes nothing.

Where: a Redis hash (REDIS_URL, the system we already run next to the database), one field per
message and claim token. Embedded mode (no Redis) keeps the journal in the process's memory: the
worker and the sweep share that process, so it survives a database outage but not a crash of the
process (documented in docs/failure-modes.md). Never holds a secret: ids, statuses and attempts.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from worker.db import DATABASE_UNAVAILABLE
from worker.errors import AwalError
from worker.models import Message
from worker.runtime import Runtime
from worker.sending import store
from worker.sending.client import AttemptRecord, SendResult
from worker.settings import Settings
from worker.status import MessageStatus

log = logging.getLogger("buttoncast.journal")
JOURNAL_KEY = "buttoncast:outcome-journal"
REDIS_TIMEOUT_S = 2.0
_ATTEMPT_KEYS = ("started_at", "duration_ms", "http_status", "outcome", "error_code", "error_message",
                 "request_id", "vendor_id", "vendor_message_id")


@dataclass(frozen=True)
class JournalEntry:
    """One outcome the database refused: enough to record it later, guarded by the claim token."""

    message_id: int
    claim_token: str
    status: str
    worker: str
    campaign_id: int | None = None
    vendor_id: int | None = None
    vendor_message_id: str | None = None
    vendor_status: str | None = None
    http_status: int | None = None
    attempts: list[dict] = field(default_factory=list)
    error: str | None = None          # why the database refused it (exception class)
    # a failure outcome (failed, unknown, or back to queued/pending): the vendor's error and when to retry
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    not_before: str | None = None     # ISO 8601, aware
    # the campaign streak the live write counted this failure toward (STREAKS), and its pause threshold
    streak: str | None = None
    streak_threshold: int | None = None

    @property
    def key(self) -> str:
        return f"{self.message_id}:{self.claim_token}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "JournalEntry":
        return cls(**json.loads(text))

    @classmethod
    def sent(cls, message_id: int, token: str, result: SendResult, attempts: list[AttemptRecord], worker: str,
             campaign_id: int | None, error: str | None = None) -> "JournalEntry":
        return cls(message_id=message_id, claim_token=token, status=MessageStatus.SENT.value, worker=worker,
                   campaign_id=campaign_id, vendor_id=result.vendor_id, vendor_message_id=result.message_id,
                   vendor_status=result.vendor_status, http_status=result.http_status,
                   attempts=[{k: getattr(a, k) for k in _ATTEMPT_KEYS} for a in attempts], error=error)

    @classmethod
    def failure(cls, message_id: int, token: str, status: MessageStatus, error: AwalError,
                attempts: list[AttemptRecord], worker: str, campaign_id: int | None,
                not_before: datetime | None = None, *, streak: str | None = None,
                streak_threshold: int | None = None) -> "JournalEntry":
        """A failure outcome: the request was answered (or not) and the row must move on; nothing
        the vendor accepted, so replaying it can never send twice. `streak`: the campaign streak
        (STREAKS) the live write counts it toward, with that streak's pause threshold."""
        return cls(message_id=message_id, claim_token=token, status=status.value, worker=worker,
                   campaign_id=campaign_id, http_status=error.http_status,
                   attempts=[{k: getattr(a, k) for k in _ATTEMPT_KEYS} for a in attempts],
                   error_code=error.code, error_message=error.message, request_id=error.request_id,
                   not_before=not_before.isoformat() if not_before else None,
                   streak=streak, streak_threshold=streak_threshold)

    def error_outcome(self) -> AwalError:
        return AwalError(self.error_message or "", code=self.error_code, http_status=self.http_status,
                         request_id=self.request_id)

    def result(self) -> SendResult:
        return SendResult(vendor_id=self.vendor_id, message_id=self.vendor_message_id or "",
                          vendor_status=self.vendor_status, http_status=self.http_status or 200)

    def attempt_records(self) -> list[AttemptRecord]:
        return [AttemptRecord(**{**a, "started_at": datetime.fromisoformat(a["started_at"])
                                 if isinstance(a.get("started_at"), str) else a.get("started_at")})
                for a in self.attempts]


class OutcomeJournal(Protocol):
    def append(self, entry: JournalEntry) -> None: ...
    def remove(self, entry: JournalEntry) -> None: ...
    def entries(self) -> list[JournalEntry]: ...


class RedisJournal:
    """The journal as one Redis hash: appending the same outcome twice keeps one entry."""

    def __init__(self, redis_url: str, key: str = JOURNAL_KEY) -> None:
        import redis

        self.key = key
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                           socket_connect_timeout=REDIS_TIMEOUT_S)

    def append(self, entry: JournalEntry) -> None:
        self._redis.hset(self.key, entry.key, entry.to_json())

    def remove(self, entry: JournalEntry) -> None:
        self._redis.hdel(self.key, entry.key)

    def entries(self) -> list[JournalEntry]:
        return [JournalEntry.from_json(v) for _, v in sorted(self._redis.hgetall(self.key).items())]


class MemoryJournal:
    """Embedded mode: the journal in this process (the worker and the sweep share it)."""

    def __init__(self) -> None:
        self._entries: dict[str, JournalEntry] = {}
        self._lock = threading.Lock()

    def append(self, entry: JournalEntry) -> None:
        with self._lock:
            self._entries[entry.key] = entry

    def remove(self, entry: JournalEntry) -> None:
        with self._lock:
            self._entries.pop(entry.key, None)

    def entries(self) -> list[JournalEntry]:
        with self._lock:
            return list(self._entries.values())


def build_journal(settings: Settings) -> OutcomeJournal:
    return RedisJournal(settings.redis_url) if settings.redis_url else MemoryJournal()


def journal_of(runtime: Runtime) -> OutcomeJournal:
    """This process's outcome journal (issue 12 item 13): where outcomes the database refused wait."""
    return runtime.component("journal", lambda rt: build_journal(rt.settings))


def keep(journal: OutcomeJournal | None, entry: JournalEntry) -> bool:
    """Append `entry`; False (and an ERROR line with the ids) if the journal cannot take it either."""
    if journal is None:
        return False
    try:
        journal.append(entry)
        return True
    except Exception as exc:  # noqa: BLE001 - the journal is the fallback: its failure is logged, not raised
        log.error("outcome journal unavailable (%s): message %s vendor messageId=%s is recorded nowhere yet",
                  type(exc).__name__, entry.message_id, entry.vendor_message_id)
        return False


def forget(journal: OutcomeJournal | None, entry: JournalEntry) -> None:
    """The worker's own retry recorded it: drop the entry (applying it again would change nothing)."""
    if journal is None:
        return
    try:
        journal.remove(entry)
    except Exception as exc:  # noqa: BLE001 - a leftover entry is harmless: the token guard makes it a no-op
        log.warning("could not drop journal entry %s (%s); the sweep will find it already recorded",
                    entry.key, type(exc).__name__)


def apply_entries(journal: OutcomeJournal, session_factory: sessionmaker[Session], *, actor: str) -> int:
    """Record every journaled outcome the claim token still allows; drop each entry once handled.
    Stops at the first database failure (the entries stay for the next sweep). Returns how many
    messages it moved."""
    try:
        entries = journal.entries()
    except Exception as exc:  # noqa: BLE001 - Redis down: try again next sweep
        log.warning("could not read the outcome journal (%s)", type(exc).__name__)
        return 0
    applied = 0
    for entry in entries:
        try:
            if _apply(entry, session_factory, actor):
                applied += 1
        except DATABASE_UNAVAILABLE:
            log.warning("database still refuses journaled outcomes; %s left for the next sweep", len(entries) - applied)
            raise
        forget(journal, entry)
    return applied


#: the campaign streaks a failure counts toward (Campaign's counters), and how each is counted
STREAK_FAILURES, STREAK_UNKNOWN = "consecutive_failures", "consecutive_unknown"
STREAKS = {STREAK_FAILURES: store.note_campaign_failure, STREAK_UNKNOWN: store.note_campaign_unknown}


class _Superseded(Exception):
    """The claim token no longer owns the row: nothing of this entry is written."""


_FAILURE_STATUSES = frozenset({MessageStatus.FAILED.value, MessageStatus.UNKNOWN.value,
                               MessageStatus.QUEUED.value, MessageStatus.PENDING.value,
                               MessageStatus.SUPPRESSED.value, MessageStatus.EXPIRED.value})


def _write(session: Session, entry: JournalEntry) -> str | None:
    """The entry's outcome, guarded by its claim token; the status written, or None if superseded.
    A failure counts toward the campaign streak the live write counted it toward (issue 25), so
    the auto-pause breaker sees it; a 401's pause is not replayed (the next message brings it back)."""
    if entry.status == MessageStatus.SENT.value:
        done = store.record_sent(session, entry.message_id, entry.claim_token, entry.result(),
                                 entry.attempt_records(), entry.worker, entry.campaign_id)
        return entry.status if done else None
    not_before = datetime.fromisoformat(entry.not_before) if entry.not_before else None
    written = store.record_error(session, entry.message_id, entry.claim_token, status=MessageStatus(entry.status),
                                 error=entry.error_outcome(), attempts=entry.attempt_records(), worker=entry.worker,
                                 not_before=not_before)
    note = STREAKS.get(entry.streak or "")
    if written and note is not None and entry.campaign_id is not None and entry.streak_threshold:
        note(session, entry.campaign_id, threshold=entry.streak_threshold,
             reason=f"{entry.error_code}: {entry.error_message}")
    return written


def _apply(entry: JournalEntry, session_factory: sessionmaker[Session], actor: str) -> bool:
    if entry.status != MessageStatus.SENT.value and entry.status not in _FAILURE_STATUSES:
        log.error("journal entry %s has status %r, which this version cannot apply; dropped", entry.key, entry.status)
        return False
    try:
        with session_factory() as session, session.begin():
            before = session.scalar(sa.select(Message.status).where(Message.id == entry.message_id))
            written = _write(session, entry)
            if written is None:   # recorded meanwhile, or no longer this claim's: roll back the attempt rows too
                raise _Superseded(before)
            store.add_event(session, entry.message_id, before, written,
                            f"recorded from the outcome journal: the database had refused it ({entry.error})", actor)
    except _Superseded as superseded:
        log.info("journal entry %s already recorded or superseded (message is %s)", entry.key, superseded.args[0])
        return False
    log.warning("message %s recorded %s from the outcome journal: vendor messageId=%s", entry.message_id,
                entry.status, entry.vendor_message_id)
    return True
