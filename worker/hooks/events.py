"""The events a hook can subscribe to, and the exact JSON body a receiver gets for one.

Body (keys sorted, no spaces; the same bytes on every attempt and on redelivery):
    {"created": "<ISO 8601 UTC>", "data": {...}, "id": "evt_<32 hex>", "type": "<event>"}
`data` always names the message (`message_id`, `campaign_id`, `phone`) when the event is about one,
plus what the event adds (see docs/hooks.md). The event id is the receiver's dedupe key.
"""

from __future__ import annotations

import enum
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from worker.errors import FieldProblem


class HookEvent(str, enum.Enum):
    MESSAGE_SENT = "message.sent"             # the vendor accepted the message (we have its wamid)
    MESSAGE_FAILED = "message.failed"         # final failure: at send time, or reported later by the vendor
    MESSAGE_DELIVERED = "message.delivered"   # the vendor's delivery receipt
    MESSAGE_READ = "message.read"             # the vendor's read receipt
    BUTTON_TAPPED = "button.tapped"           # the recipient tapped a button of the message
    CONTACT_OPTED_OUT = "contact.opted_out"   # a contact opted out (keyword, button or operator)


EVENT_NAMES: tuple[str, ...] = tuple(e.value for e in HookEvent)
EVENT_ID_PREFIX = "evt_"


def new_event_id() -> str:
    """A unique event id (`evt_` + 32 hex): the same for every endpoint and every attempt."""
    return EVENT_ID_PREFIX + uuid.uuid4().hex


def parse_events(text: str | list[str] | tuple[str, ...], field: str = "events") -> tuple[list[str], list[FieldProblem]]:
    """`message.sent,button.tapped` (or a list) -> the sorted distinct names, and any problems."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    problems = [FieldProblem(field, f"unknown event {n!r}; events are {', '.join(EVENT_NAMES)}")
                for n in names if n not in EVENT_NAMES]
    if not names:
        problems.append(FieldProblem(field, f"name at least one event: {', '.join(EVENT_NAMES)}"))
    return sorted(set(names) & set(EVENT_NAMES)), problems


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def render_body(*, event_id: str, event_type: str, created: datetime, data: dict[str, Any],
                message: dict[str, Any] | None) -> bytes:
    """The request body for one outbox row. `message`: the message's identity columns (immutable
    once written), joined in at delivery time so the send path's insert stays small."""
    merged = dict(message or {})
    merged.update(data or {})
    doc = {"id": event_id, "type": event_type, "created": iso(created), "data": merged}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
