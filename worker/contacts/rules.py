"""Segment rules: one JSON document, validated with field-named errors, compiled to SQL, said in words.

The document is the same in the CLI's file, the API's body and what the console's builder writes:

    {"all": [...]}   {"any": [...]}   {"not": {...}}                     combinators
    {"attribute": "city", "equals": "Riyadh"}   ... "in": ["a", "b"]   ... "exists": true
    {"tag": "vip"}
    {"received": {"campaign": 12}}   {"delivered": {...}}   {"read": {...}}
    {"tapped": {"campaign": 12, "button": "reserve"}}        (no "button": any button)
    {"window": "open"}  (or "closed")   {"last_inbound_within": "7d"}   {"last_sent_within": "7d"}
    {"segment": 5}                                           (that segment's rules, as they are now)

`validate` refuses what is wrong with the field named by its path (`rules.all[1].attribute`);
`condition` compiles rules to a SQLAlchemy predicate over `contacts`: every value a person wrote
is a bound parameter, never SQL text. Every leaf is two-valued (true or false, never NULL), so
`not` means what it says: `{"not": {"attribute": "city", "equals": "Riyadh"}}` includes contacts
without a city. Opt-out is not part of a condition: worker.contacts.segments adds it to every query.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.contacts.attributes import ATTRIBUTE_VALUE_MAX_CHARS, attribute_name_problem, normalize_tag
from worker.contacts.service import SERVICE_WINDOW
from worker.durations import parse_duration
from worker.errors import FieldProblem, MessageInvalid
from worker.models import Campaign, Contact, ContactTag, Message, Segment
from worker.status import DeliveryStatus

#: combinators nested deeper than this are a mistake, not an audience
MAX_DEPTH = 10
#: leaves in one document, and in one document with the segments it uses expanded
MAX_LEAVES = 200
MAX_EXPANDED_LEAVES = 1000
MAX_IN_VALUES = 1000
BUTTON_ID_MAX_CHARS = 256    # messages.reply_button_id
ID_MAX = 2**63 - 1
#: problems reported at once (a pasted document can be wrong everywhere)
MAX_PROBLEMS = 20

COMBINATORS = ("all", "any", "not")
RESULTS = ("received", "delivered", "read", "tapped")
LEAVES = ("attribute", "tag", *RESULTS, "window", "last_inbound_within", "last_sent_within", "segment")
KINDS = COMBINATORS + LEAVES
ATTRIBUTE_TESTS = ("equals", "in", "exists")
WINDOW_STATES = ("open", "closed")


class RulesInvalid(MessageInvalid):
    """Segment rules (or a segment's name) that cannot be saved or counted; each problem names
    its field by path, e.g. `rules.any[0].tapped.button`."""


# ---------------------------------------------------------------------------------------------
# validating


class _Checker:
    """One walk over a document: the normalised copy, and every problem found on the way. With
    `lookups`, what the rules name (campaigns, their buttons, segments) must exist."""

    def __init__(self, session: Session, *, lookups: bool, segment_id: int | None = None) -> None:
        self.session, self.lookups, self.segment_id = session, lookups, segment_id
        self.problems: list[FieldProblem] = []
        self.leaves = 0

    def problem(self, field: str, text: str) -> None:
        self.problems.append(FieldProblem(field, text))

    def node(self, doc: Any, path: str, depth: int = 1) -> dict | None:
        if not isinstance(doc, dict) or not doc:
            self.problem(path, 'must be an object with one rule, e.g. {"tag": "vip"}; got ' + _shown(doc))
            return None
        if depth > MAX_DEPTH:
            self.problem(path, f"nests deeper than the limit of {MAX_DEPTH} levels")
            return None
        if "attribute" in doc:
            return self.attribute(doc, path)
        unknown = [k for k in doc if k not in KINDS]
        if unknown:
            for key in unknown:
                self.problem(f"{path}.{key}", f"is not a rule; a rule is one of: {', '.join(KINDS)}")
            return None
        if len(doc) != 1:
            self.problem(path, f"must have exactly one rule; got {len(doc)}: {', '.join(map(str, doc))}")
            return None
        (kind, value), = doc.items()
        if kind in ("all", "any"):
            return self.group(kind, value, f"{path}.{kind}", depth)
        if kind == "not":
            inner = self.node(value, f"{path}.not", depth + 1)
            return None if inner is None else {"not": inner}
        self.count_leaf()
        return getattr(self, kind)(value, f"{path}.{kind}")

    def count_leaf(self) -> None:
        self.leaves += 1
        if self.leaves == MAX_LEAVES + 1:
            self.problem("rules", f"have more than {MAX_LEAVES} rules; the limit is {MAX_LEAVES}")

    def group(self, kind: str, items: Any, path: str, depth: int) -> dict | None:
        if not isinstance(items, list) or not items:
            self.problem(path, f"must be a non-empty list of rules; got {_shown(items)}")
            return None
        parts = [self.node(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items)]
        return None if any(p is None for p in parts) else {kind: parts}

    def attribute(self, doc: dict, path: str) -> dict | None:
        extra = [k for k in doc if k not in ("attribute", *ATTRIBUTE_TESTS)]
        for key in extra:
            self.problem(f"{path}.{key}",
                         f"is not part of an attribute rule (attribute plus one of {', '.join(ATTRIBUTE_TESTS)})")
        tests = [k for k in ATTRIBUTE_TESTS if k in doc]
        if len(tests) != 1:
            self.problem(path, f"an attribute rule needs exactly one of {', '.join(ATTRIBUTE_TESTS)}; got {len(tests)}")
        name = self.attribute_name(doc["attribute"], f"{path}.attribute")
        self.count_leaf()
        if extra or len(tests) != 1:
            return None
        test, value = tests[0], doc[tests[0]]
        if test == "equals":
            value = self.value(value, f"{path}.equals")
        elif test == "exists":
            if not isinstance(value, bool):
                self.problem(f"{path}.exists", f"must be true or false; got {_shown(value)}")
                value = None
        elif not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
            self.problem(f"{path}.in", f"must be a list of 1 to {MAX_IN_VALUES} values; got {_shown(value)}")
            value = None
        else:
            value = [self.value(v, f"{path}.in[{i}]") for i, v in enumerate(value)]
            value = None if None in value else list(dict.fromkeys(value))
        return None if value is None or name is None else {"attribute": name, test: value}

    def text(self, value: Any, path: str, limit: int) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(path, f"must be non-empty text; got {_shown(value)}")
            return None
        value = value.strip()
        if len(value) > limit:
            self.problem(path, f"is {len(value)} characters; the limit is {limit}")
            return None
        return value

    def attribute_name(self, name: Any, path: str) -> str | None:
        """A name an attribute can have (worker.contacts.attributes): anything else matches nobody."""
        name = name.strip() if isinstance(name, str) else name
        why = attribute_name_problem(name)
        if why:
            self.problem(path, f"{_shown(name)} {why}")
            return None
        return name

    def value(self, value: Any, path: str) -> str | None:
        """An attribute's value as stored: text, trimmed (a number is taken as its text)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.problem(path, f"must be text; got {_shown(value)}")
            return None
        value = value.strip()
        if len(value) > ATTRIBUTE_VALUE_MAX_CHARS:
            self.problem(path, f"is {len(value)} characters; the limit is {ATTRIBUTE_VALUE_MAX_CHARS}")
            return None
        return value

    def tag(self, value: Any, path: str) -> dict | None:
        """A tag as stored (worker.contacts.attributes): `VIP ` is `vip`."""
        tag, why = normalize_tag(value)
        if why:
            self.problem(path, f"{why}; got {_shown(value)}")
            return None
        return {"tag": tag}

    def identifier(self, value: Any, path: str, what: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ID_MAX:
            self.problem(path, f"must be a {what} id (a whole number from 1); got {_shown(value)}")
            return None
        return value

    def _result(self, kind: str, value: Any, path: str) -> dict | None:
        allowed = ("campaign", "button") if kind == "tapped" else ("campaign",)
        if not isinstance(value, dict):
            self.problem(path, f'must be an object like {{"campaign": 12}}; got {_shown(value)}')
            return None
        for key in (k for k in value if k not in allowed):
            self.problem(f"{path}.{key}", f"is not part of a {kind} rule (it takes: {', '.join(allowed)})")
        campaign_id = self.identifier(value.get("campaign"), f"{path}.campaign", "campaign")
        button = None
        if "button" in value:
            button = self.text(value["button"], f"{path}.button", BUTTON_ID_MAX_CHARS)
        if campaign_id is None or any(k not in allowed for k in value) or ("button" in value and button is None):
            return None
        if self.lookups:
            campaign = self.session.get(Campaign, campaign_id)
            if campaign is None:
                self.problem(f"{path}.campaign", f"no campaign {campaign_id}")
                return None
            ids = [b.get("id") for b in _buttons(campaign)]
            if button is not None and button not in ids:
                self.problem(f"{path}.button", f"campaign {campaign_id} has no button {button!r}; its buttons are: "
                             + (", ".join(map(str, ids)) or "none"))
                return None
        return {kind: {"campaign": campaign_id, **({"button": button} if button is not None else {})}}

    def received(self, value: Any, path: str) -> dict | None:
        return self._result("received", value, path)

    def delivered(self, value: Any, path: str) -> dict | None:
        return self._result("delivered", value, path)

    def read(self, value: Any, path: str) -> dict | None:
        return self._result("read", value, path)

    def tapped(self, value: Any, path: str) -> dict | None:
        return self._result("tapped", value, path)

    def window(self, value: Any, path: str) -> dict | None:
        if value not in WINDOW_STATES:
            self.problem(path, f'must be "open" or "closed"; got {_shown(value)}')
            return None
        return {"window": value}

    def _within(self, kind: str, value: Any, path: str) -> dict | None:
        try:
            parse_duration(value, path)
        except MessageInvalid as exc:
            self.problems.extend(exc.problems)
            return None
        return {kind: "".join(value.split()).lower()}   # as written: "7d" stays "7d"

    def last_inbound_within(self, value: Any, path: str) -> dict | None:
        return self._within("last_inbound_within", value, path)

    def last_sent_within(self, value: Any, path: str) -> dict | None:
        return self._within("last_sent_within", value, path)

    def segment(self, value: Any, path: str) -> dict | None:
        segment_id = self.identifier(value, path, "segment")
        if segment_id is None:
            return None
        if self.segment_id is not None and segment_id == self.segment_id:
            self.problem(path, f"segment {segment_id} cannot be part of its own rules")
            return None
        if self.lookups:
            if self.session.get(Segment, segment_id) is None:
                self.problem(path, f"no segment {segment_id}")
                return None
            if self.segment_id is not None:
                chain = _path_to(self.session, segment_id, self.segment_id)
                if chain:
                    self.problem(path, f"segment {segment_id} refers back to segment {self.segment_id} "
                                 f"(through {' -> '.join(map(str, chain))}): a segment cannot contain itself")
                    return None
        return {"segment": segment_id}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _buttons(campaign: Campaign) -> list[dict]:
    buttons = (campaign.template or {}).get("buttons") if isinstance(campaign.template, dict) else None
    return [b for b in buttons or [] if isinstance(b, dict)]


def references(rules: Any) -> set[int]:
    """The segment ids a document names (at any depth), whatever else is wrong with it."""
    found: set[int] = set()
    stack = [rules]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("segment")
            if isinstance(ref, int) and not isinstance(ref, bool):
                found.add(ref)
            stack.extend(v for k, v in node.items() if k in COMBINATORS)
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _path_to(session: Session, start: int, target: int) -> list[int]:
    """The chain of segments from `start` to `target` through their rules, or [] if none."""
    parents: dict[int, int | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        if current == target:
            chain = []
            node: int | None = current
            while node is not None:
                chain.append(node)
                node = parents[node]
            return chain[::-1]
        rules = session.scalar(sa.select(Segment.rules).where(Segment.id == current))
        for ref in sorted(references(rules)):
            if ref not in parents:
                parents[ref] = current
                queue.append(ref)
    return []


def _check(session: Session, rules: Any, *, lookups: bool, segment_id: int | None = None) -> dict:
    checker = _Checker(session, lookups=lookups, segment_id=segment_id)
    doc = checker.node(rules, "rules")
    if checker.problems or doc is None:
        raise RulesInvalid(checker.problems[:MAX_PROBLEMS] or [FieldProblem("rules", "are invalid")])
    return doc


def validate(session: Session, rules: Any, *, segment_id: int | None = None) -> dict:
    """The normalised rules, or RulesInvalid naming every problem by its path. The campaigns,
    buttons and segments they name must exist; with `segment_id` (the segment being saved) they
    must not refer to it, directly or through other segments."""
    return _check(session, rules, lookups=True, segment_id=segment_id)


# ---------------------------------------------------------------------------------------------
# compiling


def _delivered() -> sa.ColumnElement[bool]:
    # as the campaign's funnel counts it (scheduler.report): a read receipt implies delivery
    reached = (DeliveryStatus.DELIVERED.value, DeliveryStatus.READ.value)
    return sa.or_(Message.delivered_at.is_not(None), Message.read_at.is_not(None), Message.delivery_status.in_(reached))


def _read() -> sa.ColumnElement[bool]:
    return sa.or_(Message.read_at.is_not(None), Message.delivery_status == DeliveryStatus.READ.value)


_RESULT_OF: dict[str, Callable[[], sa.ColumnElement[bool]]] = {
    "received": lambda: Message.sent_at.is_not(None),
    "delivered": _delivered,
    "read": _read,
    "tapped": lambda: Message.reply_button_id.is_not(None),
}


class _Compiler:
    def __init__(self, session: Session, now: datetime) -> None:
        self.session, self.now = session, now
        self.leaves = 0

    def node(self, doc: dict, path: str, via: tuple[int, ...]) -> sa.ColumnElement[bool]:
        if "attribute" in doc:
            self.count_leaf()
            return self.attribute(doc)
        (kind, value), = doc.items()
        if kind == "all":
            return sa.and_(*(self.node(d, f"{path}.all[{i}]", via) for i, d in enumerate(value)))
        if kind == "any":
            return sa.or_(*(self.node(d, f"{path}.any[{i}]", via) for i, d in enumerate(value)))
        if kind == "not":
            return sa.not_(self.node(value, f"{path}.not", via))
        if kind == "segment":
            return self.segment(value, f"{path}.segment", via)
        self.count_leaf()
        if kind == "tag":
            return sa.exists().where(ContactTag.tag == value, ContactTag.phone == Contact.phone)
        if kind in RESULTS:
            # EXISTS, not `phone IN (SELECT ...)`: both are a semi-join over the campaign's rows by
            # (campaign_id, phone), but under `not` EXISTS is an anti-join where NOT IN, once the
            # campaign's phones outgrow work_mem, rescans the subquery for every contact (minutes)
            result = _RESULT_OF[kind]()
            if kind == "tapped" and "button" in value:
                result = Message.reply_button_id == value["button"]
            return sa.exists().where(Message.campaign_id == value["campaign"], Message.phone == Contact.phone, result)
        if kind == "window":
            open_ = self.since(Contact.last_inbound_at, self.now - SERVICE_WINDOW)
            return open_ if value == "open" else sa.not_(open_)
        column = Contact.last_inbound_at if kind == "last_inbound_within" else Contact.last_sent_at
        return self.since(column, self.now - parse_duration(value, f"{path}.{kind}"))

    def count_leaf(self) -> None:
        self.leaves += 1
        if self.leaves > MAX_EXPANDED_LEAVES:
            raise RulesInvalid([FieldProblem("rules", f"expand to more than {MAX_EXPANDED_LEAVES} rules through the "
                                                      "segments they use; simplify them")])

    @staticmethod
    def since(column: Any, at: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(column.is_not(None), column > at)

    @staticmethod
    def attribute(doc: dict) -> sa.ColumnElement[bool]:
        # `attributes ->> :name` on Postgres, `json_extract(attributes, :path)` on SQLite: the name
        # is a bound parameter (and only ever letters, digits and _: worker.contacts.attributes)
        value = Contact.attributes[doc["attribute"]].as_string()
        present = value.is_not(None)
        if "equals" in doc:
            return sa.and_(present, value == doc["equals"])
        if "in" in doc:
            return sa.and_(present, value.in_(doc["in"]))
        filled = sa.and_(present, value != "")
        return filled if doc["exists"] else sa.not_(filled)

    def segment(self, segment_id: int, path: str, via: tuple[int, ...]) -> sa.ColumnElement[bool]:
        if segment_id in via:
            chain = " -> ".join(map(str, (*via, segment_id)))
            raise RulesInvalid([FieldProblem(path, f"segments refer to each other in a circle ({chain})")])
        stored = self.session.get(Segment, segment_id)
        if stored is None:
            raise RulesInvalid([FieldProblem(path, f"no segment {segment_id}")])
        try:
            doc = validate(self.session, stored.rules)
        except RulesInvalid as exc:
            raise RulesInvalid([FieldProblem(path, f"segment {segment_id} ({stored.name}): {p}")
                                for p in exc.problems]) from None
        return self.node(doc, "rules", (*via, segment_id))


def condition(session: Session, rules: Any, *, now: datetime) -> sa.ColumnElement[bool]:
    """The rules as a predicate over `Contact` (validated first; `{"segment": N}` is expanded to
    that segment's stored rules). Opt-out is not part of it: `members` adds that."""
    return _Compiler(session, now).node(validate(session, rules), "rules", ())

# ---------------------------------------------------------------------------------------------
# describing


class _Words:
    def __init__(self, session: Session) -> None:
        self.session = session

    def node(self, doc: dict, nested: bool = False) -> str:
        if "attribute" in doc:
            name = doc["attribute"]
            if "equals" in doc:
                return f"{name} is {doc['equals']}"
            if "in" in doc:
                return f"{name} is one of {', '.join(doc['in'])}"
            return f"{name} is {'set' if doc['exists'] else 'not set'}"
        (kind, value), = doc.items()
        if kind in ("all", "any"):
            text = f" {'and' if kind == 'all' else 'or'} ".join(self.node(d, nested=True) for d in value)
            return f"({text})" if nested and len(value) > 1 else text
        if kind == "not":
            return f"not ({self.node(value)})"
        if kind == "tag":
            return f"has tag {value}"
        if kind in RESULTS:
            return self.result(kind, value)
        if kind == "window":
            return "has an open 24-hour window" if value == "open" else "has no open 24-hour window"
        if kind == "last_inbound_within":
            return f"wrote to us within {value}"
        if kind == "last_sent_within":
            return f"was sent a message within {value}"
        stored = self.session.get(Segment, value)
        return f"is in segment {value} ({stored.name if stored else 'deleted'})"

    def result(self, kind: str, value: dict) -> str:
        campaign = self.session.get(Campaign, value["campaign"])
        named = f"campaign {value['campaign']} ({campaign.name if campaign else 'deleted'})"
        if kind == "tapped":
            button = value.get("button")
            if button is None:
                return f"tapped any button in {named}"
            titles = {b.get("id"): b.get("title") for b in _buttons(campaign)} if campaign else {}
            return f'tapped "{titles.get(button) or button}" in {named}'
        return {"received": f"received {named}", "delivered": f"had {named} delivered", "read": f"read {named}"}[kind]


def describe(session: Session, rules: Any) -> str:
    """The rules in words: `city is Riyadh and has tag vip and tapped "Reserve" in campaign 12 (Spring sale)`.
    What they name may have been deleted since (it says so); a malformed document raises RulesInvalid."""
    return _Words(session).node(_check(session, rules, lookups=False))
