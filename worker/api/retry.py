"""`POST /v1/retry`: requeue failed (or, knowingly, unknown) messages with the CLI's filters."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from scheduler.campaigns import parse_at
from scheduler.retry import RetryRefused, RetrySelection, retry_messages
from worker.access.keys import Principal, Scope
from worker.api.auth import require
from worker.api.deps import runtime
from worker.api.schemas import RetryIn, RetryOut
from worker.errors import FieldProblem, MessageInvalid
from worker.runtime import Runtime
from worker.status import MessageStatus

router = APIRouter(prefix="/v1", tags=["retry"])


@router.post("/retry", response_model=RetryOut)
def retry(body: RetryIn, principal: Principal = Depends(require(Scope.ADMIN)), rt: Runtime = Depends(runtime)) -> RetryOut:
    """Plan (grouped by last error code, or by vendor code for a `reason`) and requeue, unless `dry_run`.
    Sent messages are never requeued; `reason` resends late failures of that class (opted_out and
    undeliverable need `force`), with the rules and wording of `buttoncast retry --reason/--force`."""
    try:
        selection = RetrySelection(campaign_id=body.campaign_id, status=MessageStatus(body.status) if body.status else None,
                                   error_code=body.error_code, since=parse_at(body.since, "since"), message_id=body.message_id,
                                   reason=body.reason, force=body.force)
    except RetryRefused as exc:  # the filters do not make a selection: input to fix
        raise MessageInvalid([FieldProblem("body", str(exc))]) from None
    plan, result = retry_messages(rt, selection, dry_run=body.dry_run,
                                  accept_duplicates=body.accept_duplicates, actor=principal.actor)
    return RetryOut(selection=selection.describe(), dry_run=body.dry_run, matched=plan.total, by_error_code=plan.by_error_code,
                    unknown=plan.unknown, note=plan.campaign_note(), requeued=result.requeued if result else 0,
                    left_alone=result.left_alone if result else 0, campaign_reopened=bool(result and result.campaign_reopened),
                    held_back=plan.opted_out)
