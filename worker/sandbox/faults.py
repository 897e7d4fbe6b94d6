"""Fault decisions: per-phone scripts first, then random shares drawn from one seedable RNG.

Faults, and what the sandbox does for each:
  "500", "503"  answer that status with an error body (nothing recorded)
  "429"         answer 429 rate_limit_exceeded with Retry-After: 1 (nothing recorded)
  "400"         answer 400 validation_failed (nothing recorded)
  "401"         answer 401 authentication_failed (nothing recorded)
  "timeout"     RECORD the message as accepted (the vendor acted), then stall and close unanswered
  "drop"        close the connection without answering (nothing recorded). A random drop happens
                before the request body is read; a scripted one after (the phone is in the body).
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from typing import Iterable

SCRIPTABLE = ("500", "503", "429", "400", "401", "timeout", "drop")


class ScriptError(ValueError):
    """A script item is not one of SCRIPTABLE."""


class FaultPlan:
    """Decides, per request, whether to inject a fault. Not thread-safe: used on the event loop."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self._scripts: dict[str, deque[str]] = defaultdict(deque)

    def reseed(self, seed: int | None) -> None:
        self.rng.seed(seed)

    def reset(self, seed: int | None) -> None:
        self._scripts.clear()
        self.reseed(seed)

    def script(self, phone: str, responses: Iterable[str]) -> None:
        """Queue `responses` for the next requests to `phone`; afterwards it behaves normally."""
        items = [str(r).strip().lower() for r in responses]
        bad = [r for r in items if r not in SCRIPTABLE]
        if bad:
            raise ScriptError(f"unknown script items {bad}; use {', '.join(SCRIPTABLE)}")
        self._scripts[phone].extend(items)

    def scripted(self, phone: str) -> str | None:
        """The next scripted response for `phone`, consumed, or None."""
        queue = self._scripts.get(phone)
        if not queue:
            return None
        item = queue.popleft()
        if not queue:
            del self._scripts[phone]
        return item

    def pending(self) -> dict[str, list[str]]:
        return {phone: list(q) for phone, q in self._scripts.items()}

    def chance(self, share: float) -> bool:
        """True with probability `share`; draws nothing when the share is 0 (keeps runs repeatable)."""
        return share > 0 and self.rng.random() < share

    def random_fault(self, *, error_rate_500: float, error_rate_503: float, timeout_rate: float) -> str | None:
        """One draw split into bands: [500 | 503 | timeout | none]. Shares add up (capped at 1)."""
        total = error_rate_500 + error_rate_503 + timeout_rate
        if total <= 0:
            return None
        roll = self.rng.random()
        for fault, share in (("500", error_rate_500), ("503", error_rate_503), ("timeout", timeout_rate)):
            if roll < share:
                return fault
            roll -= share
        return None
