"""Segments: saved audiences written as rules (worker.contacts.rules), counted and resolved live.

A segment is a name and a rules document, never a list of people: `count`, `members`, `sample`
and `export_rows` read who matches now. An opted-out contact is never a member: every query here
adds it. The service functions that write (create, update, delete) take the Runtime, own their
transaction and record who did it in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker import lifecycle
from worker.audit import record_audit
from worker.contacts.attributes import tags_for
from worker.contacts.rules import RulesInvalid, condition, describe, references, validate
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import Campaign, Contact, Segment, utcnow
from worker.runtime import Runtime

NAME_MAX_CHARS = 200
SAMPLE_SIZE = 10
EXPORT_BATCH = 1000


class SegmentNotFound(ButtoncastError):
    def __init__(self, segment_id: int) -> None:
        super().__init__(f"no segment {segment_id}")
        self.segment_id = segment_id


def members(session: Session, rules: Any, *, now: datetime | None = None,
            names: Sequence[str] | None = None) -> sa.Select:
    """`SELECT phone, attributes` of the members in phone order; never an opted-out contact.
    With `names`: `SELECT phone, <attribute>, ...` (each as text or NULL), so a caller that needs a
    few values (a message's placeholders) reads them alone, not every member's whole document."""
    columns = [Contact.attributes] if names is None else [Contact.attributes[n].as_string() for n in names]
    return (sa.select(Contact.phone, *columns)
            .where(Contact.opted_out_at.is_(None), condition(session, rules, now=now or utcnow()))
            .order_by(Contact.phone))


def count(session: Session, rules: Any, *, now: datetime | None = None) -> int:
    """How many members the rules have now."""
    where = condition(session, rules, now=now or utcnow())
    return session.scalar(sa.select(sa.func.count()).select_from(Contact)
                          .where(Contact.opted_out_at.is_(None), where)) or 0


def sample(session: Session, rules: Any, n: int = SAMPLE_SIZE) -> list[tuple[str, dict]]:
    """The first `n` members in phone order: (phone, attributes)."""
    return [(phone, dict(attributes or {})) for phone, attributes in session.execute(members(session, rules).limit(n))]


def attribute_names(session: Session, rules: Any) -> list[str]:
    """Every attribute name any member has, sorted (an export's columns)."""
    where = sa.and_(Contact.opted_out_at.is_(None), condition(session, rules, now=utcnow()))
    if session.get_bind().dialect.name == "sqlite":
        each = sa.func.json_each(Contact.attributes).table_valued("key")
        query = sa.select(each.c.key).select_from(Contact).join(each, sa.true()).where(where).distinct()
    else:
        query = sa.select(sa.func.jsonb_object_keys(Contact.attributes).label("key")).where(where).distinct()
    return sorted(str(k) for k in session.scalars(query))


def export_rows(session: Session, rules: Any, *, batch: int = EXPORT_BATCH) -> Iterator[tuple[str, dict, list[str]]]:
    """(phone, attributes, tags) of every member in phone order, streamed: one query read `batch`
    rows at a time (a server-side cursor on Postgres), and the tags of each batch beside it."""
    result = session.execute(members(session, rules), execution_options={"yield_per": batch})
    for rows in result.partitions():
        tags = tags_for(session, [phone for phone, _ in rows])
        for phone, attributes in rows:
            yield phone, dict(attributes or {}), tags.get(phone, [])


# ---------------------------------------------------------------------------------------------
# the service: saved segments


@dataclass(frozen=True)
class SegmentView:
    """A saved segment as the faces show it: the rules in words and, when counted, its members now
    (`problem` says why it could not be counted: a campaign it names was deleted, say)."""

    id: int
    name: str
    rules: dict
    description: str
    created_at: datetime
    created_by: str | None
    updated_at: datetime
    count: int | None = None
    problem: str | None = None


def get_segment(session: Session, segment_id: int) -> Segment:
    segment = session.get(Segment, segment_id, populate_existing=True)
    if segment is None:
        raise SegmentNotFound(segment_id)
    return segment


def list_segments(session: Session) -> list[Segment]:
    return list(session.scalars(sa.select(Segment).order_by(Segment.id)))


def view(session: Session, segment: Segment | int, *, counted: bool = True) -> SegmentView:
    """A segment with its description and (if `counted`) its live count."""
    if not isinstance(segment, Segment):
        segment = get_segment(session, segment)
    members_now, problem = None, None
    if counted:
        try:
            members_now = count(session, segment.rules)
        except RulesInvalid as exc:
            problem = str(exc)
    try:
        words = describe(session, segment.rules)
    except RulesInvalid as exc:
        words, problem = "(rules cannot be read)", problem or str(exc)
    return SegmentView(id=segment.id, name=segment.name, rules=segment.rules, description=words,
                       created_at=segment.created_at, created_by=segment.created_by, updated_at=segment.updated_at,
                       count=members_now, problem=problem)


def _checked_name(session: Session, name: Any, problems: list[FieldProblem], *,
                  segment_id: int | None = None) -> str | None:
    if not isinstance(name, str) or not name.strip():
        problems.append(FieldProblem("name", f"is required: 1 to {NAME_MAX_CHARS} characters"))
        return None
    name = name.strip()
    if len(name) > NAME_MAX_CHARS:
        problems.append(FieldProblem("name", f"is {len(name)} characters; the limit is {NAME_MAX_CHARS}"))
        return None
    taken = session.scalar(sa.select(Segment.id).where(Segment.name == name))
    if taken is not None and taken != segment_id:
        problems.append(FieldProblem("name", f"segment {taken} is already named {name!r}; choose another name"))
        return None
    return name


def _checked_rules(session: Session, rules: Any, problems: list[FieldProblem], *,
                   segment_id: int | None = None) -> dict | None:
    try:
        return validate(session, rules, segment_id=segment_id)
    except RulesInvalid as exc:
        problems.extend(exc.problems)
        return None


def _name_taken(name: str) -> RulesInvalid:
    return RulesInvalid([FieldProblem("name", f"a segment is already named {name!r}; choose another name")])


def create_segment(rt: Runtime, *, name: Any, rules: Any, actor: str | None) -> Segment:
    """Save validated rules under a unique name; every problem named, nothing saved when there is one."""
    try:
        with rt.session_factory.begin() as session:
            problems: list[FieldProblem] = []
            name = _checked_name(session, name, problems)
            doc = _checked_rules(session, rules, problems)
            if problems:
                raise RulesInvalid(problems)
            now = utcnow()
            segment = Segment(name=name, rules=doc, created_at=now, created_by=actor, updated_at=now)
            session.add(segment)
            session.flush()
            record_audit(session, actor, "segment.created", "segment", segment.id, name=name)
    except IntegrityError:   # a concurrent create took the name between the check and the insert
        raise _name_taken(name) from None
    return segment


def update_segment(rt: Runtime, segment_id: int, *, name: Any = None, rules: Any = None, actor: str | None) -> Segment:
    """Rename a segment and/or replace its rules (validated; they may not come to contain the segment itself)."""
    try:
        with rt.session_factory.begin() as session:
            segment = get_segment(session, segment_id)
            problems: list[FieldProblem] = []
            new_name = _checked_name(session, name, problems, segment_id=segment_id) if name is not None else None
            doc = _checked_rules(session, rules, problems, segment_id=segment_id) if rules is not None else None
            if problems:
                raise RulesInvalid(problems)
            changed = []
            if new_name is not None and new_name != segment.name:
                segment.name, changed = new_name, changed + ["name"]
            if doc is not None and doc != segment.rules:
                segment.rules, changed = doc, changed + ["rules"]
            if changed:
                segment.updated_at = utcnow()
                record_audit(session, actor, "segment.updated", "segment", segment_id, changed=changed)
    except IntegrityError:
        raise _name_taken(str(name).strip()) from None
    return segment


def delete_segment(rt: Runtime, segment_id: int, *, actor: str | None) -> list[int]:
    """Delete a segment no other segment uses. A live series (scheduled or running) targeting it is
    paused with the reason, since its next run would have no audience; returns the paused ids."""
    with rt.session_factory.begin() as session:
        segment = get_segment(session, segment_id)
        users = [f"{s.id} ({s.name})" for s in list_segments(session)
                 if s.id != segment_id and segment_id in references(s.rules)]
        if users:
            raise MessageInvalid([FieldProblem("segment", f"segment {segment_id} ({segment.name}) is used by segment "
                                                          f"{', '.join(users)}; change or delete those first")])
        series = session.scalars(sa.select(Campaign.id).where(
            Campaign.segment_id == segment_id, Campaign.series_every_s.is_not(None),
            Campaign.status.in_(lifecycle.ACTIVE)).order_by(Campaign.id)).all()
        reason = f"segment {segment_id} ({segment.name}) was deleted"
        paused = [c for c in series if lifecycle.pause_by_engine(session, c, reason=reason)]
        session.delete(segment)
        record_audit(session, actor, "segment.deleted", "segment", segment_id, name=segment.name, paused=paused)
    return paused
