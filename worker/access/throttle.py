"""Failed console logins slow the next ones down, per client address and per (address, account):
never a lock.

A lock after N wrong passwords lets anyone who knows an email lock its owner out (OWASP ASVS
2.2.1 asks for anti-automation "without" that: soft limits, growing delays). Here each failed
login counts twice: for its address over every email tried (one address spraying many accounts)
and for its address and that email (one address guessing one password). After `free` failures the
next try from there waits `delay_s`, doubling with each further failure up to `delay_max_s`. The
owner, from an address that has not been failing, has no row and logs in at once; a success clears
its (address, account) row. An email with no account is counted exactly like one with an account
(the key is the sha256 of the email tried), so the answers never tell which emails exist.

The counts are rows of `login_throttle` in the database, so every console process sees the same
ones. A try is counted (`claim`) before its password is checked, in a short transaction of its own,
and given back (`give_back`) if it succeeds: tries sent in parallel from one address cannot all
pass before the first failure is written, and no transaction is open during the slow argon2 check.
Rows idle for `forget_s` are deleted at each claim.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.access.models import LoginThrottle

if TYPE_CHECKING:
    from worker.settings import Settings

EVERY_ACCOUNT = ""          # the `account` of an address's row over every email tried
ADDRESS_MAX_CHARS = 64
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass(frozen=True)
class Limits:
    """CONSOLE_LOGIN_*: failures allowed before waits start, the first wait, its cap, the memory."""

    free_failures: int
    address_free_failures: int
    delay_s: float
    delay_max_s: float
    forget_s: float

    @classmethod
    def of(cls, settings: "Settings") -> "Limits":
        return cls(settings.console_login_free_failures, settings.console_login_address_free_failures,
                   settings.console_login_delay_s, settings.console_login_delay_max_s, settings.console_login_forget_s)

    def wait_after(self, failures: int, free: int) -> float:
        """Seconds the next try waits after `failures` failures in a row (0 while within `free`)."""
        if failures < free:
            return 0.0
        return min(self.delay_max_s, self.delay_s * 2.0 ** min(failures - free, 40))


@dataclass(frozen=True)
class Claim:
    """A try counted before its password is checked: what `give_back` undoes if it succeeds."""

    address: str
    account: str
    at: datetime
    previous: datetime | None        # the address row's last failure before this try (None: no row)
    wait_if_failed_s: float          # the wait before the next try from here if this one fails


def account_key(email: str) -> str:
    """The `account` of an email's rows: its sha256, whether or not the email has an account."""
    return hashlib.sha256(email.encode()).hexdigest()


def address_of(address: str | None) -> str:
    return (address or "unknown")[:ADDRESS_MAX_CHARS]


def claim(session: Session, address: str, account: str, now: datetime, limits: Limits) -> Claim | float:
    """Count a try from `address` at `account` as a failure, or, when either row says to wait, the
    seconds left to wait (nothing counted). Both rows stay locked until the transaction ends."""
    forgotten = now - timedelta(seconds=limits.forget_s)
    session.execute(sa.delete(LoginThrottle).where(LoginThrottle.last_failed_at < forgotten))
    keys = [(address, EVERY_ACCOUNT), (address, account)]
    insert = _INSERTS[session.get_bind().dialect.name](LoginThrottle)
    session.execute(insert.on_conflict_do_nothing(index_elements=["address", "account"]),
                    [{"address": a, "account": k, "failures": 0, "last_failed_at": now} for a, k in keys])
    rows = {(r.address, r.account): r for r in session.scalars(
        sa.select(LoginThrottle)
        .where(LoginThrottle.address == address, LoginThrottle.account.in_([EVERY_ACCOUNT, account]))
        .order_by(LoginThrottle.account).with_for_update())}
    by_address, by_account = rows[keys[0]], rows[keys[1]]
    frees = ((by_address, limits.address_free_failures), (by_account, limits.free_failures))
    wait_s = max((row.last_failed_at + timedelta(seconds=limits.wait_after(row.failures, free)) - now).total_seconds()
                 for row, free in frees)
    if wait_s > 0:
        return wait_s
    previous = by_address.last_failed_at if by_address.failures else None
    for row, _free in frees:
        row.failures += 1
        row.last_failed_at = now
    return Claim(address, account, now, previous, max(limits.wait_after(row.failures, free) for row, free in frees))


def give_back(session: Session, claimed: Claim) -> None:
    """The claimed try succeeded: the (address, account) row goes; the address row loses the one
    failure the claim counted (and its time, unless another failure came in since)."""
    session.execute(sa.delete(LoginThrottle).where(LoginThrottle.address == claimed.address,
                                                   LoginThrottle.account == claimed.account))
    row = (LoginThrottle.address == claimed.address, LoginThrottle.account == EVERY_ACCOUNT)
    restored = sa.case((LoginThrottle.last_failed_at == claimed.at,
                        sa.func.coalesce(sa.literal(claimed.previous, LoginThrottle.last_failed_at.type),
                                         LoginThrottle.last_failed_at)),
                       else_=LoginThrottle.last_failed_at)
    session.execute(sa.update(LoginThrottle).where(*row)
                    .values(failures=LoginThrottle.failures - 1, last_failed_at=restored))
    session.execute(sa.delete(LoginThrottle).where(*row, LoginThrottle.failures <= 0))


def forget_account(session: Session, account: str) -> None:
    """Every address's failures at this account (an admin set a new password)."""
    session.execute(sa.delete(LoginThrottle).where(LoginThrottle.account == account))


def in_words(seconds: float) -> str:
    """A wait as a person reads it: "1 second", "40 seconds", "3 minutes"."""
    whole = max(1, math.ceil(seconds))
    if whole < 120:
        return f"{whole} second{'s' if whole != 1 else ''}"
    return f"{math.ceil(whole / 60)} minutes"
