"""The button message value and every limit of the vendor's contract (shared/AWAL_API.md).

Lengths are counted in Unicode code points (assumption in the contract): Python's `len` on `str`
counts code points, so an emoji such as 🎉 counts as one. Nothing is ever truncated: a message that
breaks a limit raises `MessageInvalid` naming the field and the limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from worker import phone as phones
from worker.errors import FieldProblem, MessageInvalid

# --- The contract's limits, in one place ----------------------------------------------------
BODY_TEXT_MAX_CHARS = 1024
HEADER_TEXT_MAX_CHARS = 60
FOOTER_TEXT_MAX_CHARS = 60
BUTTONS_MIN = 1
BUTTONS_MAX = 3
BUTTON_ID_MAX_CHARS = 256
BUTTON_TITLE_MAX_CHARS = 20
# Assumptions (AWAL_API.md): button ids must differ, and titles must differ too, as on WhatsApp.
BUTTON_IDS_UNIQUE = True
BUTTON_TITLES_UNIQUE = True
# Which texts may span lines (assumption, AWAL_API.md is silent): WhatsApp shows newlines in the
# body; titles, header, footer and ids are one line. Issue 12 item 10: the one place to change it.
MULTILINE_FIELDS = frozenset({"body_text"})

# Issue 12 item 10: text WhatsApp cannot show is refused, never sent.
#: C0/C1 control characters (NUL included; Postgres also refuses NUL in text and JSON)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: ...the same, less the line breaks and tab a body may hold
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: bidi embeddings, overrides and isolates: they reorder what the reader sees (U+202E spoofing)
_BIDI_CONTROLS = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
#: anything a reader can see: not whitespace, not a zero-width or blank-looking filler
_VISIBLE = re.compile(r"[^\s\u00ad\u034f\u115f\u1160\u180e\u200b-\u200f\u2060-\u2064\u2800\u3164\ufeff\uffa0]")


def normalize_phone(raw: Any, field_name: str = "phone", *, default_region: str | None = None) -> str:
    """An input number -> E.164 digits without '+' (worker.phone, libphonenumber's rules)."""
    return phones.normalize_phone(raw, default_region=default_region, field_name=field_name)


def phone_problem(raw: Any, field_name: str = "phone", *, default_region: str | None = None) -> FieldProblem | None:
    """Why `raw` is not a number we send to (worker.phone); None when it is one."""
    return phones.phone_problem(raw, default_region=default_region, field_name=field_name)


def _unshowable(name: str, value: str) -> FieldProblem | None:
    """Issue 12 item 10: control characters, bidi overrides, or nothing visible at all."""
    control = (_CONTROL_MULTILINE if name in MULTILINE_FIELDS else _CONTROL).search(value)
    if control:
        where = "" if name in MULTILINE_FIELDS or control.group() not in "\r\n\t" else " (it must be one line)"
        return FieldProblem(name, f"contains the control character U+{ord(control.group()):04X} at position {control.start()}{where}; WhatsApp cannot show it")
    bidi = _BIDI_CONTROLS.search(value)
    if bidi:
        return FieldProblem(name, f"contains the bidi control U+{ord(bidi.group()):04X} at position {bidi.start()}; it would reorder what the reader sees")
    if not _VISIBLE.search(value):
        return FieldProblem(name, "has only whitespace or invisible (zero-width) characters; WhatsApp would show nothing")
    return None


def _text_problem(name: str, value: Any, limit: int, required: bool) -> FieldProblem | None:
    if value is None:
        return FieldProblem(name, "is required") if required else None
    if not isinstance(value, str):
        return FieldProblem(name, f"must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return FieldProblem(name, "contains an unpaired surrogate (half an emoji); it cannot be sent as UTF-8")
    if not value.strip():
        if required:
            return FieldProblem(name, "is empty or whitespace only; it is required")
        return FieldProblem(name, "is empty or whitespace only; leave it out instead")
    if len(value) > limit:
        return FieldProblem(name, f"is {len(value)} characters; the limit is {limit}")
    return _unshowable(name, value)


#: the texts of a message: (limit, required) each
TEXT_FIELDS = {"header_text": (HEADER_TEXT_MAX_CHARS, False), "body_text": (BODY_TEXT_MAX_CHARS, True),
               "footer_text": (FOOTER_TEXT_MAX_CHARS, False)}


def text_problems(texts: Mapping[str, Any]) -> list[FieldProblem]:
    """The problems of these texts (header_text, body_text, footer_text: any of them) alone. The
    rules of a message hold each text on its own, so a template's filled texts can be checked
    without the buttons, which do not change per recipient (scheduler.template)."""
    found = []
    for name, value in texts.items():
        limit, required = TEXT_FIELDS[name]
        p = _text_problem(name, value, limit, required)
        if p:
            found.append(p)
    return found


@dataclass(frozen=True)
class Button:
    id: str
    title: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title}


@dataclass(frozen=True)
class MessageContent:
    """What a button message says, without its recipient: shared by a campaign's messages."""

    body_text: str
    buttons: tuple[Button, ...]
    header_text: str | None = None
    footer_text: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, validate: bool = True) -> "MessageContent":
        """Build from a `message.json`-shaped mapping; raises MessageInvalid naming each field."""
        if not isinstance(data, Mapping):
            raise MessageInvalid([FieldProblem("message", "must be a JSON object")])
        problems: list[FieldProblem] = []
        known = {"body_text", "buttons", "header_text", "footer_text"}
        for key in data:
            if key not in known:
                problems.append(FieldProblem(str(key), f"is not a field of a button message ({', '.join(sorted(known))})"))
        raw_buttons = data.get("buttons")
        buttons: list[Button] = []
        if not isinstance(raw_buttons, list):
            problems.append(FieldProblem("buttons", f"must be a list of {BUTTONS_MIN} to {BUTTONS_MAX} buttons"))
        else:
            for i, b in enumerate(raw_buttons):
                if not isinstance(b, Mapping):
                    problems.append(FieldProblem(f"buttons[{i}]", "must be an object with id and title"))
                    continue
                buttons.append(Button(id=b.get("id"), title=b.get("title")))  # type: ignore[arg-type]
        content = cls(
            body_text=data.get("body_text"),  # type: ignore[arg-type]
            buttons=tuple(buttons),
            header_text=data.get("header_text"),
            footer_text=data.get("footer_text"),
        )
        if validate:
            problems.extend(content.problems(check_buttons_list=isinstance(raw_buttons, list)))
        if problems:
            raise MessageInvalid(problems)
        return content

    def problems(self, *, check_buttons_list: bool = True) -> list[FieldProblem]:
        """Every way this content breaks the contract (empty when it is valid)."""
        found = text_problems({"header_text": self.header_text, "body_text": self.body_text,
                               "footer_text": self.footer_text})
        if check_buttons_list and not (BUTTONS_MIN <= len(self.buttons) <= BUTTONS_MAX):
            found.append(
                FieldProblem("buttons", f"has {len(self.buttons)} buttons; {BUTTONS_MIN} to {BUTTONS_MAX} are allowed")
            )
        seen_ids: set[str] = set()
        seen_titles: set[str] = set()
        for i, b in enumerate(self.buttons):
            for p in (
                _text_problem(f"buttons[{i}].id", b.id, BUTTON_ID_MAX_CHARS, True),
                _text_problem(f"buttons[{i}].title", b.title, BUTTON_TITLE_MAX_CHARS, True),
            ):
                if p:
                    found.append(p)
            if BUTTON_IDS_UNIQUE and isinstance(b.id, str):
                if b.id in seen_ids:
                    found.append(FieldProblem(f"buttons[{i}].id", f"{b.id!r} repeats an earlier button's id; ids must be unique"))
                seen_ids.add(b.id)
            if BUTTON_TITLES_UNIQUE and isinstance(b.title, str):
                if b.title in seen_titles:
                    found.append(FieldProblem(f"buttons[{i}].title", f"{b.title!r} repeats an earlier button's title; titles must be unique"))
                seen_titles.add(b.title)
        return found

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"body_text": self.body_text, "buttons": [b.as_dict() for b in self.buttons]}
        if self.header_text is not None:
            out["header_text"] = self.header_text
        if self.footer_text is not None:
            out["footer_text"] = self.footer_text
        return out


@dataclass(frozen=True)
class ButtonMessage:
    """A validated button message to one recipient. Construct with `ButtonMessage.build`."""

    phone: str
    content: MessageContent = field()

    @classmethod
    def build(
        cls,
        *,
        phone: Any,
        body_text: Any,
        buttons: Iterable[Any],
        header_text: Any = None,
        footer_text: Any = None,
        judge_number: bool = False,
        default_region: str | None = None,
    ) -> "ButtonMessage":
        """Validate everything at once; raise MessageInvalid listing every problem.

        `judge_number` (where a number enters: enqueue, send) applies libphonenumber's rules
        (worker.phone, with `default_region` for a trunk-0 national number); without it the
        phone need only be in the vendor's wire format, as a stored, already judged number is.
        """
        problems: list[FieldProblem] = []
        if judge_number:
            number, p = phones.judge_phone(phone, default_region=default_region)
        else:
            p = phones.wire_phone_problem(phone)
            number = None if p else phones.wire_phone(phone)
        if p:
            problems.append(p)
        try:
            content = MessageContent.from_dict(
                {
                    "body_text": body_text,
                    "buttons": list(buttons) if buttons is not None else None,
                    **({"header_text": header_text} if header_text is not None else {}),
                    **({"footer_text": footer_text} if footer_text is not None else {}),
                }
            )
        except MessageInvalid as exc:
            problems.extend(exc.problems)
            content = None  # type: ignore[assignment]
        if problems:
            raise MessageInvalid(problems)
        return cls(phone=number, content=content)  # type: ignore[arg-type]

    def payload(self) -> dict[str, Any]:
        """The JSON body in the vendor's field order (phone, body_text, buttons, header, footer)."""
        return {"phone": self.phone, **self.content.as_dict()}

    def body_bytes(self) -> bytes:
        """Serialize once, compactly, UTF-8: these exact bytes are signed and sent."""
        return json.dumps(self.payload(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_button_spec(spec: str) -> dict[str, str]:
    """`id:Title` (as the CLI takes it) -> {"id": ..., "title": ...}."""
    if ":" not in spec:
        raise MessageInvalid([FieldProblem("--button", f"{spec!r} must be written id:Title")])
    button_id, title = spec.split(":", 1)
    return {"id": button_id, "title": title}
