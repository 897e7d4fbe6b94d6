"""Statuses of messages and campaigns, as `str` enums (they are stored as their values)."""

from __future__ import annotations

import enum


class MessageStatus(str, enum.Enum):
    """Where a message is in its life. Final: sent, failed, unknown, cancelled, rejected, suppressed, expired."""

    PENDING = "pending"      # stored, waiting for the dispatcher (campaign recipients)
    HELD = "held"            # an A/B test's rest of the audience: waits for the winner (scheduler.experiments)
    QUEUED = "queued"        # a send task is on the broker, or will be once `not_before` passes
    SENDING = "sending"      # a worker claimed it and is talking to the vendor
    SENT = "sent"            # the vendor accepted it; ids recorded
    FAILED = "failed"        # permanent failure, or the retry budget ran out
    UNKNOWN = "unknown"      # sent, no answer: the vendor may have sent it; never resent on our own
    CANCELLED = "cancelled"  # its campaign was cancelled before it was sent
    REJECTED = "rejected"    # failed our own validation; never reached the vendor
    SUPPRESSED = "suppressed"  # held at claim time: opted out, window closed or frequency cap (last_error_code)
    EXPIRED = "expired"      # not sent before its expires_at

    @property
    def is_final(self) -> bool:
        return self in FINAL_MESSAGE_STATUSES

    def __str__(self) -> str:
        return self.value


FINAL_MESSAGE_STATUSES = frozenset(
    {
        MessageStatus.SENT,
        MessageStatus.FAILED,
        MessageStatus.UNKNOWN,
        MessageStatus.CANCELLED,
        MessageStatus.REJECTED,
        MessageStatus.SUPPRESSED,
        MessageStatus.EXPIRED,
    }
)


class CampaignStatus(str, enum.Enum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class DeliveryStatus(str, enum.Enum):
    """What the vendor's webhooks later say about a sent message. Only moves forward."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        return {"sent": 0, "delivered": 1, "read": 2, "failed": 3}[self.value]

    def __str__(self) -> str:
        return self.value
