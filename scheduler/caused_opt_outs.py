"""Opt-outs caused by a campaign: who stopped hearing from us because of its message.

An opt-out is this campaign's when the person did it themselves (a STOP reply, a tap on an opt-out
button) or WhatsApp reported they stopped marketing messages (a 131050 late failure), after this
campaign's message was sent to them and before any later message was sent to them: the campaign's
message was the last thing they got from us. "After" allows the vendor's clock (whole seconds, not
ours) a minute's difference. Operator opt-outs and imported lists are nobody's.

Both reads start from the opt-out events since the campaign started (few), each checked against its
recipient's message by (campaign, phone) (uq_messages_campaign_phone) and against later messages
to that phone (ix_messages_phone_sent): a million-recipient campaign costs what its opt-outs cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from scheduler.campaigns import get_campaign
from worker.contacts.service import OPT_OUT, SOURCE_BUTTON, SOURCE_KEYWORD, SOURCE_VENDOR_CODE
from worker.models import ContactEvent, Message
from worker.webhooks.apply import REPLY_CLOCK_SKEW_S as VENDOR_CLOCK_SKEW_S

#: one line for the campaign page: what "caused by this campaign" means
DEFINITION = ("Counted when a recipient replied STOP, tapped an opt-out button, or WhatsApp said they stopped "
              "marketing messages, after this campaign's message was sent to them and before any later one was.")
CAUSES = (SOURCE_KEYWORD, SOURCE_BUTTON, SOURCE_VENDOR_CODE)
PAGE_SIZE = 100
_HOW = {SOURCE_KEYWORD: "replied with a stop word", SOURCE_BUTTON: "tapped an opt-out button",
        SOURCE_VENDOR_CODE: "WhatsApp: stopped marketing messages"}


@dataclass(frozen=True)
class CausedOptOut:
    event_id: int
    phone: str
    at: datetime
    source: str
    reason: str | None
    message_id: int
    sent_at: datetime

    @property
    def how(self) -> str:
        return _HOW.get(self.source, self.source)


def _vendor_time_plus_skew(session: Session) -> sa.ColumnElement:
    """The opt-out's time as the vendor stamped it (whole seconds, its own clock), plus the skew
    allowed between its clock and ours: a STOP or a 131050 in the second of the send still counts."""
    if session.get_bind().dialect.name == "sqlite":   # times are stored as text there
        return sa.func.strftime("%Y-%m-%d %H:%M:%f", ContactEvent.at, f"+{VENDOR_CLOCK_SKEW_S:g} seconds")
    return ContactEvent.at + sa.literal(timedelta(seconds=VENDOR_CLOCK_SKEW_S), sa.Interval())


def _caused(session: Session, campaign_id: int, since: datetime) -> sa.Select:
    """Opt-out events caused by the campaign (see the module docstring), as rows of CausedOptOut."""
    later = aliased(Message)
    return (
        sa.select(ContactEvent.id, ContactEvent.phone, ContactEvent.at, ContactEvent.source, ContactEvent.reason,
                  Message.id, Message.sent_at)
        .join(Message, sa.and_(Message.campaign_id == campaign_id, Message.phone == ContactEvent.phone))
        .where(ContactEvent.action == OPT_OUT, ContactEvent.source.in_(CAUSES),
               ContactEvent.at >= since - timedelta(seconds=VENDOR_CLOCK_SKEW_S),
               Message.sent_at.is_not(None), Message.sent_at <= _vendor_time_plus_skew(session),
               ~sa.exists().where(later.phone == ContactEvent.phone, later.sent_at > Message.sent_at,
                                  later.sent_at <= ContactEvent.at))
    )


def _since(session: Session, campaign_id: int) -> datetime | None:
    """When the campaign started (nothing was sent before); None: it never started."""
    return get_campaign(session, campaign_id).started_at


def caused_count(session: Session, campaign_id: int) -> int:
    """How many recipients opted out because of this campaign (0 before it started)."""
    since = _since(session, campaign_id)
    if since is None:
        return 0
    caused = _caused(session, campaign_id, since).subquery()
    return session.scalar(sa.select(sa.func.count(sa.distinct(caused.c.phone)))) or 0


def caused_page(session: Session, campaign_id: int, *, after: int = 0, limit: int = PAGE_SIZE) -> list[CausedOptOut]:
    """One page of them in the order they came (by event id), after the event id `after`."""
    since = _since(session, campaign_id)
    if since is None:
        return []
    rows = session.execute(_caused(session, campaign_id, since).where(ContactEvent.id > after)
                           .order_by(ContactEvent.id).limit(limit)).all()
    return [CausedOptOut(*row) for row in rows]
