"""`/v1/messages`: enqueue one message (Idempotency-Key), read one with its trail, list them (keyset)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse

from worker.access.keys import Principal, Scope
from worker.api.auth import require
from worker.api.deps import ID_MAX, MessageId, decode_cursor, encode_cursor, json_body, runtime
from worker.api.schemas import AttemptOut, EventOut, MessageCreated, MessageDetail, MessagePage, MessageSummary
from worker.runtime import Runtime
from worker.sending.enqueue import enqueue_json
from worker.sending.history import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, list_messages, message_history
from worker.sending.idempotency import IDEMPOTENCY_PROMISE, REPLAYED_HEADER, caller_key, run_once
from worker.status import MessageStatus

router = APIRouter(prefix="/v1/messages", tags=["messages"])


def _own(principal: Principal) -> int | None:
    """The key a read is limited to: a `send` key's own messages; None (every message) for wider scopes."""
    return principal.key_id if principal.reads_only_its_own else None


@router.post("", status_code=202, response_model=MessageCreated,
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageIn"}}}}})
def create_message(
    principal: Principal = Depends(require(Scope.SEND)),   # first: a key without the scope is refused unread
    body: Any = Depends(json_body),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", description=IDEMPOTENCY_PROMISE),
    rt: Runtime = Depends(runtime),
) -> JSONResponse:
    """Validate and enqueue one button message. The same Idempotency-Key and body give the first answer
    for 24 hours; a key is this API key's own (another key's same Idempotency-Key is another request)."""
    def enqueue(key: str | None) -> tuple[int, dict[str, Any]]:
        message_id = enqueue_json(body, idempotency_key=key, actor=principal.actor, runtime=rt,
                                  api_key_id=principal.key_id)
        return 202, {"id": message_id, "status": MessageStatus.QUEUED.value}

    outcome = run_once(rt, idempotency_key, body, principal.key_id, enqueue)
    return JSONResponse(outcome.response, status_code=outcome.status_code,
                        headers={REPLAYED_HEADER: "true"} if outcome.replayed else None)


@router.get("/{message_id}", response_model=MessageDetail)
def get_message(message_id: MessageId, principal: Principal = Depends(require(Scope.SEND)),
                rt: Runtime = Depends(runtime)) -> MessageDetail:
    """Status, vendor ids, delivery status, failure class, every attempt and every status change
    (404 for a message a `send` key did not create)."""
    with rt.read_sessions() as session:
        h = message_history(session, message_id, created_by_key=_own(principal))
        m = h.message
        return MessageDetail(**MessageSummary.of(m).model_dump(), content=m.content, last_request_id=m.last_request_id,
                             idempotency_key=caller_key(m.idempotency_key), queued_at=m.queued_at, not_before=m.not_before,
                             attempts=[AttemptOut.model_validate(a) for a in h.attempts],
                             events=[EventOut.model_validate(e) for e in h.events])


@router.get("", response_model=MessagePage)
def list_messages_route(
    phone: str | None = None,
    status: MessageStatus | None = None,
    campaign_id: int | None = Query(None, ge=1, le=ID_MAX),
    cursor: str | None = None,
    limit: int = Query(PAGE_SIZE_DEFAULT, ge=1, le=PAGE_SIZE_MAX),
    principal: Principal = Depends(require(Scope.SEND)),
    rt: Runtime = Depends(runtime),
) -> MessagePage:
    """Newest first, `limit` per page; follow `next_cursor` for older ones (a `send` key's own messages only)."""
    with rt.read_sessions() as session:
        rows = list_messages(session, phone=phone, status=status.value if status else None, campaign_id=campaign_id,
                             before_id=decode_cursor(cursor), limit=limit, default_region=rt.settings.default_country_code,
                             created_by_key=_own(principal))
        data = [MessageSummary.of(m) for m in rows]
    return MessagePage(data=data, next_cursor=encode_cursor(rows[-1].id) if len(rows) == limit else None)
