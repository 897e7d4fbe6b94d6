"""`{{name}}` placeholders in a campaign's message, filled per recipient from the CSV's columns.

Placeholders may appear in header_text, body_text and footer_text only (button ids and titles are
what the recipient taps and what replies report back; they stay fixed). `{{ name }}` with spaces
is the same placeholder as `{{name}}`. Filling never truncates: the filled message is validated
against the vendor's limits by worker.message, and a row that breaks one is rejected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Mapping

from worker.errors import FieldProblem, MessageInvalid
from worker.message import MessageContent, text_problems

PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
FILLABLE_FIELDS = ("header_text", "body_text", "footer_text")
#: what a placeholder stands for when checking a template before any row is read: the shortest
#: filled text has at least one character per placeholder (empty values are rejected per row).
PROBE_VALUE = "x"


def placeholders_in(text: Any) -> list[str]:
    """Placeholder names in order of appearance (repeats kept)."""
    return PLACEHOLDER_RE.findall(text) if isinstance(text, str) else []


@dataclass(frozen=True)
class _Part:
    literal: str
    name: str | None  # None: the literal alone


def _compile(text: str) -> tuple[_Part, ...]:
    parts: list[_Part] = []
    pos = 0
    for match in PLACEHOLDER_RE.finditer(text):
        parts.append(_Part(text[pos:match.start()], match.group(1)))
        pos = match.end()
    parts.append(_Part(text[pos:], None))
    return tuple(parts)


class MessageTemplate:
    """A message.json with placeholders, checked once and compiled so that filling is cheap."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        check_template(data)
        self.data = dict(data)
        self._compiled = {f: _compile(data[f]) for f in FILLABLE_FIELDS if isinstance(data.get(f), str)}
        self.names: tuple[str, ...] = tuple(
            dict.fromkeys(n for f in FILLABLE_FIELDS for n in placeholders_in(data.get(f)))
        )
        # No placeholders: every recipient gets the same, already validated, content.
        self._constant = None if self.names else MessageContent.from_dict(self.data).as_dict()
        # json.dumps of a filled message, precompiled: only the filled texts are encoded per row.
        self._constant_json = None if self._constant is None else json.dumps(self._constant)
        self._json_parts = tuple((name, encode_basestring_ascii(name) + ": ",
                                  None if name in self._compiled else json.dumps(value))
                                 for name, value in self.data.items())

    def dumps(self, filled: Mapping[str, Any]) -> str:
        """`json.dumps(filled)` byte for byte (default separators, ASCII escapes), for a message
        `fill` returned: the import stores this text, and the constant parts are encoded once."""
        if self._constant_json is not None:
            return self._constant_json if filled is self._constant else json.dumps(filled)
        return "{" + ", ".join(key + (encode_basestring_ascii(filled[name]) if constant is None else constant)
                               for name, key, constant in self._json_parts) + "}"

    def fill(self, values: Mapping[str, str]) -> dict[str, Any]:
        """The filled message dict; MessageInvalid naming the field/variable if it breaks a rule."""
        if self._constant is not None:
            return self._constant
        problems = [
            FieldProblem(f"column {name!r}", f"is empty; {{{{{name}}}}} in the message needs a value")
            for name in self.names if not values.get(name)
        ]
        if problems:
            raise MessageInvalid(problems)
        filled = dict(self.data)
        texts = {}
        for field_name, parts in self._compiled.items():
            texts[field_name] = filled[field_name] = "".join(p.literal + (values[p.name] if p.name else "") for p in parts)
        # The vendor's limits, from worker.message, on every filled text; what has no placeholder
        # (the buttons, a constant footer) was checked once, in check_template.
        problems = text_problems(texts)
        if problems:
            raise MessageInvalid(problems)
        return filled


def check_template(data: Mapping[str, Any]) -> None:
    """Validate a message.json before any recipient is read; MessageInvalid lists every problem.

    Placeholders in buttons are refused; an empty `{{}}` is refused; the rest is validated with each
    placeholder standing for one character, so a template too long for every recipient fails here.
    """
    if not isinstance(data, Mapping):
        raise MessageInvalid([FieldProblem("message", "must be a JSON object")])
    problems: list[FieldProblem] = []
    for i, button in enumerate(data.get("buttons") or []):
        if isinstance(button, Mapping):
            for key in ("id", "title"):
                if placeholders_in(button.get(key)):
                    problems.append(FieldProblem(
                        f"buttons[{i}].{key}", "has a {{placeholder}}; placeholders are allowed in header_text, body_text and footer_text only"))
    for field_name in FILLABLE_FIELDS:
        if "" in placeholders_in(data.get(field_name)):
            problems.append(FieldProblem(field_name, "has an empty placeholder {{}}; write {{column_name}}"))
    probe = {k: (PLACEHOLDER_RE.sub(PROBE_VALUE, v) if k in FILLABLE_FIELDS and isinstance(v, str) else v)
             for k, v in data.items()}
    try:
        MessageContent.from_dict(probe)
    except MessageInvalid as exc:
        problems.extend(exc.problems)
    if problems:
        raise MessageInvalid(problems)


#: the key of a filled message that holds every variant's ({"variants": {"A": {...}, "B": {...}}}):
#: what an A/B test's import stores until scheduler.experiments.assign picks each recipient's
VARIANTS_KEY = "variants"


class VariantsTemplate:
    """An A/B test's variants filled together from one row: `fill` returns every variant's message
    ({"variants": {"A": ..., "B": ...}}), so a recipient may get any of them (the assignment comes
    after the import, scheduler.experiments). A row is refused when any variant cannot be filled
    for it (a missing value, a text over a limit): whichever it is given, nothing invalid is sent.
    The same interface as MessageTemplate (names, fill, dumps, data), so every import path takes it."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        variants = data[VARIANTS_KEY]
        self.data = {VARIANTS_KEY: dict(variants)}
        self._templates = {letter: MessageTemplate(message) for letter, message in variants.items()}
        self.names: tuple[str, ...] = tuple(dict.fromkeys(n for t in self._templates.values() for n in t.names))

    def fill(self, values: Mapping[str, str]) -> dict[str, Any]:
        problems = [FieldProblem(f"column {name!r}", f"is empty; {{{{{name}}}}} in the message needs a value")
                    for name in self.names if not values.get(name)]
        if problems:
            raise MessageInvalid(problems)
        filled: dict[str, Any] = {}
        for letter, template in self._templates.items():
            try:
                filled[letter] = template.fill(values)
            except MessageInvalid as exc:
                problems.extend(FieldProblem(f"variant {letter} {p.field}", p.problem) for p in exc.problems)
        if problems:
            raise MessageInvalid(problems)
        return {VARIANTS_KEY: filled}

    def dumps(self, filled: Mapping[str, Any]) -> str:
        return json.dumps(filled)


def compile_template(data: Mapping[str, Any]) -> "MessageTemplate | VariantsTemplate":
    """The template an import fills: one message, or an A/B test's variants (`variants_data`)."""
    if isinstance(data, Mapping) and VARIANTS_KEY in data and "body_text" not in data:
        return VariantsTemplate(data)
    return MessageTemplate(data)


def variants_data(template: Mapping[str, Any], variants: list | None) -> Mapping[str, Any]:
    """What a campaign's import fills: its message, or all its variants lettered A, B, C."""
    if not variants:
        return template
    return {VARIANTS_KEY: {chr(ord("A") + i): dict(v) for i, v in enumerate(variants)}}
