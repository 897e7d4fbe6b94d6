"""The one gate every send passes: consent, the 24-hour window, the frequency cap and expiry.

The rules are SQL conditions folded into the statements that already move a message: the send
task's claim (queued -> sending, worker.sending.store) and the dispatcher's claim (pending -> queued). So
an opt-out that arrives mid-campaign holds that person's next message at the last moment, and the
common case (nothing held) costs no extra round trip. Only when a claim did not take the row does
`hold` look at why, and end a barred message in a final status:
- `expired`: its expires_at has passed;
- `suppressed` with last_error_code `opted_out`, `window_closed` (require_open_window and the
  contact wrote to us more than 24 h ago, or never) or `frequency_cap` (a campaign message to a
  contact who already received MARKETING_FREQUENCY_CAP campaign messages in the period).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from worker.contacts.service import SERVICE_WINDOW
from worker.models import Contact, Message, MessageEvent, UTCDateTime, utcnow
from worker.settings import FrequencyCap
from worker.status import MessageStatus

OPTED_OUT, WINDOW_CLOSED, FREQUENCY_CAP, EXPIRED = "opted_out", "window_closed", "frequency_cap", "expired"
REASONS = (OPTED_OUT, WINDOW_CLOSED, FREQUENCY_CAP)
_EXPLAIN = {
    OPTED_OUT: "held: the contact opted out",
    WINDOW_CLOSED: "held: require_open_window and the contact's 24-hour window is closed",
    FREQUENCY_CAP: "held: the contact already received MARKETING_FREQUENCY_CAP campaign messages in the period",
    EXPIRED: "not sent before its expires_at",
}

_Q = MessageStatus.QUEUED.value
_NOW = sa.bindparam("p_now", type_=UTCDateTime())
_WINDOW_SINCE = sa.bindparam("p_window_since", type_=UTCDateTime())
_CAP_SINCE = sa.bindparam("p_cap_since", type_=UTCDateTime())
_CAP_COUNT = sa.bindparam("p_cap_count", type_=sa.Integer())
_Earlier = aliased(Message, name="earlier")

#: the contact of the message being claimed opted out
OPTED_OUT_NOW = sa.exists().where(Contact.phone == Message.phone, Contact.opted_out_at.is_not(None))
NOT_EXPIRED = sa.or_(Message.expires_at.is_(None), Message.expires_at > _NOW)
WINDOW_OK = sa.or_(
    Message.require_open_window.is_(False),
    sa.exists().where(Contact.phone == Message.phone, Contact.last_inbound_at > _WINDOW_SINCE),
)
#: campaign messages sent to this phone since the cap's period began
_CAP_SENT = (
    sa.select(sa.func.count()).select_from(_Earlier)
    .where(_Earlier.phone == Message.phone, _Earlier.campaign_id.is_not(None), _Earlier.sent_at >= _CAP_SINCE)
    .scalar_subquery()
)
UNDER_CAP = sa.or_(Message.campaign_id.is_(None), _CAP_SENT < _CAP_COUNT)


def conditions(*, capped: bool) -> list[sa.ColumnElement[bool]]:
    """What must hold for a message to be claimed; binds p_now, p_window_since (and the cap's)."""
    rules = [~OPTED_OUT_NOW, NOT_EXPIRED, WINDOW_OK]
    return rules + [UNDER_CAP] if capped else rules


@dataclass(frozen=True)
class Gate:
    """The gate's settings: the frequency cap (None: off). Opt-outs, windows and expiry always apply."""

    frequency_cap: FrequencyCap | None = None

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        return conditions(capped=self.frequency_cap is not None)

    def params(self, now: datetime) -> dict[str, object]:
        params: dict[str, object] = {"p_window_since": now - SERVICE_WINDOW}
        if self.frequency_cap:
            params.update(p_cap_since=now - timedelta(seconds=self.frequency_cap.period_s),
                          p_cap_count=self.frequency_cap.count)
        return params


NO_CAP = Gate()


def barred_reason(session: Session | sa.Connection, message_id: int, *, gate: Gate, now: datetime) -> str | None:
    """Why the gate bars a message now (EXPIRED or one of REASONS), or None when it does not."""
    row = session.execute(
        sa.select(Message.expires_at, Message.require_open_window, Message.campaign_id, Message.phone,
                  Contact.opted_out_at, Contact.last_inbound_at)
        .outerjoin(Contact, Contact.phone == Message.phone)
        .where(Message.id == message_id)
    ).one_or_none()
    if row is None:
        return None
    expires_at, require_window, campaign_id, phone, opted_out_at, last_inbound_at = row
    if expires_at is not None and expires_at <= now:
        return EXPIRED
    if opted_out_at is not None:
        return OPTED_OUT
    if require_window and (last_inbound_at is None or last_inbound_at <= now - SERVICE_WINDOW):
        return WINDOW_CLOSED
    cap = gate.frequency_cap
    if cap and campaign_id is not None:
        sent = session.execute(
            sa.select(sa.func.count()).select_from(Message).where(
                Message.phone == phone, Message.campaign_id.is_not(None),
                Message.sent_at >= now - timedelta(seconds=cap.period_s))
        ).scalar_one()
        if sent >= cap.count:
            return FREQUENCY_CAP
    return None


def hold(session: Session, message_id: int, *, gate: Gate, actor: str, from_status: str = _Q,
         now: datetime | None = None) -> str | None:
    """If the gate bars this message (still in `from_status`), end it `expired` or `suppressed`
    with the reason in last_error_code, and return the reason; else None (changes nothing)."""
    now = now or utcnow()
    reason = barred_reason(session, message_id, gate=gate, now=now)
    if reason is None:
        return None
    status = MessageStatus.EXPIRED if reason == EXPIRED else MessageStatus.SUPPRESSED
    done = session.execute(
        sa.update(Message)
        .where(Message.id == message_id, Message.status == from_status)
        .values(status=status.value, last_error_code=reason, last_error_message=_EXPLAIN[reason],
                claim_token=None, enqueued_at=None, not_before=None, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not done:
        return None
    session.add(MessageEvent(message_id=message_id, at=now, from_status=from_status, to_status=status.value,
                             reason=f"{reason}: {_EXPLAIN[reason]}", actor=actor))
    return reason


def dispatch_reason(gate: Gate) -> sa.ColumnElement:
    """Why the gate bars the row being dispatched (EXPIRED or a reason), NULL when it passes.
    Binds p_now and `gate.params(now)`."""
    whens = [
        (sa.and_(Message.expires_at.is_not(None), Message.expires_at <= _NOW), EXPIRED),
        (OPTED_OUT_NOW, OPTED_OUT),
        (~WINDOW_OK, WINDOW_CLOSED),
    ]
    if gate.frequency_cap is not None:
        whens.append((~UNDER_CAP, FREQUENCY_CAP))
    return sa.case(*whens, else_=sa.null())


def dispatch_values(reason: sa.ColumnElement) -> dict[str, sa.ColumnElement]:
    """For the dispatcher's pending -> queued claim: the columns it sets from `reason`
    (dispatch_reason, or a column holding it), so a picked recipient the gate bars becomes final
    (expired / suppressed with its reason) in the same UPDATE and is never published. The send
    claim checks again later."""
    held = reason.is_not(None)
    return {
        "status": sa.case((reason == EXPIRED, MessageStatus.EXPIRED.value),
                          (held, MessageStatus.SUPPRESSED.value), else_=_Q),
        "last_error_code": sa.func.coalesce(reason, Message.last_error_code),
        "last_error_message": sa.case(*((reason == r, _EXPLAIN[r]) for r in (EXPIRED, *REASONS)),
                                      else_=Message.last_error_message),
        "finished_at": sa.case((held, _NOW), else_=Message.finished_at),
        "enqueued_at": sa.case((held, sa.null()), else_=_NOW),
    }


def explain(reason: str) -> str:
    return _EXPLAIN[reason]
