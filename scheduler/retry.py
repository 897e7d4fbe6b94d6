"""Operator retry: put `failed` or `unknown` messages back in the queue, with the reason on record.

A retried message becomes `queued` with no task out (enqueued_at NULL) and no not-before time, so
the dispatcher publishes it on its next tick under the same rate limit and flow control as any
other. Nothing the vendor accepted is ever requeued: only `failed` and `unknown` rows qualify, and
never one with a recorded vendor messageId or a `sent` attempt. Attempt rows are kept; the attempts
counter (the retry budget) starts again from 0, and a MessageEvent by "operator" says why, with the
filter that selected it; the audit trail gets one row per retry, naming who asked (worker.audit).
Each batch is one conditional UPDATE that repeats the whole filter, so a message that changed
meanwhile (a late worker answer, a second operator) is left alone.

Late failures are the one exception, chosen by class (`--reason`, worker.failures): a message the
vendor accepted (status `sent`) and later reported `failed` was never delivered, so resending it
carries no duplicate risk. Its vendor ids, send time and delivery fields are cleared for the new
send; the old messageId stays in its `sent` attempt row and in the retry's MessageEvent, so the
audit trail shows both sends. `opted_out` and `undeliverable` are refused unless forced, and the
send gate still holds anyone opted out at send time.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from worker import lifecycle
from worker.audit import record_audit
from worker.errors import ButtoncastError
from worker.failures import FailureClass, describe_code
from worker.models import Attempt, Campaign, Message, MessageEvent, utcnow
from worker.runtime import Runtime
from worker.sending.gate import OPTED_OUT_NOW
from worker.status import CampaignStatus, DeliveryStatus, MessageStatus

log = logging.getLogger("buttoncast.retry")
ACTOR = "operator"
#: suppressed (worker.sending.gate) is retryable only once its contact is no longer opted out; the claim's
#: gate judges the window and the frequency cap again when it is sent
RETRYABLE = (MessageStatus.FAILED, MessageStatus.UNKNOWN, MessageStatus.SUPPRESSED)
RETRY_BATCH_SIZE = 500
NO_ERROR_CODE = "(no error code)"
DUPLICATE_WARNING = (
    "duplicates are possible: unknown messages were sent to the vendor without an answer, the vendor "
    "may already have delivered them, and retrying can deliver the same message twice to those recipients"
)


class RetryRefused(ButtoncastError):
    """The selection cannot be retried (a sent message, a cancelled campaign, ...); says why."""


class ForceNeeded(RetryRefused):
    """Late failures of a class that resending cannot help (or must not reach: opted_out) were asked
    for without `force`; `reason` says which, so each face words it for its reader."""

    def __init__(self, reason: FailureClass) -> None:
        super().__init__(f"--reason {reason.value} is refused: {reason.advice}; pass --force to resend anyway")
        self.reason = reason


@dataclass(frozen=True)
class RetrySelection:
    """Which messages to retry: one message, or a campaign's messages in one status (plus filters)."""

    campaign_id: int | None = None
    status: MessageStatus | None = None
    error_code: str | None = None
    since: datetime | None = None        # finished at or after (aware)
    message_id: int | None = None
    reason: FailureClass | None = None   # late failures of this class (sent, then a failed webhook)
    force: bool = False                  # resend a class that needs it (opted_out, undeliverable)

    def __post_init__(self) -> None:
        if (self.message_id is None) == (self.campaign_id is None):
            raise RetryRefused("give either a campaign (with --status or --reason) or one message")
        if self.reason is not None:
            self._check_reason()
            return
        if self.campaign_id is not None and self.status not in RETRYABLE:
            raise RetryRefused("--status must be failed, unknown or suppressed; sent messages are never requeued")
        if self.message_id is not None and (self.error_code or self.since):
            raise RetryRefused("--error-code and --since filter a campaign's messages, not one message")
        if self.since is not None and self.since.tzinfo is None:
            raise RetryRefused("--since needs a UTC offset, e.g. 2026-12-01T09:00:00+03:00")

    def _check_reason(self) -> None:
        if self.status is not None or self.error_code:
            raise RetryRefused("--reason selects late failures by class; do not combine it with --status or --error-code")
        if self.since is not None and self.since.tzinfo is None:
            raise RetryRefused("--since needs a UTC offset, e.g. 2026-12-01T09:00:00+03:00")

    def describe(self) -> str:
        if self.reason is not None:
            target = f"message {self.message_id}" if self.message_id is not None else f"campaign {self.campaign_id}"
            parts = [target, f"late failures {self.reason.value}" + (" (forced)" if self.force else "")]
            if self.since:
                parts.append(f"sent since {self.since.isoformat()}")
            return ", ".join(parts)
        if self.message_id is not None:
            return f"message {self.message_id}"
        parts = [f"campaign {self.campaign_id}", f"status {self.status.value}"]
        if self.error_code:
            parts.append(f"error code {self.error_code}")
        if self.since:
            parts.append(f"finished since {self.since.isoformat()}")
        return ", ".join(parts)

    def where(self, *, opted_out: bool = False) -> sa.ColumnElement[bool]:
        """The whole filter, repeated in every UPDATE so a concurrent change is never overwritten.
        `opted_out`: the same filter but for the messages held back because their contact opted out."""
        if self.reason is not None:
            return self._late_failure_where(opted_out=opted_out)
        statuses = [self.status.value] if self.status else [s.value for s in RETRYABLE]
        conditions = [
            Message.status.in_(statuses),
            # Belt and braces: whatever its status says, a message the vendor accepted stays put.
            Message.vendor_message_id.is_(None),
            ~sa.select(Attempt.id).where(Attempt.message_id == Message.id, Attempt.outcome == "sent").exists(),
            # Never to a person who said stop, whatever the status (worker.sending.gate would hold it anyway).
            OPTED_OUT_NOW if opted_out else ~OPTED_OUT_NOW,
        ]
        if self.message_id is not None:
            conditions.append(Message.id == self.message_id)
        else:
            conditions.append(Message.campaign_id == self.campaign_id)
        if self.error_code:
            conditions.append(Message.last_error_code == self.error_code)
        if self.since:
            conditions.append(Message.finished_at >= self.since)
        return sa.and_(*conditions)

    def _late_failure_where(self, *, opted_out: bool) -> sa.ColumnElement[bool]:
        """Sent, then reported failed (never delivered or read) with this class; never to a person
        opted out now (a forced `opted_out` resend reaches only those who opted back in)."""
        conditions = [
            *LATE_FAILED, Message.failure_class == self.reason.value,
            OPTED_OUT_NOW if opted_out else ~OPTED_OUT_NOW,
        ]
        if self.message_id is not None:
            conditions.append(Message.id == self.message_id)
        else:
            conditions.append(Message.campaign_id == self.campaign_id)
        if self.since:
            conditions.append(Message.sent_at >= self.since)
        return sa.and_(*conditions)


#: a late failure a `reason` retry may resend: sent, then reported failed, never delivered or read
LATE_FAILED = (
    Message.status == MessageStatus.SENT.value,
    Message.delivery_status == DeliveryStatus.FAILED.value,
    Message.delivered_at.is_(None), Message.read_at.is_(None),
)


@dataclass
class RetryPlan:
    """What a retry would do: how many, why (by last error code), and the campaign's situation."""

    selection: RetrySelection
    total: int = 0
    by_error_code: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    opted_out: int = 0                   # matched the status and filters, but their contact opted out: held
    campaign_id: int | None = None
    campaign_status: str | None = None

    @property
    def risks_duplicates(self) -> bool:
        return self.unknown > 0

    def campaign_note(self) -> str | None:
        """What the operator must know about the campaign for the requeued messages to go out."""
        if self.campaign_id is None or self.total == 0:
            return None
        status = self.campaign_status
        if status == CampaignStatus.COMPLETED.value:
            return f"campaign {self.campaign_id} is completed: it goes back to running so the dispatcher sends them"
        if status == CampaignStatus.PAUSED.value:
            return f"campaign {self.campaign_id} is paused: the messages wait until `buttoncast campaign resume {self.campaign_id}`"
        if status in (CampaignStatus.SCHEDULED.value, CampaignStatus.DRAFT.value):
            return f"campaign {self.campaign_id} is {status}: the messages go out once it runs"
        return None


@dataclass
class RetryResult:
    requeued: int = 0
    left_alone: int = 0                  # matched the plan but changed before the UPDATE reached them
    campaign_reopened: bool = False


def plan_retry(session: Session, selection: RetrySelection) -> RetryPlan:
    """Count what `selection` matches, grouped by last error code; refuse what may not be retried."""
    plan = RetryPlan(selection=selection)
    reason = selection.reason
    if reason is not None and reason.resend_needs_force and not selection.force:
        raise ForceNeeded(reason)
    if selection.message_id is not None and selection.reason is not None:
        _check_late_failure(session, selection.message_id, selection.reason)
        plan.campaign_id = session.scalar(sa.select(Message.campaign_id).where(Message.id == selection.message_id))
    elif selection.message_id is not None:
        _check_one_message(session, selection.message_id)
        plan.campaign_id = session.scalar(sa.select(Message.campaign_id).where(Message.id == selection.message_id))
    else:
        plan.campaign_id = selection.campaign_id
    if plan.campaign_id is not None:
        plan.campaign_status = session.scalar(sa.select(Campaign.status).where(Campaign.id == plan.campaign_id))
        if plan.campaign_status is None:
            raise RetryRefused(f"no campaign {plan.campaign_id}")
        if plan.campaign_status == CampaignStatus.CANCELLED.value:
            raise RetryRefused(f"campaign {plan.campaign_id} is cancelled: its messages are not sent again")
    code = Message.failure_code if selection.reason is not None else Message.last_error_code
    rows = session.execute(
        sa.select(Message.status, code, sa.func.count())
        .where(selection.where())
        .group_by(Message.status, code)
    ).all()
    codes: Counter[str] = Counter()
    for status, code, count in rows:
        codes[code or NO_ERROR_CODE] += count
        plan.total += count
        if status == MessageStatus.UNKNOWN.value:
            plan.unknown += count
    plan.by_error_code = dict(codes.most_common())
    plan.opted_out = session.scalar(
        sa.select(sa.func.count()).select_from(Message).where(selection.where(opted_out=True))) or 0
    return plan


def _check_late_failure(session: Session, message_id: int, reason: FailureClass) -> None:
    row = session.execute(
        sa.select(Message.status, Message.delivery_status, Message.failure_class).where(Message.id == message_id)
    ).one_or_none()
    if row is None:
        raise RetryRefused(f"no message {message_id}")
    status, delivery, klass = row
    if status != MessageStatus.SENT.value or delivery != DeliveryStatus.FAILED.value:
        raise RetryRefused(f"message {message_id} is {status} (delivery {delivery or '-'}); --reason resends only "
                           "messages the vendor accepted and later reported failed")
    if klass != reason.value:
        raise RetryRefused(f"message {message_id} failed late with class {klass}, not {reason.value}")


def _check_one_message(session: Session, message_id: int) -> None:
    row = session.execute(
        sa.select(Message.status, Message.vendor_message_id).where(Message.id == message_id)
    ).one_or_none()
    if row is None:
        raise RetryRefused(f"no message {message_id}")
    status, vendor_message_id = row
    if status == MessageStatus.SENT.value:
        raise RetryRefused(f"message {message_id} was sent (messageId {vendor_message_id}); sent messages are never requeued")
    if status not in {s.value for s in RETRYABLE}:
        raise RetryRefused(f"message {message_id} is {status}; only failed or unknown (or suppressed) messages can be retried")
    if session.scalar(sa.select(OPTED_OUT_NOW).where(Message.id == message_id)):
        raise RetryRefused(f"message {message_id} goes to a contact who opted out; it is requeued only after they opt back in")


def requeue(
    session_factory: sessionmaker[Session],
    selection: RetrySelection,
    *,
    batch_size: int = RETRY_BATCH_SIZE,
    now: datetime | None = None,
    actor: str = ACTOR,
    planned: int | None = None,
) -> RetryResult:
    """Requeue what `selection` matches, batch by batch; reopen a completed campaign with the first batch.

    The campaign is reopened in the same transaction as the first requeued batch, so the
    dispatcher never sees a running campaign with nothing to send (it would complete it again)
    nor queued messages in a completed campaign (it would never send them). The audit trail gets
    one row for the whole retry (who, which selection, `planned`: how many the plan counted), in
    that same transaction: no retry changes a message without it.
    """
    result = RetryResult()
    after_id = 0
    while True:
        with session_factory.begin() as session:
            batch = session.execute(
                sa.select(Message.id, Message.status, Message.attempts, Message.vendor_message_id, Message.failure_code)
                .where(selection.where(), Message.id > after_id)
                .order_by(Message.id)
                .limit(batch_size)
            ).all()
            if not batch:
                break
            after_id = batch[-1].id
            changed = _requeue_batch(session, selection, [row.id for row in batch], now or utcnow())
            result.requeued += len(changed)
            result.left_alone += len(batch) - len(changed)
            reopened = bool(changed) and not result.campaign_reopened and _reopen_campaign(session, selection, now or utcnow())
            result.campaign_reopened = result.campaign_reopened or reopened
            _record_events(session, selection, [row for row in batch if row.id in changed], reopened, actor)
            if changed and result.requeued == len(changed):   # the first batch that changed anything
                _record_audit(session, selection, actor, planned)
    log.info("retry (%s): %s requeued, %s changed meanwhile and left alone%s", selection.describe(),
             result.requeued, result.left_alone, "; campaign reopened" if result.campaign_reopened else "")
    return result


#: a resent late failure starts as a new send: the old ids stay in its attempt rows and event
_FRESH_SEND = dict(vendor_id=None, vendor_message_id=None, vendor_status=None, sent_at=None, delivery_status=None,
                   delivery_error=None, failure_code=None, failure_class=None, last_error_code=None,
                   last_error_message=None, last_request_id=None)


def _requeue_batch(session: Session, selection: RetrySelection, ids: list[int], now: datetime) -> set[int]:
    fresh = _FRESH_SEND if selection.reason is not None else {}
    return set(session.execute(
        sa.update(Message)
        .where(Message.id.in_(ids), selection.where())
        .values(status=MessageStatus.QUEUED.value, enqueued_at=None, not_before=None, claim_token=None,
                finished_at=None, attempts=0, queued_at=now, updated_at=now, **fresh)
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    ).scalars().all())


def _reopen_campaign(session: Session, selection: RetrySelection, now: datetime) -> bool:
    """completed -> running (guarded), so the dispatcher picks the requeued messages up."""
    campaign_id = selection.campaign_id
    if campaign_id is None and selection.message_id is not None:
        campaign_id = session.scalar(sa.select(Message.campaign_id).where(Message.id == selection.message_id))
    if campaign_id is None:
        return False
    done = lifecycle.reopen(session, campaign_id, now)
    if done:
        log.warning("campaign %s reopened (completed -> running) by an operator retry (%s)", campaign_id, selection.describe())
    return done


def _record_events(session: Session, selection: RetrySelection, rows: list[sa.Row], reopened: bool, actor: str) -> None:
    if not rows:
        return
    suffix = "; campaign reopened: completed -> running" if reopened else ""

    def resent(row: sa.Row) -> str:
        if selection.reason is None:
            return ""
        return f"; resent after late failure {describe_code(row.failure_code)} of messageId {row.vendor_message_id}"

    session.execute(sa.insert(MessageEvent), [
        dict(message_id=row.id, from_status=row.status, to_status=MessageStatus.QUEUED.value, actor=actor,
             reason=f"operator retry ({selection.describe()}){resent(row)}; retry budget reset "
                    f"(attempts counter was {row.attempts}){suffix}")
        for row in rows
    ])


def _record_audit(session: Session, selection: RetrySelection, actor: str, planned: int | None) -> None:
    detail = {"selection": selection.describe(), "planned": planned}
    if selection.reason is not None:
        detail.update(reason=selection.reason.value, forced=selection.force)
    elif selection.status is not None:
        detail["status"] = selection.status.value
    if selection.message_id is not None:
        record_audit(session, actor, "message.retried", "message", selection.message_id, **detail)
    else:
        record_audit(session, actor, "campaign.retried", "campaign", selection.campaign_id, **detail)


class DuplicatesNotAccepted(RetryRefused):
    """The selection holds `unknown` messages and the caller did not accept possible duplicates."""


def retry_messages(
    runtime: Runtime,
    selection: RetrySelection,
    *,
    dry_run: bool = False,
    accept_duplicates: bool = False,
    actor: str = ACTOR,
) -> tuple[RetryPlan, RetryResult | None]:
    """Plan, then (unless `dry_run` or nothing matched) requeue: the API's retry in one call.

    Retrying `unknown` messages needs `accept_duplicates` (the CLI asks, or takes --yes)."""
    with runtime.read_sessions() as session:
        plan = plan_retry(session, selection)
    if dry_run or plan.total == 0:
        return plan, None
    if plan.risks_duplicates and not accept_duplicates:
        raise DuplicatesNotAccepted(f"{plan.unknown} of the {plan.total} message(s) are unknown: {DUPLICATE_WARNING}; "
                                    "nothing requeued (accept the duplicates explicitly to retry them)")
    return plan, requeue(runtime.session_factory, selection, actor=actor, planned=plan.total)
