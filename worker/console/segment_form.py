"""The segment builder's rows, bound to the rules document of worker.contacts.rules and back.

A row is one condition (a rule kind and its inputs) with a "not" box; the rows are joined by
"match all" or "match any". Binding is this module's only job: a row with an input left empty
is named here in a marketer's words; whether the rules are valid (a campaign that exists, a
duration that parses) is the service's to say, and `row_problems` puts what it says next to the
row it is about. A document the rows cannot show (nesting) is edited as JSON only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from worker.errors import FieldProblem


@dataclass(frozen=True)
class Kind:
    value: str
    label: str
    inputs: tuple[str, ...]          # which of the row's inputs it uses
    value_label: str = ""            # what the "value" input is called for this kind
    placeholder: str = ""


KINDS = (
    Kind("attr_equals", "attribute is", ("attribute", "value"), "Value", "Riyadh"),
    Kind("attr_in", "attribute is one of", ("attribute", "value"), "Values (a comma between them)", "Riyadh, Jeddah"),
    Kind("attr_exists", "attribute is set", ("attribute",)),
    Kind("tag", "has tag", ("value",), "Tag", "vip"),
    Kind("received", "received campaign", ("campaign",)),
    Kind("delivered", "had campaign delivered", ("campaign",)),
    Kind("read", "read campaign", ("campaign",)),
    Kind("tapped", "tapped a button in campaign", ("campaign", "button")),
    Kind("window", "has an open 24-hour window", ()),
    Kind("last_inbound_within", "wrote to us within", ("value",), "Within (e.g. 7d)", "7d"),
    Kind("last_sent_within", "was sent a message within", ("value",), "Within (e.g. 7d)", "7d"),
    Kind("segment", "is in segment", ("segment",)),
)
KIND_BY_VALUE = {k.value: k for k in KINDS}
RESULT_KINDS = ("received", "delivered", "read", "tapped")
WITHIN_KINDS = ("last_inbound_within", "last_sent_within")
MATCHES = ("all", "any")
#: rows a form may post (the service's own limit on leaves is higher; a builder of 50 rows is a file's job)
MAX_ROWS = 50
_ROW_FIELD = re.compile(r"row-(\d{1,4})-kind")
_ROW_PATH = re.compile(r"rules\.(?:all|any)\[(\d+)\](?:\.not)?(?:\.(\w+))?(?:\.(\w+))?")
#: a rules path's last part, as the row's input is labelled
PART_WORDS = {"attribute": "Attribute", "equals": "Value", "in": "Values", "exists": "Attribute", "tag": "Tag",
              "campaign": "Campaign", "button": "Button", "segment": "Segment", "window": "Window",
              "last_inbound_within": "Within", "last_sent_within": "Within"}


@dataclass(frozen=True)
class Row:
    kind: str = "attr_equals"
    attribute: str = ""
    value: str = ""
    campaign: str = ""
    button: str = ""
    segment: str = ""
    negate: bool = False


@dataclass
class Bound:
    """What a builder form says: the rules (None when they cannot be made), the rows to show again,
    and the problems binding found (by row index, and for the form as a whole)."""

    rules: Any
    rows: list[Row]
    match: str = "all"
    source: str = "rows"
    json_text: str = ""
    representable: bool = True
    readable: bool = True            # False: the JSON typed could not be parsed
    row_problems: dict[int, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.row_problems and not self.general


def rows_of(form: Mapping[str, Any]) -> list[Row]:
    """The posted rows in their order (`row-<n>-kind` and its siblings; a removed row leaves a gap)."""
    indices = sorted({int(m.group(1)) for key in form for m in [_ROW_FIELD.fullmatch(str(key))] if m})
    return [Row(kind=_text(form, f"row-{i}-kind"), attribute=_text(form, f"row-{i}-attribute"),
                value=_text(form, f"row-{i}-value"), campaign=_text(form, f"row-{i}-campaign"),
                button=_text(form, f"row-{i}-button"), segment=_text(form, f"row-{i}-segment"),
                negate=form.get(f"row-{i}-not") == "on") for i in indices]


def _text(form: Mapping[str, Any], key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


def bind(form: Mapping[str, Any]) -> Bound:
    """The form's rules: from the rows, or from the JSON when the person edited it (`rules_source=json`)."""
    match = form.get("match") if form.get("match") in MATCHES else "all"
    if form.get("rules_source") == "json":
        return _from_json(_text(form, "rules_json"))
    rows = rows_of(form)
    bound = Bound(rules=None, rows=rows, match=str(match))
    if not rows:
        bound.general.append("Add at least one condition.")
    elif len(rows) > MAX_ROWS:
        bound.general.append(f"{len(rows)} conditions; the limit here is {MAX_ROWS} (write larger rules as JSON).")
    leaves = []
    for index, row in enumerate(rows[:MAX_ROWS]):
        leaf, missing = _leaf(row)
        if missing:
            bound.row_problems[index] = [missing]
        leaves.append(leaf)
    if bound.ok:
        bound.rules = {bound.match: leaves}
    bound.json_text = pretty(bound.rules) if bound.rules is not None else ""
    return bound


def _from_json(text: str) -> Bound:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return Bound(rules=None, rows=[], source="json", json_text=text, representable=False, readable=False,
                     general=[f"The JSON cannot be read: line {exc.lineno}, column {exc.colno}: {exc.msg}."])
    shown = rows_from_rules(doc)
    match, rows = shown if shown else ("all", [])
    return Bound(rules=doc, rows=rows, match=match, source="json", json_text=text, representable=shown is not None)


def _leaf(row: Row) -> tuple[dict | None, str | None]:
    """One row as a rule, or what is missing in words."""
    kind = KIND_BY_VALUE.get(row.kind)
    if kind is None:
        return None, "Choose a condition."
    if "attribute" in kind.inputs and not row.attribute:
        return None, "Enter the attribute's name (e.g. city)."
    if "value" in kind.inputs and not row.value:
        return None, {"tag": "Enter a tag.", "attr_in": "Enter one or more values, a comma between them."}.get(
            kind.value, "Enter how long ago, e.g. 7d." if kind.value in WITHIN_KINDS else "Enter a value.")
    if "campaign" in kind.inputs and not row.campaign.isdigit():
        return None, "Choose a campaign."
    if "segment" in kind.inputs and not row.segment.isdigit():
        return None, "Choose a segment."
    if kind.value == "attr_equals":
        leaf: dict = {"attribute": row.attribute, "equals": row.value}
    elif kind.value == "attr_in":
        values = [v.strip() for v in row.value.split(",") if v.strip()]
        if not values:
            return None, "Enter one or more values, a comma between them."
        leaf = {"attribute": row.attribute, "in": values}
    elif kind.value == "attr_exists":
        leaf = {"attribute": row.attribute, "exists": True}
    elif kind.value == "tag":
        leaf = {"tag": row.value}
    elif kind.value in RESULT_KINDS:
        leaf = {kind.value: {"campaign": int(row.campaign), **({"button": row.button} if kind.value == "tapped"
                                                                  and row.button else {})}}
    elif kind.value == "window":
        leaf = {"window": "open"}
    elif kind.value in WITHIN_KINDS:
        leaf = {kind.value: row.value}
    else:
        leaf = {"segment": int(row.segment)}
    return ({"not": leaf} if row.negate else leaf), None


def rows_from_rules(doc: Any) -> tuple[str, list[Row]] | None:
    """The rows that write `doc`, or None when rows cannot show it (nesting, or not rules at all)."""
    key, value = next(iter(doc.items())) if isinstance(doc, dict) and len(doc) == 1 else (None, None)
    if key in MATCHES and isinstance(value, list):
        match, items = key, value
    else:
        match, items = "all", [doc]
    if not items or len(items) > MAX_ROWS:
        return None
    rows = [_row(item) for item in items]
    return None if any(r is None for r in rows) else (match, rows)  # type: ignore[misc]


def _row(node: Any) -> Row | None:
    negate = isinstance(node, dict) and set(node) == {"not"}
    row = _leaf_row(node["not"] if negate else node)
    if row is None:
        return None
    if negate:   # "not (x is not set)" is "x is set"; "not (window closed)" is "window open"
        return replace(row, negate=not row.negate)
    return row


def _leaf_row(node: Any) -> Row | None:
    if not isinstance(node, dict) or not node:
        return None
    if "attribute" in node and isinstance(node["attribute"], str):
        name = node["attribute"]
        if set(node) == {"attribute", "equals"} and isinstance(node["equals"], (str, int, float)):
            return Row("attr_equals", attribute=name, value=str(node["equals"]))
        if set(node) == {"attribute", "in"} and isinstance(node["in"], list) and all(isinstance(v, (str, int, float))
                                                                                   for v in node["in"]):
            return Row("attr_in", attribute=name, value=", ".join(map(str, node["in"])))
        if set(node) == {"attribute", "exists"} and isinstance(node["exists"], bool):
            return Row("attr_exists", attribute=name, negate=not node["exists"])
        return None
    if len(node) != 1:
        return None
    (kind, value), = node.items()
    if kind == "tag" and isinstance(value, str):
        return Row("tag", value=value)
    if kind in RESULT_KINDS and isinstance(value, dict) and _is_id(value.get("campaign")) \
            and set(value) <= ({"campaign", "button"} if kind == "tapped" else {"campaign"}):
        button = value.get("button", "")
        return Row(kind, campaign=str(value["campaign"]), button=button) if isinstance(button, str) else None
    if kind == "window" and value in ("open", "closed"):
        return Row("window", negate=value == "closed")
    if kind in WITHIN_KINDS and isinstance(value, str):
        return Row(kind, value=value)
    if kind == "segment" and _is_id(value):
        return Row("segment", segment=str(value))
    return None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def pretty(rules: Any) -> str:
    return json.dumps(rules, indent=2, ensure_ascii=False)


def row_problems(problems: list[FieldProblem], bound: Bound) -> tuple[dict[int, list[str]], list[str], list[str]]:
    """The service's problems as (by row, about the name, about the rules as a whole), worded for
    the builder: `rules.all[1].tapped.button` -> row 1, "Button: campaign 12 has no button 'x'"."""
    by_row: dict[int, list[str]] = {}
    name: list[str] = []
    general: list[str] = []
    rows_shown = bound.source == "rows" or bound.representable
    for problem in problems:
        if problem.field == "name":
            name.append(problem.problem)
            continue
        hit = _ROW_PATH.match(problem.field) if rows_shown else None
        if hit and int(hit.group(1)) < len(bound.rows):
            part = hit.group(3) or hit.group(2)
            label = PART_WORDS.get(part or "", "")
            by_row.setdefault(int(hit.group(1)), []).append(f"{label}: {problem.problem}" if label else problem.problem)
        else:
            general.append(str(problem))
    return by_row, name, general
