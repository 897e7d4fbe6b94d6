"""What the sandbox remembers: accepted messages, outcome counts, fault events, the rate window.

Everything here is touched only from the server's event loop, so it needs no locks.
"""

from __future__ import annotations

import base64
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from worker.settings import RateLimit

OUTCOME_SENT = "sent"          # answered 200
OUTCOME_TIMEOUT = "timeout"    # the vendor acted, then never answered


@dataclass(frozen=True)
class Record:
    """One message the sandbox acted on (answered 200, or accepted then stalled)."""

    id: int
    message_id: str
    phone: str
    phone_number_id: str
    body: dict[str, Any]
    received_at: float
    outcome: str
    request_id: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_wamid() -> str:
    """A WhatsApp-looking message id: `wamid.` + url-safe base64 of random bytes."""
    return "wamid." + base64.urlsafe_b64encode(os.urandom(24)).decode("ascii").rstrip("=")


def new_request_id() -> str:
    return "req_" + os.urandom(8).hex()


class SandboxState:
    """Records, counters and per-phone fault events; `reset()` forgets all of it."""

    def __init__(self, first_vendor_id: int) -> None:
        self._first_vendor_id = first_vendor_id
        self.reset()

    def reset(self) -> None:
        self.next_vendor_id = self._first_vendor_id
        self.records: list[Record] = []
        self.counts: Counter[str] = Counter()
        self.fault_events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.webhooks: Counter[str] = Counter()
        self.late_failures: Counter[str] = Counter()   # failed status webhooks planned, by vendor code
        self.stop_replies = 0                          # STOP replies planned
        self.taps: dict[str, str] = {}                 # taps planned: wamid of the message tapped -> button id

    def accept(self, *, phone: str, phone_number_id: str, body: dict[str, Any], outcome: str, request_id: str) -> Record:
        record = Record(
            id=self.next_vendor_id,
            message_id=new_wamid(),
            phone=phone,
            phone_number_id=phone_number_id,
            body=body,
            received_at=time.time(),
            outcome=outcome,
            request_id=request_id,
        )
        self.next_vendor_id += 1
        self.records.append(record)
        return record

    def count(self, outcome: str) -> None:
        """Outcome keys: "200", "400:<code>", "401:<code>", "404:<code>", "429", "500", "503",
        "timeout", "drop"."""
        self.counts[outcome] += 1

    def fault(self, phone: str | None, fault: str, source: str) -> None:
        self.fault_events[phone or "?"].append({"fault": fault, "source": source, "at": time.time()})

    def received(self, phone: str | None = None) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.records if phone is None or r.phone == phone]

    def stats(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "accepted": len(self.records),
            "requests": sum(self.counts.values()),
            "fault_events": {k: list(v) for k, v in self.fault_events.items()},
            "webhooks": dict(self.webhooks),
            "late_failures": dict(self.late_failures),
            "stop_replies": self.stop_replies,
            "taps": dict(self.taps),
        }


@dataclass(frozen=True)
class RateWindow:
    """What the X-RateLimit-* headers and Retry-After say for one response."""

    limit: int
    remaining: int
    reset_at: int          # unix seconds, ceil of the window's end
    retry_after_s: int     # >= 1; only meaningful when the request was refused


class FixedWindowLimiter:
    """Fixed window aligned to the epoch: window = floor(now / period). One budget per sandbox."""

    def __init__(self) -> None:
        self._window: int | None = None
        self._used = 0
        self.forced_until = 0.0
        self.forced_retry_after_s: int | None = None

    def reset(self) -> None:
        self._window, self._used = None, 0
        self.forced_until, self.forced_retry_after_s = 0.0, None

    def force(self, seconds: float, retry_after_s: int | None) -> None:
        """Answer every request 429 for `seconds` (a burst), with `retry_after_s` if given."""
        self.forced_until = time.time() + seconds
        self.forced_retry_after_s = retry_after_s

    def forced(self, now: float) -> int | None:
        """Retry-After seconds while a forced burst lasts, else None."""
        if now >= self.forced_until:
            return None
        return max(1, self.forced_retry_after_s or math.ceil(self.forced_until - now))

    def _roll(self, rate: RateLimit, now: float) -> int:
        window = math.floor(now / rate.period_s)
        if window != self._window:
            self._window, self._used = window, 0
        return window

    def peek(self, rate: RateLimit, now: float) -> RateWindow:
        return self._view(rate, now, self._roll(rate, now))

    def take(self, rate: RateLimit, now: float) -> tuple[bool, RateWindow]:
        """Count one request; True if it fits in the current window."""
        window = self._roll(rate, now)
        self._used += 1
        return self._used <= rate.limit, self._view(rate, now, window)

    def _view(self, rate: RateLimit, now: float, window: int) -> RateWindow:
        end = (window + 1) * rate.period_s
        return RateWindow(
            limit=int(rate.limit),
            remaining=max(0, int(rate.limit) - self._used),
            reset_at=math.ceil(end),
            retry_after_s=max(1, math.ceil(end - now)),
        )
