"""What a campaign's retry offers, each with its count first: the console's retry page.

The same selections and rules as `buttoncast retry` (scheduler.retry): the messages refused when
sending (`--status failed`) and the late failures of each class (`--reason CLASS`, worker.failures),
never anyone opted out now. Counting every class is one grouped query over the campaign's late
failures (the partial index ix_messages_campaign_late), plus the plan of the ones refused when sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.campaigns import get_campaign
from scheduler.retry import LATE_FAILED, RetrySelection, plan_retry
from worker.failures import FailureClass
from worker.models import Message
from worker.sending.gate import OPTED_OUT_NOW
from worker.status import CampaignStatus, MessageStatus

AT_SEND = "failed"   # the choice of the messages refused when sending (status `failed`)


@dataclass(frozen=True)
class RetryChoice:
    """One group a retry can resend: refused when sending (`reason` None) or one class of late failures."""

    reason: FailureClass | None
    resendable: int                     # what a retry would send again now
    held_back: int = 0                  # matched, but the person is opted out now: never sent again
    by_error_code: dict[str, int] = field(default_factory=dict)

    @property
    def value(self) -> str:
        """The retry form's value for this choice."""
        return self.reason.value if self.reason is not None else AT_SEND

    @property
    def total(self) -> int:
        return self.resendable + self.held_back

    @property
    def needs_force(self) -> bool:
        """Resending cannot help (undeliverable) or was refused by the person (opted_out): the
        service refuses it unless forced, and a forced `opted_out` reaches only who opted back in."""
        return self.reason is not None and self.reason.resend_needs_force

    @property
    def meaning(self) -> str:
        return self.reason.advice if self.reason is not None else "refused by WhatsApp when sending"


@dataclass(frozen=True)
class RetryChoices:
    campaign_id: int
    campaign_status: str
    at_send: RetryChoice
    later: list[RetryChoice]            # every class, the most frequent first (none: count 0)
    refused: str | None = None          # why nothing of this campaign can be sent again (cancelled)

    @property
    def later_total(self) -> int:
        return sum(c.total for c in self.later)

    @property
    def resendable(self) -> int:
        """What a retry of every group could send again now."""
        return self.at_send.resendable + sum(c.resendable for c in self.later)


def retry_choices(session: Session, campaign_id: int) -> RetryChoices:
    """Every group a retry of this campaign can resend, with its count (a missing campaign raises
    CampaignNotFound); nothing is changed."""
    status = get_campaign(session, campaign_id).status
    if status == CampaignStatus.CANCELLED.value:
        refused = f"campaign {campaign_id} is cancelled: its messages are not sent again"
        return RetryChoices(campaign_id, status, RetryChoice(None, 0), _late_choices(session, campaign_id), refused)
    plan = plan_retry(session, RetrySelection(campaign_id=campaign_id, status=MessageStatus.FAILED))
    at_send = RetryChoice(None, plan.total, plan.opted_out, plan.by_error_code)
    return RetryChoices(campaign_id, status, at_send, _late_choices(session, campaign_id))


def _late_choices(session: Session, campaign_id: int) -> list[RetryChoice]:
    """Late failures by class: (resendable, held back because opted out now), in one query."""
    rows = session.execute(
        sa.select(Message.failure_class, sa.func.count(), sa.func.count(sa.case((OPTED_OUT_NOW, 1))))
        .where(Message.campaign_id == campaign_id, Message.failure_class.is_not(None), *LATE_FAILED)
        .group_by(Message.failure_class)
    ).all()
    counts = {klass: (total - held, held) for klass, total, held in rows}
    choices = [RetryChoice(klass, *counts.get(klass.value, (0, 0))) for klass in FailureClass]
    return sorted(choices, key=lambda c: -c.total)
