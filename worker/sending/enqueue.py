"""Enqueue one message from another application.

(a) `enqueue_message(...)` for code that shares the database: validates, inserts, publishes,
    returns the message id; invalid input raises MessageInvalid and stores nothing.
(b) the Celery task `buttoncast.enqueue_message` (worker.sending.tasks) for apps that share only the
    broker: an invalid payload is stored as a `rejected` row and the task's result says so.
The same `idempotency_key` twice creates one message. A request that fails validation saves no
idempotent result (Stripe's rule): its `rejected` row is an audit record without the key, so the
corrected payload with the same key is stored and sent. Through the broker the key defaults to the
Celery task id, so a redelivered task (acks_late) returns the first result instead of a second row.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from worker.contacts.service import ensure_contacts
from worker.errors import FieldProblem, MessageInvalid
from worker.message import ButtonMessage
from worker.models import Message, MessageEvent, utcnow
from worker.queues import QUEUE_ADHOC
from worker.runtime import Runtime, get_runtime
from worker.sending.publish import hand_back_to_dispatcher, publish_send_tasks
from worker.status import MessageStatus

log = logging.getLogger("buttoncast.enqueue")
IDEMPOTENCY_KEY_MAX_CHARS = 200
PAYLOAD_FIELDS = ("phone", "body_text", "buttons", "header_text", "footer_text", "phone_number_id", "idempotency_key",
                  "require_open_window", "expires_at")
TASK_KEY_PREFIX = "celery-task:"   # keys derived from a task id never collide with an app's own keys


def _sender(phone_number_id: str | None, runtime: Runtime) -> str:
    sender = phone_number_id or runtime.settings.awal_phone_number_id
    if not sender:
        raise MessageInvalid([FieldProblem("phone_number_id", "is required: pass it or set AWAL_PHONE_NUMBER_ID")])
    if len(str(sender)) > 64:
        raise MessageInvalid([FieldProblem("phone_number_id", f"is {len(str(sender))} characters; the limit is 64")])
    return str(sender)


def _check_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
        raise MessageInvalid([FieldProblem("idempotency_key", f"must be a non-empty string of at most {IDEMPOTENCY_KEY_MAX_CHARS} characters")])
    return key


def check_expires_at(value: Any, field: str = "expires_at") -> datetime | None:
    """An aware datetime, or an ISO 8601 text with a UTC offset (the broker payload); None: no expiry."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise MessageInvalid([FieldProblem(field, f"{value!r} is not an ISO 8601 time, e.g. 2026-12-01T09:00:00+03:00")]) from None
    if not isinstance(value, datetime):
        raise MessageInvalid([FieldProblem(field, "must be an ISO 8601 time with a UTC offset")])
    if value.tzinfo is None:
        raise MessageInvalid([FieldProblem(field, "has no UTC offset; give e.g. 2026-12-01T09:00:00+03:00")])
    return value


def _check_flag(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MessageInvalid([FieldProblem(field, "must be true or false")])
    return value


def enqueue_message(
    *,
    phone: Any,
    body_text: Any,
    buttons: Any,
    header_text: Any = None,
    footer_text: Any = None,
    phone_number_id: str | None = None,
    idempotency_key: str | None = None,
    runtime: Runtime | None = None,
    require_open_window: bool = False,
    expires_at: datetime | str | None = None,
    actor: str | None = None,
    api_key_id: int | None = None,
) -> int:
    """Validate, store as `queued` and publish to the ad-hoc queue. Returns the message id.

    The send claim's gate (worker.sending.gate) holds it if the contact opted out (`suppressed`), if
    `require_open_window` and the contact's 24-hour window is closed, or once `expires_at` passed
    (`expired`). `actor` (e.g. an API key, "apikey:<prefix>:<name>") is recorded as the message's
    first event; `api_key_id`, the key that created it, decides who may read it (a `send` key reads
    only its own). The same `idempotency_key` with a different message is refused (MessageInvalid
    naming `idempotency_key`), as the HTTP API refuses it (422)."""
    runtime = runtime or get_runtime()
    problems: list[FieldProblem] = []
    try:
        message = ButtonMessage.build(phone=phone, body_text=body_text, buttons=buttons or [],
                                      header_text=header_text, footer_text=footer_text,
                                      judge_number=True, default_region=runtime.settings.default_country_code)
    except MessageInvalid as exc:
        problems.extend(exc.problems)
    for check in (lambda: _sender(phone_number_id, runtime), lambda: _check_key(idempotency_key),
                  lambda: check_expires_at(expires_at), lambda: _check_flag(require_open_window, "require_open_window")):
        try:
            check()
        except MessageInvalid as exc:
            problems.extend(exc.problems)
    if problems:
        raise MessageInvalid(problems)
    sender = _sender(phone_number_id, runtime)
    request = {"phone": message.phone, "content": message.content.as_dict(), "phone_number_id": sender,
               "require_open_window": bool(require_open_window), "expires_at": check_expires_at(expires_at)}

    existing = _by_key(runtime, idempotency_key, request)
    if existing is not None:
        return existing
    now = utcnow()
    try:
        with runtime.session_factory.begin() as session:
            row = Message(
                phone_number_id=sender, phone=message.phone, content=message.content.as_dict(),
                status=MessageStatus.QUEUED.value, idempotency_key=idempotency_key,
                created_at=now, queued_at=now, enqueued_at=now, updated_at=now,
                expires_at=check_expires_at(expires_at), require_open_window=bool(require_open_window),
                api_key_id=api_key_id,
            )
            ensure_contacts(session, [message.phone], at=now)
            session.add(row)
            session.flush()
            message_id = row.id
            if actor is not None:
                session.add(MessageEvent(message_id=message_id, at=now, from_status=None, to_status=row.status,
                                         reason="enqueued", actor=actor))
    except IntegrityError:
        existing = _by_key(runtime, idempotency_key, request)
        if existing is None:
            raise
        return existing
    publish_now(runtime, [message_id])
    return message_id


def publish_now(runtime: Runtime, message_ids: list[int]) -> None:
    """Publish ad-hoc sends; without a reachable broker the dispatcher picks them up instead."""
    if runtime.settings.embedded and not runtime.in_process_worker:
        hand_back_to_dispatcher(runtime.session_factory, message_ids)
        return
    try:
        publish_send_tasks(runtime.celery, message_ids, queue=QUEUE_ADHOC)
    except Exception as exc:  # noqa: BLE001 - broker down: the dispatcher republishes
        log.warning("broker unavailable (%s); message(s) %s left for the dispatcher", type(exc).__name__, message_ids)
        hand_back_to_dispatcher(runtime.session_factory, message_ids)


def _by_key(runtime: Runtime, key: str | None, request: Mapping[str, Any]) -> int | None:
    """The id of the message already made with `key`, if it is the same message as `request`;
    MessageInvalid if the key was used for a different one (never a silent answer for another message)."""
    if key is None:
        return None
    with runtime.session_factory() as session:
        row = session.execute(sa.select(Message.id, *(getattr(Message, f) for f in request))
                              .where(Message.idempotency_key == key)).first()
    if row is None:
        return None
    stored = dict(zip(request, row[1:]))
    if stored != dict(request):
        differs = ", ".join(f for f in request if stored[f] != request[f])
        problem = f"was already used for a different message (message {row.id} differs in {differs}); use a new key"
        raise MessageInvalid([FieldProblem("idempotency_key", problem + " for a new message")])
    return row.id


def task_idempotency_key(task_id: str | None) -> str | None:
    """The default key of a broker enqueue: its Celery task id, the same on every redelivery.
    A caller-chosen task id too long for the column is hashed (still stable, still unique)."""
    if not task_id:
        return None
    key = TASK_KEY_PREFIX + task_id
    if len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
        key = TASK_KEY_PREFIX + "sha256:" + hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()
    return key


def enqueue_payload(payload: Mapping[str, Any], runtime: Runtime | None = None, *,
                    default_key: str | None = None) -> dict[str, Any]:
    """The broker-only path: never raises for bad input; an invalid payload becomes a `rejected` row.

    `default_key` (the task's, see `task_idempotency_key`) is used when the payload names no key."""
    runtime = runtime or get_runtime()
    if not isinstance(payload, Mapping):
        payload = {}
        problems = [FieldProblem("payload", "must be a JSON object")]
    else:
        problems = [FieldProblem(k, "is not a known field") for k in payload if k not in PAYLOAD_FIELDS]
    if not problems:
        fields = {k: payload.get(k) for k in PAYLOAD_FIELDS}
        if fields["idempotency_key"] is None:
            fields["idempotency_key"] = default_key
        try:
            message_id = enqueue_message(**fields, runtime=runtime)
            return {"status": "queued", "message_id": message_id}
        except MessageInvalid as exc:
            problems = exc.problems
    return {"status": MessageStatus.REJECTED.value, "message_id": _store_rejected(runtime, payload, problems),
            "errors": [{"field": p.field, "problem": p.problem} for p in problems]}


def _store_rejected(runtime: Runtime, payload: Mapping[str, Any], problems: list[FieldProblem]) -> int:
    """Issue 12 item 5: the audit row of a rejected request never takes its idempotency key."""
    now = utcnow()
    content = {k: payload.get(k) for k in ("body_text", "buttons", "header_text", "footer_text") if k in payload}
    with runtime.session_factory.begin() as session:
        row = Message(
            phone_number_id=str(payload.get("phone_number_id") or runtime.settings.awal_phone_number_id or "")[:64],
            phone=str(payload.get("phone") or "")[:64], content=_jsonable(content), status=MessageStatus.REJECTED.value,
            last_error_code="validation_failed", last_error_message="; ".join(str(p) for p in problems),
            created_at=now, finished_at=now, updated_at=now,
        )
        session.add(row)
        session.flush()
        log.warning("rejected enqueue request: %s", row.last_error_message, extra={"message_id": row.id, "status": "rejected"})
        return row.id


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return {"unserializable": repr(value)[:500]}


#: the body of `POST /v1/messages`: the payload's fields; the key travels in the Idempotency-Key header
HTTP_FIELDS = tuple(f for f in PAYLOAD_FIELDS if f != "idempotency_key")


def enqueue_json(body: Any, *, idempotency_key: str | None, actor: str | None, runtime: Runtime | None = None,
                 api_key_id: int | None = None) -> int:
    """The HTTP API's path: like `enqueue_message`, plus unknown fields refused; invalid input raises
    MessageInvalid (field names and wording as the CLI's) and stores nothing."""
    if not isinstance(body, Mapping):
        raise MessageInvalid([FieldProblem("body", "must be a JSON object")])
    unknown = [FieldProblem(str(k), "is a header here: send Idempotency-Key" if k == "idempotency_key" else "is not a known field")
               for k in body if k not in HTTP_FIELDS]
    if unknown:
        raise MessageInvalid(unknown)
    return enqueue_message(**{k: body.get(k) for k in HTTP_FIELDS}, idempotency_key=idempotency_key,
                           runtime=runtime, actor=actor, api_key_id=api_key_id)
