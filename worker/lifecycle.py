"""A campaign's status: the one table of what may follow what, and every UPDATE that changes it.

    draft -> scheduled -> running -> completed
                 |  ^        |  ^        |
                 v  |        v  |        v
                   paused ----+      running again (reopen: its messages went back to the queue)
    (and cancelled from scheduled, running or paused; cancelled is final)

Who moves a campaign:
- an operator (`campaign schedule/pause/resume/cancel`, the API, the console) through `transition`;
- the dispatcher: `start_due` (scheduled -> running) and `complete_finished` (running -> completed);
- beat's series step: `finish_series` (scheduled -> completed, a recurring campaign past `--until`);
- the send path and the late-failure breaker: `pause_by_engine` (a failure streak, a vendor refusal);
- `reopen` (completed -> running) when messages of a completed campaign go back to the queue: an
  operator's `retry`, or a late answer that returns a message the sweep had marked `unknown`
  (and the sweep's `reopen_unfinished` when that answer raced the completion, issue 25). An
  operator cannot reopen a campaign by `resume`: completed is final for them.

Every change is a guarded UPDATE (`... WHERE status = <what we saw>`), so an operator's pause and
the dispatcher's "completed" can race without one silently overwriting the other: the loser sees
the new status and is judged against the table again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.audit import record_audit
from worker.errors import ButtoncastError
from worker.fit import fit
from worker.models import Campaign, Message, utcnow
from worker.status import CampaignStatus, MessageStatus

S = CampaignStatus
TRANSITIONS: dict[CampaignStatus, frozenset[CampaignStatus]] = {
    S.DRAFT: frozenset({S.SCHEDULED}),
    S.SCHEDULED: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED, S.COMPLETED}),   # -> completed: a series' end
    S.RUNNING: frozenset({S.PAUSED, S.COMPLETED, S.CANCELLED}),
    S.PAUSED: frozenset({S.RUNNING, S.SCHEDULED, S.CANCELLED}),
    S.COMPLETED: frozenset({S.RUNNING}),   # reopen() only: never an operator's resume
    S.CANCELLED: frozenset(),
}
#: transitions only the engine makes (`reopen`); `transition` refuses them to everyone else
ENGINE_ONLY: frozenset[tuple[CampaignStatus, CampaignStatus]] = frozenset({(S.COMPLETED, S.RUNNING),
                                                                          (S.SCHEDULED, S.COMPLETED)})
#: the campaign is still being served: the send path and the breaker pause only these
ACTIVE = (S.RUNNING.value, S.SCHEDULED.value)
#: messages that keep a running campaign from completing
#: a campaign with any of these is not done; `held` (an A/B test's rest, waiting for the winner) included
UNFINISHED = (MessageStatus.PENDING.value, MessageStatus.QUEUED.value, MessageStatus.SENDING.value,
              MessageStatus.HELD.value)
_TRANSITION_RETRIES = 3


class CampaignNotFound(ButtoncastError):
    def __init__(self, campaign_id: int) -> None:
        super().__init__(f"no campaign {campaign_id}")
        self.campaign_id = campaign_id


def operator_may(current: CampaignStatus, wanted: CampaignStatus) -> bool:
    return wanted in TRANSITIONS[current] and (current, wanted) not in ENGINE_ONLY


class IllegalTransition(ButtoncastError):
    """A status change the lifecycle does not allow; says from where, to where, and what is allowed."""

    def __init__(self, campaign_id: int, current: str, wanted: str) -> None:
        now = CampaignStatus(current)
        allowed = sorted(s.value for s in TRANSITIONS.get(now, frozenset()) if operator_may(now, s))
        hint = ", ".join(allowed) if allowed else f"nothing: {current} is final"
        super().__init__(f"campaign {campaign_id} is {current}; it cannot become {wanted} (from {current} it can become: {hint})")
        self.campaign_id, self.current, self.wanted, self.allowed = campaign_id, current, wanted, allowed


class Executes(Protocol):
    """A Session or a Connection: the send path records outcomes on either."""

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any: ...


def load(session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None:
        raise CampaignNotFound(campaign_id)
    return campaign


def transition(session: Session, campaign_id: int, to: CampaignStatus, *, actor: str | None = None, **values: Any) -> Campaign:
    """Move a campaign to `to` if the table allows it from its current status; set `values` too.

    With an `actor` (an API key, a console person), the change is written to the audit trail in the
    same transaction."""
    for _ in range(_TRANSITION_RETRIES):
        current = load(session, campaign_id).status
        if not operator_may(CampaignStatus(current), to):
            raise IllegalTransition(campaign_id, current, to.value)
        changed = session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.status == current)
            .values(status=to.value, updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed == 1:
            record_audit(session, actor, f"campaign.{to.value}", "campaign", campaign_id, from_status=current)
            return load(session, campaign_id)
    raise ButtoncastError(f"campaign {campaign_id} kept changing status; try again")


def start_due(session: Session, now: datetime) -> list[int]:
    """scheduled -> running for every campaign whose time has come (the dispatcher's tick).

    Not a series (its runs start, scheduler.series) nor a campaign whose audience is still being
    resolved into recipients (scheduler.audience): it starts at the tick after the last member."""
    return list(session.execute(
        sa.update(Campaign)
        .where(Campaign.status == S.SCHEDULED.value, Campaign.scheduled_at <= now, Campaign.series_every_s.is_(None),
               sa.or_(Campaign.audience.is_(None), Campaign.audience_resolved_at.is_not(None)))
        .values(status=S.RUNNING.value, started_at=sa.func.coalesce(Campaign.started_at, now), updated_at=now)
        .returning(Campaign.id)
        .execution_options(synchronize_session=False)
    ).scalars().all())


def complete_finished(session: Session, now: datetime) -> list[int]:
    """running -> completed for every campaign with no message left to send (the dispatcher's tick)."""
    busy = sa.select(Message.id).where(Message.campaign_id == Campaign.id, Message.status.in_(UNFINISHED)).exists()
    return list(session.execute(
        sa.update(Campaign)
        .where(Campaign.status == S.RUNNING.value, ~busy)
        .values(status=S.COMPLETED.value, finished_at=now, updated_at=now)
        .returning(Campaign.id)
        .execution_options(synchronize_session=False)
    ).scalars().all())


def reopen_unfinished(session: Executes, now: datetime, *, completed_since: datetime) -> list[int]:
    """completed -> running for every campaign completed since `completed_since` that has a message
    left to send (issue 25). `complete_finished` and a late answer that puts an `unknown` message
    back in the queue (`reopen` in the same transaction) can commit at the same moment, each
    without seeing the other's write: the campaign ends completed with a queued message that the
    dispatcher, serving running campaigns only, would never publish. The sweep closes that race."""
    busy = sa.select(Message.id).where(Message.campaign_id == Campaign.id, Message.status.in_(UNFINISHED)).exists()
    return list(session.execute(
        sa.update(Campaign)
        .where(Campaign.status == S.COMPLETED.value, Campaign.finished_at >= completed_since,
               Campaign.series_every_s.is_(None), busy)
        .values(status=S.RUNNING.value, finished_at=None, updated_at=now)
        .returning(Campaign.id)
        .execution_options(synchronize_session=False)
    ).scalars().all())


def finish_series(session: Executes, series_id: int, now: datetime) -> bool:
    """scheduled -> completed for a series whose last run has started (`--until` passed)."""
    done = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == series_id, Campaign.status == S.SCHEDULED.value, Campaign.series_every_s.is_not(None))
        .values(status=S.COMPLETED.value, finished_at=now, series_next_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    return done == 1


def pause_by_engine(session: Executes, campaign_id: int, *, reason: str) -> bool:
    """running/scheduled -> paused with the reason shown to operators (a failure streak, a vendor
    refusal, the late-failure breaker). False when it was not active (already paused, say)."""
    done = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status.in_(ACTIVE))
        .values(status=S.PAUSED.value, pause_reason=fit(Campaign.pause_reason, reason), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    return done == 1


def reopen(session: Executes, campaign_id: int, now: datetime) -> bool:
    """completed -> running, so the dispatcher serves the messages that went back to the queue.
    False when the campaign was not completed (it is still running, or paused, or cancelled)."""
    done = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == S.COMPLETED.value)
        .values(status=S.RUNNING.value, finished_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    return done == 1
