"""The audit trail as an admin reads it: every write by a person or an API key (worker.audit), who,
what, when, on what and from where; newest first, filtered, one keyset page at a time, or all of it
as a streamed CSV.

Pages walk ix_audit_events_at backwards from a cursor (the last row's time and id): page 500 costs
what page 1 does. A subject filter is served by ix_audit_events_subject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.report import REPORT_YIELD_ROWS, stream_csv
from worker.audit import AuditEvent

PAGE_SIZE = 50
CSV_COLUMNS = ("at", "actor", "who", "action", "subject_type", "subject_id", "address", "detail")
#: what a subject type is called on the page (and may be typed as in its filter); the others keep their name
SUBJECT_WORDS = {"console_user": "person", "api_key": "key", "hook_endpoint": "endpoint"}
ACTOR_MAX_CHARS = 200


@dataclass(frozen=True)
class AuditFilter:
    """What the admin asked for; every part optional. `actor`: any part of it (an e-mail, a key's
    prefix or name); `action`: its start (`campaign.` finds every campaign action); `subject_type`
    and `subject_id`: what was changed; `since` (inclusive) and `until` (exclusive): aware times."""

    actor: str = ""
    action: str = ""
    subject_type: str = ""
    subject_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        conditions: list[sa.ColumnElement[bool]] = []
        if self.actor.strip():
            part = _escape_like(self.actor.strip()[:ACTOR_MAX_CHARS])
            conditions.append(AuditEvent.actor.ilike(f"%{part}%", escape="\\"))
        if self.action.strip():
            conditions.append(AuditEvent.action.startswith(self.action.strip(), autoescape=True))
        if self.subject_type.strip():
            conditions.append(AuditEvent.subject_type == self.subject_type.strip())
        if self.subject_id is not None:
            conditions.append(AuditEvent.subject_id == self.subject_id)
        if self.since is not None:
            conditions.append(AuditEvent.at >= self.since)
        if self.until is not None:
            conditions.append(AuditEvent.at < self.until)
        return conditions


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the next page holds the rows older than (at, id)."""

    at: datetime
    id: int

    def __str__(self) -> str:
        return f"{self.at.isoformat()}~{self.id}"

    @classmethod
    def parse(cls, text: str | None) -> "Cursor | None":
        """The cursor a page link carries, or None for a missing or mangled one (the first page)."""
        at, sep, row_id = (text or "").partition("~")
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            return None
        if not sep or not row_id.isdigit() or len(row_id) > 18 or when.tzinfo is None:
            return None
        return cls(when, int(row_id))


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    who: str
    action: str
    subject_type: str
    subject_id: int | None
    address: str | None
    detail: dict[str, Any] | None

    @property
    def subject(self) -> str:
        """`campaign 12`, `person 3`: what was changed, in words."""
        kind = SUBJECT_WORDS.get(self.subject_type, self.subject_type)
        return kind if self.subject_id is None else f"{kind} {self.subject_id}"


def subject_type_of(word: str) -> str:
    """The stored subject type a filter's word names (`person` -> `console_user`), or the word itself."""
    word = word.strip().lower()
    return next((stored for stored, shown in SUBJECT_WORDS.items() if shown == word), word)


@dataclass(frozen=True)
class AuditPage:
    rows: list[AuditRow]
    next: Cursor | None          # None: this is the last page


def who(actor: str) -> str:
    """The actor as a person reads it: `user:ana@example.com` -> `ana@example.com`,
    `apikey:bc1a2b3c:crm` -> `API key crm (bc1a2b3c)`, `operator`/`cli` -> `command line`."""
    kind, _, rest = actor.partition(":")
    if kind == "user" and rest:
        return rest
    if kind == "apikey" and rest:
        prefix, _, name = rest.partition(":")
        return f"API key {name or '?'} ({prefix})"
    if actor in ("operator", "cli"):
        return "command line"
    return actor


def _row(event: AuditEvent) -> AuditRow:
    return AuditRow(event.id, event.at, event.actor, who(event.actor), event.action, event.subject_type,
                    event.subject_id, event.address, event.detail)


def audit_page(session: Session, wanted: AuditFilter, *, before: Cursor | None = None,
               limit: int = PAGE_SIZE) -> AuditPage:
    """One page of the trail, newest first, older than `before` (the previous page's `next`)."""
    query = sa.select(AuditEvent).where(*wanted.where())
    if before is not None:
        query = query.where(AuditEvent.at <= before.at,
                            sa.or_(AuditEvent.at < before.at, AuditEvent.id < before.id))
    events = list(session.scalars(query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit + 1)))
    rows = [_row(e) for e in events[:limit]]
    return AuditPage(rows, Cursor(rows[-1].at, rows[-1].id) if len(events) > limit else None)


def audit_rows(session: Session, wanted: AuditFilter) -> Iterator[dict[str, Any]]:
    """Every row the filter matches, newest first, streamed (server-side cursor on Postgres)."""
    query = (sa.select(AuditEvent).where(*wanted.where()).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
             .execution_options(yield_per=REPORT_YIELD_ROWS))
    for event in session.scalars(query):
        yield {"at": event.at, "actor": event.actor, "who": who(event.actor), "action": event.action,
               "subject_type": event.subject_type, "subject_id": event.subject_id, "address": event.address,
               "detail": json.dumps(event.detail, ensure_ascii=False, sort_keys=True) if event.detail else None}


def stream_audit_csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The export as CSV text chunks (cells safe from spreadsheet formulas: scheduler.report.csv_cell)."""
    return stream_csv(rows, columns=CSV_COLUMNS)
