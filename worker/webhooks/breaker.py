"""The late-failure circuit breaker: pause a campaign before the number's quality rating pays for it.

Checked only when a `failed` status webhook is applied to a campaign message (worker.webhooks.apply),
in the same transaction. Two rules:
- any 131048 (quality_risk: spam rate limit) pauses the campaign at once;
- the late failures among the campaign's last `window` sent messages (by sent_at, through the
  index ix_messages_campaign_sent: one short backward index scan) pass `rate`. The share is of
  the whole window, so a young campaign with fewer sent messages is not paused by its first few
  failures; `rate` 0 turns this rule off.
Only messages sent since the campaign was last resumed count (campaigns.late_breaker_since), so a
resumed campaign gets a fresh window instead of pausing again on the failures that paused it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker import metrics
from worker.failures import CODE_TITLES, FailureClass, classify
from worker.models import Campaign, Message
from worker.sending import store
from worker.settings import AUTO_PAUSE_LATE_FAILURE_RATE, AUTO_PAUSE_LATE_WINDOW, Settings
from worker.status import CampaignStatus

log = logging.getLogger("buttoncast.breaker")
_ACTIVE = (CampaignStatus.RUNNING.value, CampaignStatus.SCHEDULED.value)


@dataclass(frozen=True)
class LatePolicy:
    """AUTO_PAUSE_LATE_WINDOW sent messages, AUTO_PAUSE_LATE_FAILURE_RATE share of them."""

    window: int = AUTO_PAUSE_LATE_WINDOW
    rate: float = AUTO_PAUSE_LATE_FAILURE_RATE

    @classmethod
    def from_settings(cls, settings: Settings) -> "LatePolicy":
        return cls(window=settings.auto_pause_late_window, rate=settings.auto_pause_late_failure_rate)


DEFAULT_POLICY = LatePolicy()


def recent_late_failures(session: Session, campaign_id: int, *, window: int,
                         since: datetime | None = None) -> dict[str, int]:
    """Late failures by class among the campaign's last `window` sent messages (sent after `since`)."""
    recent = (
        sa.select(Message.failure_class)
        .where(Message.campaign_id == campaign_id, Message.sent_at.is_not(None))
        .order_by(Message.sent_at.desc())
        .limit(window)
    )
    if since is not None:
        recent = recent.where(Message.sent_at >= since)
    sub = recent.subquery()
    rows = session.execute(
        sa.select(sub.c.failure_class, sa.func.count()).where(sub.c.failure_class.is_not(None))
        .group_by(sub.c.failure_class)
    ).all()
    return {klass: count for klass, count in rows}


def check(session: Session, campaign_id: int, *, message_id: int, code: str | None,
          policy: LatePolicy = DEFAULT_POLICY) -> str | None:
    """After a late failure of `message_id`: pause its campaign if a rule trips. Returns the
    pause reason when this call paused it, else None. Never commits."""
    row = session.execute(
        sa.select(Campaign.status, Campaign.late_breaker_since,
                  sa.select(Message.sent_at).where(Message.id == message_id).scalar_subquery().label("sent_at"))
        .where(Campaign.id == campaign_id)
    ).one_or_none()
    if row is None or row.status not in _ACTIVE:
        return None
    since = row.late_breaker_since
    if since is not None and (row.sent_at is None or row.sent_at < since):
        return None   # sent before the operator resumed the campaign: already judged
    reason = None
    if classify(code) is FailureClass.QUALITY_RISK:
        reason = (f"vendor code {code} quality_risk ({CODE_TITLES[code or '131048']}) on message {message_id}: "
                  "the number's quality rating is falling; look at the campaign before resuming")
        rule = "quality_risk"
    elif policy.rate > 0:
        by_class = recent_late_failures(session, campaign_id, window=policy.window, since=since)
        failed = sum(by_class.values())
        if failed > policy.rate * policy.window:
            classes = ", ".join(f"{k} {n}" for k, n in sorted(by_class.items(), key=lambda kv: -kv[1]))
            reason = (f"late failures: {failed} of the last {policy.window} sent messages failed after sending "
                      f"({failed / policy.window:.0%} > AUTO_PAUSE_LATE_FAILURE_RATE {policy.rate:g}): {classes}")
            rule = "late_failure_rate"
    if reason is None or not store.pause_campaign(session, campaign_id, reason=reason):
        return None
    metrics.AUTO_PAUSES.labels(rule).inc()
    log.warning("campaign %s paused by the late-failure breaker: %s", campaign_id, reason)
    return reason
