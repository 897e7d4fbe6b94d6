"""Contacts: one row per phone, its consent (opted out / back in, by what) and its 24-hour window.

WhatsApp's Business Policy: a business must honour every request to stop messages. Each change of
consent is a `contact_events` row with its source, and the contact row holds the current state
that the send path's claim reads (worker.sending.gate). Consent follows the newest event by the
event's own time (opt_out, opt_in); which texts are keywords is worker.contacts.keywords' one
rule. Interactive (button) messages may only go to a person who wrote to us within the last 24
hours (the customer-service window); outside it Meta refuses them, usually late, with 131047. A contact's window is open until its last inbound
message + SERVICE_WINDOW.

Functions that take a session never commit: the caller owns the transaction, so an opt-out recorded
by the webhook receiver is committed with the event before the receiver answers 200. The operator's
opt-out / opt-in (operator_opt_out, operator_opt_in) take the Runtime and own theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.audit import record_audit
from worker.contacts.attributes import attributes_of, tags_for
from worker.contacts.keywords import match_keyword
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

    Consent follows the newest event by the event's own time, whatever order events arrive in
    (a STOP webhook retried after a later START): an opt-out older than the contact's opt-in is
    kept in the history only; a repeat while opted out is no change of consent (no history row)
    but, when newer, moves opted_out_at to its time so that an older opt-in arriving later loses
    to it. On a tie with the opt-in (the vendor's times are whole seconds) the opt-out wins."""
    _check_source(source)
    at = at or utcnow()
    ensure_contacts(session, [phone], at=at)
    note = reason[:REASON_MAX_CHARS] if reason else None
    opted_out_at, opted_in_at = _consent_times(session, phone)
    if opted_out_at is not None:
        if at > opted_out_at:
            _set_contact(session, phone, opted_out_at=at)
        return False
    if opted_in_at is not None and opted_in_at > at:
        _add_event(session, phone, OPT_OUT, source, _too_old(note, "opt-in", opted_in_at), actor, at)
        return False
    _set_contact(session, phone, opted_out_at=at, opt_out_source=source, opt_out_note=note)
    _add_event(session, phone, OPT_OUT, source, note, actor, at)
    hooks_outbox.emit(session, HookEvent.CONTACT_OPTED_OUT, phone=phone, now=at,   # same transaction
                      data={"phone": phone, "source": source, "reason": note, "at": at.isoformat()})
    return True


def opt_in(session: Session, phone: str, *, source: str, actor: str | None = None, at: datetime | None = None) -> bool:
    """Opt a phone back in. True if it was opted out. Ordered by the event's time as opt_out is:
    an opt-in not newer than the opt-out is kept in the history only; a repeat while opted in
    moves opted_in_at to its time when newer (so an older opt-out arriving later loses to it)."""
    _check_source(source)
    at = at or utcnow()
    times = _consent_times(session, phone)
    if times is None:
        return False
    opted_out_at, opted_in_at = times
    if opted_out_at is None:
        if opted_in_at is None or at > opted_in_at:
            _set_contact(session, phone, opted_in_at=at)
        return False
    if at <= opted_out_at:
        _add_event(session, phone, OPT_IN, source, _too_old(None, "opt-out", opted_out_at), actor, at)
        return False
    _set_contact(session, phone, opted_out_at=None, opt_out_source=None, opt_out_note=None, opted_in_at=at)
    _add_event(session, phone, OPT_IN, source, None, actor, at)
    return True


def _consent_times(session: Session, phone: str) -> tuple[datetime | None, datetime | None] | None:
    """(opted_out_at, opted_in_at) of a contact, or None if unknown. The row stays locked until the
    transaction ends (Postgres; SQLite's BEGIN IMMEDIATE serialises writers), so two consent events
    for one phone are decided one after the other, each seeing the other's time."""
    row = session.execute(
        sa.select(Contact.opted_out_at, Contact.opted_in_at).where(Contact.phone == phone).with_for_update()
    ).one_or_none()
    return (row[0], row[1]) if row else None


def _set_contact(session: Session, phone: str, **values: Any) -> None:
    session.execute(sa.update(Contact).where(Contact.phone == phone).values(**values, updated_at=utcnow())
                    .execution_options(synchronize_session=False))


def _too_old(note: str | None, newer: str, when: datetime) -> str:
    """The history note of a consent event that lost to a newer one (it arrived out of order)."""
    why = f"older than the {newer} at {when:%Y-%m-%d %H:%M:%S} UTC: no change"
    return f"{note}; {why}" if note else why


def operator_opt_out(rt: Runtime, phones: Iterable[str], *, reason: str | None = None,
                     actor: str | None = None) -> list[str]:
    """An operator opts normalised phones out (source operator), all in one transaction, effective
    when this returns; returns the phones that were not opted out before, in order."""
    with rt.session_factory.begin() as session:
        changed = [p for p in phones if opt_out(session, p, source=SOURCE_OPERATOR, reason=reason, actor=actor)]
        _audit_consent(session, actor, "contacts.opted_out", changed, reason=reason)
        return changed


def operator_opt_in(rt: Runtime, phones: Iterable[str], *, actor: str | None = None) -> list[str]:
    """An operator opts normalised phones back in (source operator), all in one transaction; returns
    the phones that were opted out, in order."""
    with rt.session_factory.begin() as session:
        changed = [p for p in phones if opt_in(session, p, source=SOURCE_OPERATOR, actor=actor)]
        _audit_consent(session, actor, "contacts.opted_in", changed)
        return changed


#: an operator's consent change names at most this many phones in its audit row (the rest: contact_events)
AUDIT_PHONES_MAX = 20


def _audit_consent(session: Session, actor: str | None, action: str, phones: list[str], **detail: Any) -> None:
    if phones:
        record_audit(session, actor, action, "contact", None, count=len(phones), phones=phones[:AUDIT_PHONES_MAX],
                     **{k: v for k, v in detail.items() if v})


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
    attributes: dict[str, str] = field(default_factory=dict)   # worker.contacts.attributes
    tags: list[str] = field(default_factory=list)

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
        attributes=dict(row.attributes or {}), tags=attributes_of(session, phone)[1],
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
    OPT_IN_KEYWORDS). A text matches a keyword as its whole message or its first word, both
    normalised (worker.contacts.keywords.match_keyword: the one rule); an opt-out keyword wins."""

    opt_out_keywords: frozenset[str]
    opt_out_button_ids: frozenset[str]
    opt_in_keywords: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConsentRules":
        return cls(settings.opt_out_keywords, settings.opt_out_button_ids, settings.opt_in_keywords)

    def for_text(self, text: str | None) -> str | None:
        """OPT_OUT, OPT_IN or None for an inbound text."""
        if match_keyword(text, self.opt_out_keywords):
            return OPT_OUT
        return OPT_IN if match_keyword(text, self.opt_in_keywords) else None

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
                  "first_seen_at", "last_inbound_at", "window_open_until", "last_sent_at", "attributes", "tags")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (OWASP CSV injection) gets a leading quote."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def export_row(c: Any, tags: list[str] | None = None) -> dict[str, Any]:
    """One contact as the export's columns (times in ISO 8601; attributes an object, tags a list)."""
    until = window_open_until(c.last_inbound_at)
    row = {k: getattr(c, k, None) for k in EXPORT_COLUMNS}
    row.update(opted_out=c.opted_out_at is not None, window_open_until=until,
               attributes=dict(getattr(c, "attributes", None) or {}), tags=list(tags or ()))
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def export_rows(session: Session, *, opted_out_only: bool = False, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every contact as an export row, in phone order, with its tags (read once per batch)."""
    pending: list[Contact] = []
    for contact in iter_contacts(session, opted_out_only=opted_out_only, batch=batch):
        pending.append(contact)
        if len(pending) >= batch:
            yield from _with_tags(session, pending)
    yield from _with_tags(session, pending)


def _with_tags(session: Session, contacts: list[Contact]) -> Iterator[dict[str, Any]]:
    tags = tags_for(session, [c.phone for c in contacts])
    rows = [export_row(c, tags.get(c.phone)) for c in contacts]
    contacts.clear()
    yield from rows


def export_cells(row: dict[str, Any]) -> list[Any]:
    """An export row as a CSV line's cells: empty for none, formula-safe text; attributes as a JSON
    object, tags `;`-separated (as `contacts import --attributes` reads them)."""
    cells = dict(row, attributes=json.dumps(row.get("attributes") or {}, ensure_ascii=False, sort_keys=True),
                 tags=";".join(row.get("tags") or ()))
    return ["" if cells[k] is None else csv_cell(cells[k]) for k in EXPORT_COLUMNS]
