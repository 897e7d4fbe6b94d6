"""Contacts: one row per phone, its consent (opted out / back in, by what) and its 24-hour window.

WhatsApp's Business Policy: a business must honour every request to stop messages. Each change of
consent is a `contact_events` row with its source, and the contact row holds the current state
that the send path's claim reads (worker.sending.gate). Interactive (button) messages may only go to a
person who wrote to us within the last 24 hours (the customer-service window); outside it Meta
refuses them, usually late, with 131047. A contact's window is open until its last inbound
message + SERVICE_WINDOW.

Functions that take a session never commit: the caller owns the transaction, so an opt-out recorded
by the webhook receiver is committed with the event before the receiver answers 200. The operator's
opt-out / opt-in (operator_opt_out, operator_opt_in) take the Runtime and own theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.hooks import outbox as hooks_outbox
from worker.hooks.events import HookEvent
from worker.models import Contact, ContactEvent, Message, utcnow
from worker.runtime import Runtime
from worker.settings import Settings

#: the customer-service window: a person's last inbound message + 24 hours
SERVICE_WINDOW = timedelta(hours=24)
OPT_OUT, OPT_IN = "opt_out", "opt_in"
SOURCE_KEYWORD, SOURCE_BUTTON, SOURCE_VENDOR_CODE, SOURCE_OPERATOR, SOURCE_IMPORT = (
    "keyword", "button", "vendor_code", "operator", "import")
SOURCES = frozenset({SOURCE_KEYWORD, SOURCE_BUTTON, SOURCE_VENDOR_CODE, SOURCE_OPERATOR, SOURCE_IMPORT})
REASON_MAX_CHARS = 1000
RECENT_MESSAGES = 10
HISTORY_MAX = 100

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def _insert(session: Session):  # noqa: ANN202 - the dialect's INSERT with ON CONFLICT
    dialect = session.get_bind().dialect.name
    try:
        return _INSERTS[dialect]
    except KeyError:
        raise RuntimeError(f"contacts need Postgres or SQLite, not {dialect}") from None


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"consent source {source!r} is not one of {sorted(SOURCES)}")


def ensure_contacts(session: Session, phones: Iterable[str], *, at: datetime | None = None) -> None:
    """Create a contact for each phone not yet known (first seen `at`); existing rows are untouched."""
    at = at or utcnow()
    rows = [{"phone": p, "first_seen_at": at, "updated_at": at} for p in dict.fromkeys(phones) if p]
    if rows:
        session.execute(_insert(session)(Contact).on_conflict_do_nothing(index_elements=["phone"]), rows)


def opt_out(session: Session, phone: str, *, source: str, reason: str | None = None, actor: str | None = None,
            at: datetime | None = None) -> bool:
    """Opt a phone out (creating its contact if new). True if it was not opted out before.

    An opt-out older than the contact's last opt-in (events arriving out of order) changes nothing."""
    _check_source(source)
    at = at or utcnow()
    ensure_contacts(session, [phone], at=at)
    note = reason[:REASON_MAX_CHARS] if reason else None
    done = session.execute(
        sa.update(Contact)
        .where(Contact.phone == phone, Contact.opted_out_at.is_(None),
               sa.or_(Contact.opted_in_at.is_(None), Contact.opted_in_at <= at))
        .values(opted_out_at=at, opt_out_source=source, opt_out_note=note, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if done:
        _add_event(session, phone, OPT_OUT, source, note, actor, at)
        hooks_outbox.emit(session, HookEvent.CONTACT_OPTED_OUT, phone=phone, now=at,   # same transaction
                          data={"phone": phone, "source": source, "reason": note, "at": at.isoformat()})
    return done == 1


def opt_in(session: Session, phone: str, *, source: str, actor: str | None = None, at: datetime | None = None) -> bool:
    """Opt a phone back in. True if it was opted out (an opt-in older than the opt-out does nothing)."""
    _check_source(source)
    at = at or utcnow()
    done = session.execute(
        sa.update(Contact)
        .where(Contact.phone == phone, Contact.opted_out_at.is_not(None), Contact.opted_out_at <= at)
        .values(opted_out_at=None, opt_out_source=None, opt_out_note=None, opted_in_at=at, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if done:
        _add_event(session, phone, OPT_IN, source, None, actor, at)
    return done == 1


def operator_opt_out(rt: Runtime, phones: Iterable[str], *, reason: str | None = None,
                     actor: str | None = None) -> list[str]:
    """An operator opts normalised phones out (source operator), all in one transaction, effective
    when this returns; returns the phones that were not opted out before, in order."""
    with rt.session_factory.begin() as session:
        return [p for p in phones if opt_out(session, p, source=SOURCE_OPERATOR, reason=reason, actor=actor)]


def operator_opt_in(rt: Runtime, phones: Iterable[str], *, actor: str | None = None) -> list[str]:
    """An operator opts normalised phones back in (source operator), all in one transaction; returns
    the phones that were opted out, in order."""
    with rt.session_factory.begin() as session:
        return [p for p in phones if opt_in(session, p, source=SOURCE_OPERATOR, actor=actor)]


def _add_event(session: Session, phone: str, action: str, source: str, reason: str | None, actor: str | None,
               at: datetime) -> None:
    session.execute(sa.insert(ContactEvent).values(phone=phone, at=at, action=action, source=source, reason=reason,
                                                   actor=actor[:200] if actor else None))


def record_inbound(session: Session, phone: str, *, at: datetime) -> None:
    """A message from `phone` at `at`: opens (or extends) its 24-hour window. Keeps the latest time."""
    insert = _insert(session)(Contact).values(phone=phone, first_seen_at=at, last_inbound_at=at, updated_at=utcnow())
    later = sa.or_(Contact.last_inbound_at.is_(None), Contact.last_inbound_at < insert.excluded.last_inbound_at)
    session.execute(insert.on_conflict_do_update(
        index_elements=["phone"],
        set_={"last_inbound_at": sa.case((later, insert.excluded.last_inbound_at), else_=Contact.last_inbound_at),
              "updated_at": insert.excluded.updated_at},
    ))


def window_open_until(last_inbound_at: datetime | None) -> datetime | None:
    return last_inbound_at + SERVICE_WINDOW if last_inbound_at else None


@dataclass(frozen=True)
class ConsentChange:
    at: datetime
    action: str
    source: str
    reason: str | None
    actor: str | None


@dataclass(frozen=True)
class RecentMessage:
    id: int
    campaign_id: int | None
    status: str
    created_at: datetime
    sent_at: datetime | None
    reason: str | None   # last_error_code: a suppression reason, a vendor error code


@dataclass(frozen=True)
class ContactView:
    """What `contacts show` prints: consent state and history, the window, recent messages."""

    phone: str
    first_seen_at: datetime
    last_inbound_at: datetime | None
    last_sent_at: datetime | None
    opted_out_at: datetime | None
    opt_out_source: str | None
    opt_out_note: str | None
    opted_in_at: datetime | None
    history: list[ConsentChange] = field(default_factory=list)
    recent_messages: list[RecentMessage] = field(default_factory=list)

    @property
    def opted_out(self) -> bool:
        return self.opted_out_at is not None

    @property
    def window_open_until(self) -> datetime | None:
        return window_open_until(self.last_inbound_at)

    def window_open(self, now: datetime | None = None) -> bool:
        until = self.window_open_until
        return until is not None and until > (now or utcnow())


def get_contact(session: Session, phone: str) -> ContactView | None:
    """The contact for a normalised phone with its consent history and recent messages, or None."""
    row = session.get(Contact, phone, populate_existing=True)
    if row is None:
        return None
    history = [ConsentChange(*r) for r in session.execute(
        sa.select(ContactEvent.at, ContactEvent.action, ContactEvent.source, ContactEvent.reason, ContactEvent.actor)
        .where(ContactEvent.phone == phone).order_by(ContactEvent.at, ContactEvent.id).limit(HISTORY_MAX))]
    recent = [RecentMessage(*r) for r in session.execute(
        sa.select(Message.id, Message.campaign_id, Message.status, Message.created_at, Message.sent_at,
                  Message.last_error_code)
        .where(Message.phone == phone).order_by(Message.id.desc()).limit(RECENT_MESSAGES))]
    last_sent = session.scalar(sa.select(sa.func.max(Message.sent_at)).where(Message.phone == phone))
    return ContactView(
        phone=row.phone, first_seen_at=row.first_seen_at, last_inbound_at=row.last_inbound_at,
        last_sent_at=max((t for t in (row.last_sent_at, last_sent) if t is not None), default=None),
        opted_out_at=row.opted_out_at, opt_out_source=row.opt_out_source, opt_out_note=row.opt_out_note,
        opted_in_at=row.opted_in_at, history=history, recent_messages=recent,
    )


def is_opted_out(session: Session, phone: str) -> bool:
    return session.scalar(sa.select(Contact.opted_out_at.is_not(None)).where(Contact.phone == phone)) or False


def iter_contacts(session: Session, *, opted_out_only: bool = False, batch: int = 1000) -> Iterator[Contact]:
    """Every contact in phone order (streamed in keyset batches, so an export of millions stays small)."""
    after = ""
    while True:
        query = sa.select(Contact).where(Contact.phone > after).order_by(Contact.phone).limit(batch)
        if opted_out_only:
            query = query.where(Contact.opted_out_at.is_not(None))
        rows = list(session.scalars(query))
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].phone
        session.expunge_all()


def opted_out_page(session: Session, *, after: str = "", limit: int = 100) -> list[Contact]:
    """One keyset page of opted-out contacts in phone order, after the phone `after` (the API's list)."""
    return list(session.scalars(sa.select(Contact).where(Contact.phone > after, Contact.opted_out_at.is_not(None))
                                .order_by(Contact.phone).limit(limit)))


def opted_out_among(session: Session, campaign_id: int) -> int:
    """How many of a campaign's recipients are opted out now."""
    return session.scalar(
        sa.select(sa.func.count()).select_from(Message)
        .join(Contact, Contact.phone == Message.phone)
        .where(Message.campaign_id == campaign_id, Contact.opted_out_at.is_not(None))
    ) or 0


def open_window_among(session: Session, campaign_id: int, *, now: datetime | None = None) -> tuple[int, int]:
    """(recipients whose 24-hour window is open now, recipients) of a campaign."""
    since = (now or utcnow()) - SERVICE_WINDOW
    total, open_ = session.execute(
        sa.select(sa.func.count(Message.id), sa.func.count(Contact.phone))
        .select_from(Message)
        .outerjoin(Contact, sa.and_(Contact.phone == Message.phone, Contact.last_inbound_at > since))
        .where(Message.campaign_id == campaign_id)
    ).one()
    return open_ or 0, total or 0


@dataclass(frozen=True)
class ConsentRules:
    """Which inbound texts and button taps change consent (OPT_OUT_KEYWORDS, OPT_OUT_BUTTON_IDS,
    OPT_IN_KEYWORDS). A text matches when, trimmed and casefolded, it is one of the keywords."""

    opt_out_keywords: frozenset[str]
    opt_out_button_ids: frozenset[str]
    opt_in_keywords: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConsentRules":
        return cls(settings.opt_out_keywords, settings.opt_out_button_ids, settings.opt_in_keywords)

    def for_text(self, text: str | None) -> str | None:
        """OPT_OUT, OPT_IN or None for an inbound text."""
        word = " ".join((text or "").split()).casefold()
        if not word:
            return None
        if word in self.opt_out_keywords:
            return OPT_OUT
        return OPT_IN if word in self.opt_in_keywords else None

    def for_button(self, button_id: str | None) -> str | None:
        return OPT_OUT if button_id and button_id.strip() in self.opt_out_button_ids else None


DEFAULT_RULES = ConsentRules.from_settings(Settings())


def apply_inbound(session: Session, phone: str, *, at: datetime, rules: ConsentRules, text: str | None = None,
                  button_id: str | None = None) -> str | None:
    """An inbound message from `phone`: opens its window, and applies a consent keyword or an
    opt-out button tap. Returns OPT_OUT / OPT_IN when consent changed, else None."""
    record_inbound(session, phone, at=at)
    if rules.for_button(button_id) == OPT_OUT:
        return OPT_OUT if opt_out(session, phone, source=SOURCE_BUTTON, reason=f"tapped button {button_id!r}",
                                  actor="webhook", at=at) else None
    action = rules.for_text(text)
    if action == OPT_OUT:
        return OPT_OUT if opt_out(session, phone, source=SOURCE_KEYWORD, reason=f"replied {text.strip()[:50]!r}",
                                  actor="webhook", at=at) else None
    if action == OPT_IN:
        return OPT_IN if opt_in(session, phone, source=SOURCE_KEYWORD, actor="webhook", at=at) else None
    return None


# The export of contacts (`buttoncast contacts list`, the console's optouts.csv): one shape for both.
EXPORT_COLUMNS = ("phone", "opted_out", "opted_out_at", "opt_out_source", "opt_out_note", "opted_in_at",
                  "first_seen_at", "last_inbound_at", "window_open_until", "last_sent_at")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (OWASP CSV injection) gets a leading quote."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def export_row(c: Any) -> dict[str, Any]:
    """One contact as the export's columns (times in ISO 8601)."""
    until = window_open_until(c.last_inbound_at)
    row = {k: getattr(c, k, None) for k in EXPORT_COLUMNS}
    row.update(opted_out=c.opted_out_at is not None, window_open_until=until)
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def export_cells(row: dict[str, Any]) -> list[Any]:
    """An export row as a CSV line's cells: empty for none, formula-safe text."""
    return ["" if row[k] is None else csv_cell(row[k]) for k in EXPORT_COLUMNS]
