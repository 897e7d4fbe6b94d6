"""What one recipient of a campaign receives: find recipients by the start of their phone number, and
the chosen one's filled message (`messages.content`, filled from their row at import), for the
console's review step and campaign page.

The search is a keyset over the (campaign_id, phone) unique index: a range of phones (digits only,
as stored: E.164 without '+') starting with what was typed, in phone order, `limit` at a time from
after the last one shown, so it costs the same on a campaign of 1,000 or 1,000,000 recipients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.template import VARIANTS_KEY
from worker.models import Message

MATCHES_DEFAULT = 8
MATCHES_MAX = 50
#: the longest phone a search can match (E.164: at most 15 digits)
PHONE_DIGITS_MAX = 15
_NOT_DIGITS = re.compile(r"\D+")


@dataclass(frozen=True)
class Match:
    message_id: int
    phone: str


@dataclass(frozen=True)
class Preview:
    """One recipient's message: `content` as it is sent (a held A/B recipient's is the default
    variant's) and, while held for the winner, every variant's (`alternatives`, letter -> message)."""

    message_id: int
    phone: str
    status: str
    variant: str | None
    content: dict[str, Any]
    alternatives: dict[str, dict[str, Any]] | None


def phone_digits(text: str) -> str:
    """What a person typed, as the digits a stored phone starts with ("+966 50-123" -> "96650123")."""
    return _NOT_DIGITS.sub("", text or "")[:PHONE_DIGITS_MAX]


def _next_prefix(digits: str) -> str:
    """The smallest text above every phone starting with `digits` ("9665" -> "9666", "59" -> "5:")."""
    return digits[:-1] + chr(ord(digits[-1]) + 1)


def find_by_phone(session: Session, campaign_id: int, typed: str, *, after_phone: str | None = None,
                  limit: int = MATCHES_DEFAULT) -> list[Match]:
    """The campaign's recipients whose phone starts with the digits of `typed`, in phone order, after
    `after_phone` (the last one of the previous page); none for a text without digits."""
    digits = phone_digits(typed)
    if not digits:
        return []
    query = (sa.select(Message.id, Message.phone)
             .where(Message.campaign_id == campaign_id, Message.phone >= digits, Message.phone < _next_prefix(digits))
             .order_by(Message.phone).limit(max(1, min(limit, MATCHES_MAX))))
    if after_phone:
        query = query.where(Message.phone > after_phone)
    return [Match(message_id, phone) for message_id, phone in session.execute(query)]


def preview(session: Session, campaign_id: int, phone: str | None = None) -> Preview | None:
    """What the recipient with exactly this `phone` receives, or without one the first recipient
    (in import order); None when there is no such recipient (or none yet: a segment's campaign
    has its recipients only once it starts)."""
    query = sa.select(Message.id, Message.phone, Message.status, Message.variant, Message.content,
                      Message.alternatives).where(Message.campaign_id == campaign_id)
    digits = phone_digits(phone or "")
    query = query.where(Message.phone == digits) if digits else query.order_by(Message.id).limit(1)
    row = session.execute(query).first()
    if row is None:
        return None
    content, alternatives = dict(row.content or {}), dict(row.alternatives) if row.alternatives else None
    if isinstance(content.get(VARIANTS_KEY), dict):   # filled with every variant, not yet given one
        alternatives = dict(content[VARIANTS_KEY])
        content = next(iter(alternatives.values()), {})
    return Preview(row.id, row.phone, row.status, row.variant, content, alternatives)
