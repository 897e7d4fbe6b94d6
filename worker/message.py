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
# International format, digits only. E.164 allows at most 15 digits; fewer than 8 is no real number.
PHONE_MIN_DIGITS = 8
PHONE_MAX_DIGITS = 15

_PHONE_SEPARATORS = re.compile(r"[\s\-().]")


def normalize_phone(raw: Any, field_name: str = "phone") -> str:
    """Strip `+`, spaces, dashes, dots and parentheses; return digits or raise MessageInvalid."""
    problem = phone_problem(raw, field_name)
    if problem:
        raise MessageInvalid([problem])
    return _PHONE_SEPARATORS.sub("", str(raw).strip()).removeprefix("+")


def phone_problem(raw: Any, field_name: str = "phone") -> FieldProblem | None:
    if raw is None or not isinstance(raw, (str, int)) or isinstance(raw, bool):
        return FieldProblem(field_name, "is required (a phone number in international format)")
    text = str(raw).strip()
    if not text:
        return FieldProblem(field_name, "is empty; a phone number in international format is required")
    digits = _PHONE_SEPARATORS.sub("", text)
    if digits.startswith("+"):
        digits = digits[1:]
    if not digits.isascii() or not digits.isdigit():
        return FieldProblem(
            field_name, f"{text!r} has characters other than digits, '+', spaces and dashes"
        )
    if len(digits) < PHONE_MIN_DIGITS:
        return FieldProblem(
            field_name, f"{text!r} has {len(digits)} digits; at least {PHONE_MIN_DIGITS} are required"
        )
    if len(digits) > PHONE_MAX_DIGITS:
        return FieldProblem(
            field_name, f"{text!r} has {len(digits)} digits; the limit is {PHONE_MAX_DIGITS}"
        )
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
    return None


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
        found: list[FieldProblem] = []
        for name, value, limit, required in (
            ("header_text", self.header_text, HEADER_TEXT_MAX_CHARS, False),
            ("body_text", self.body_text, BODY_TEXT_MAX_CHARS, True),
            ("footer_text", self.footer_text, FOOTER_TEXT_MAX_CHARS, False),
        ):
            p = _text_problem(name, value, limit, required)
            if p:
                found.append(p)
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
    ) -> "ButtonMessage":
        """Validate everything at once; raise MessageInvalid listing every problem."""
        problems: list[FieldProblem] = []
        p = phone_problem(phone)
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
        return cls(phone=normalize_phone(phone), content=content)

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
