"""Parse a webhook body into one of the event shapes we accept, or say exactly what is wrong.

Every assumption about the vendor's shapes lives here (AWAL_API.md, "Webhooks", and docs/webhooks.md):
- verification: `{"type": "verification", "challenge": "<s>"}`;
- `message.status.updated`: `data.message_id` and `data.status` (sent/delivered/read/failed) are
  required; the time is `data.timestamp`, else the top-level `timestamp`, else the receipt time;
  a failure reason may come as `data.error`, `data.errors[0]` (WhatsApp style) or `data.reason`;
- `message.received`: a button reply when `data.type` is one of BUTTON_REPLY_TYPES and a button is
  found as `data.button.{id,title}` (the sandbox), `data.interactive.button_reply.{id,title}` or
  `data.button.{payload,text}` (WhatsApp styles); the replied-to wamid is `data.context.message_id`
  (or `data.context.id`). Anything else received is an inbound message we record and ignore.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from worker.status import DeliveryStatus
from worker.webhooks.models import EventKind

STATUS_EVENT = "message.status.updated"
RECEIVED_EVENT = "message.received"
BUTTON_REPLY_TYPES = frozenset({"button_reply", "interactive", "button"})
STATUSES = frozenset(s.value for s in DeliveryStatus)
REASON_MAX_CHARS = 1000
WAMID_MAX_CHARS = 200   # webhook_events.vendor_message_id and messages.vendor_message_id
PHONE_MAX_DIGITS = 64   # webhook_events.phone
TEXT_MAX_CHARS = 4096   # an inbound text kept on the event for consent keywords (never stored apart from the body)


class ShapeError(ValueError):
    """The body is not JSON or not a shape we accept; the message says which field is wrong."""


@dataclass(frozen=True)
class Verification:
    challenge: str


@dataclass(frozen=True)
class Event:
    """An event to record (and, for status and reply kinds, to apply to a message)."""

    event_type: str
    kind: str
    dedupe_key: str
    occurred_at: datetime
    vendor_message_id: str | None = None  # our message's wamid (status) or the replied-to wamid
    phone: str | None = None
    status: str | None = None
    reason: str | None = None             # failed status: what the vendor said
    button_id: str | None = None
    button_title: str | None = None
    text: str | None = None               # message.received: the inbound text (consent keywords)


def parse_body(body: bytes, *, received_at: datetime) -> Verification | Event:
    """Decode and validate one webhook body. Raises ShapeError naming the problem."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ShapeError("body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ShapeError(f"body is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ShapeError(f"body is a JSON {type(doc).__name__}, expected an object")
    if b"\\u0000" in body.lower():  # JSON can carry NUL only as this escape
        try:
            doc = without_nul(doc)
        except RecursionError:
            raise ShapeError("body is nested too deeply") from None
    if doc.get("type") == "verification":
        challenge = doc.get("challenge")
        if not isinstance(challenge, str):
            raise ShapeError("verification needs a string 'challenge'")
        return Verification(challenge)
    event_type = doc.get("event")
    data = doc.get("data")
    if not isinstance(event_type, str):
        raise ShapeError("missing 'event' (expected message.status.updated or message.received)")
    if not isinstance(data, dict):
        raise ShapeError(f"{event_type}: 'data' must be an object")
    when = _time(data.get("timestamp"), "data.timestamp") or _time(doc.get("timestamp"), "timestamp") or received_at
    if event_type == STATUS_EVENT:
        return _status_event(data, when)
    if event_type == RECEIVED_EVENT:
        return _received_event(data, when, body)
    raise ShapeError(f"unknown event {event_type!r} (expected {STATUS_EVENT} or {RECEIVED_EVENT})")


def _status_event(data: dict[str, Any], when: datetime) -> Event:
    wamid = _text(data, "message_id", STATUS_EVENT) or _text(data, "messageId", STATUS_EVENT)
    if not wamid:
        raise ShapeError(f"{STATUS_EVENT}: missing data.message_id")
    _check_wamid(wamid, "data.message_id")
    status = _text(data, "status", STATUS_EVENT)
    if status not in STATUSES:
        raise ShapeError(f"{STATUS_EVENT}: data.status={status!r} is not one of {sorted(STATUSES)}")
    return Event(
        event_type=STATUS_EVENT, kind=EventKind.STATUS, dedupe_key=dedupe_key("status", wamid, status),
        occurred_at=when, vendor_message_id=wamid, phone=normalize_phone(data.get("recipient")),
        status=status, reason=_failure_reason(data) if status == DeliveryStatus.FAILED.value else None,
    )


def _received_event(data: dict[str, Any], when: datetime, body: bytes) -> Event:
    inbound_id = _text(data, "message_id", RECEIVED_EVENT)
    key = dedupe_key("received", inbound_id) if inbound_id else dedupe_key("body", body.decode("utf-8"))
    phone = normalize_phone(data.get("from"))
    button = _button(data) if data.get("type") in BUTTON_REPLY_TYPES else None
    if button is None:
        return Event(event_type=RECEIVED_EVENT, kind=EventKind.INBOUND, dedupe_key=key, occurred_at=when, phone=phone,
                     text=_inbound_text(data))
    context = data.get("context") if isinstance(data.get("context"), dict) else {}
    replied_to = _text(context, "message_id", "data.context") or _text(context, "id", "data.context")
    if replied_to:
        _check_wamid(replied_to, "data.context.message_id")
    if not replied_to and not phone:
        raise ShapeError(f"{RECEIVED_EVENT}: a button reply needs data.context.message_id or data.from")
    button_id, title = button
    return Event(
        event_type=RECEIVED_EVENT, kind=EventKind.REPLY, dedupe_key=key, occurred_at=when,
        vendor_message_id=replied_to or None, phone=phone, button_id=button_id, button_title=title,
    )


def _inbound_text(data: dict[str, Any]) -> str | None:
    """An inbound message's text: `data.body` (AWAL_API.md), else WhatsApp's `data.text.body`
    or a plain `data.text`; None when there is none (media, location...)."""
    text = data.get("text")
    for found in (data.get("body"), text.get("body") if isinstance(text, dict) else text):
        if isinstance(found, str):
            return found[:TEXT_MAX_CHARS]
    return None


def _button(data: dict[str, Any]) -> tuple[str, str | None] | None:
    """(id, title) of the tapped button in any accepted shape, or None when there is none."""
    interactive = data.get("interactive")
    candidates = [data.get("button")]
    if isinstance(interactive, dict):
        candidates.append(interactive.get("button_reply"))
    for found in candidates:
        if not isinstance(found, dict):
            continue
        button_id = found.get("id") if found.get("id") is not None else found.get("payload")
        title = found.get("title") if found.get("title") is not None else found.get("text")
        if isinstance(button_id, str) and button_id:
            title = title if isinstance(title, str) else (data.get("body") if isinstance(data.get("body"), str) else None)
            return button_id, title
    return None


def _check_wamid(wamid: str, field: str) -> None:
    if len(wamid) > WAMID_MAX_CHARS:
        raise ShapeError(f"{field} is {len(wamid)} characters; a message id has at most {WAMID_MAX_CHARS}")


def _failure_reason(data: dict[str, Any]) -> str:
    errors = data.get("errors")
    error = data.get("error")
    if error is None and isinstance(errors, list) and errors:
        error = errors[0]
    if error is None:
        error = data.get("reason")
    if isinstance(error, dict):
        code = error.get("code")
        text = error.get("message") or error.get("title") or error.get("details")
        error = ": ".join(str(part) for part in (code, text) if part is not None) or json.dumps(error)
    reason = str(error) if error is not None else "failed (the vendor gave no reason)"
    return reason[:REASON_MAX_CHARS]


def _text(obj: dict[str, Any], name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ShapeError(f"{where}: {name} must be a string, got {type(value).__name__}")
    return value.strip()


def _time(value: Any, field: str) -> datetime | None:
    """ISO 8601 (a trailing Z or an offset; naive means UTC) or Unix seconds, as aware UTC."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value)):
            return datetime.fromtimestamp(float(value), timezone.utc)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    raise ShapeError(f"{field}={value!r} is not an ISO 8601 time or Unix seconds")


def normalize_phone(value: Any) -> str | None:
    """Digits only, as messages.phone stores them ("+966 50-000" -> "96650000")."""
    if not isinstance(value, (str, int)):
        return None
    digits = re.sub(r"\D", "", str(value))
    if len(digits) > PHONE_MAX_DIGITS:
        raise ShapeError(f"phone {str(value)[:20]!r}... has {len(digits)} digits; at most {PHONE_MAX_DIGITS}")
    return digits or None


NUL_REPLACEMENT = "\ufffd"  # shown where the vendor sent U+0000


def without_nul(value: Any) -> Any:
    """Every string in a parsed body with U+0000 replaced by U+FFFD (issue 12 item 10).

    Postgres refuses NUL in text and JSON, so a signed event carrying one (a button title) would
    fail to be stored on every redelivery and the receiver would answer 503 for ever. The raw
    body is kept as received: JSON writes NUL as the escape `\\u0000`, which text columns take.
    """
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT) if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def dedupe_key(*parts: str) -> str:
    """sha256 hex of the parts that make an event unique: the vendor's retries share it."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
