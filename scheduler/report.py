"""What a campaign did: progress (counts, rate, ETA), the reply funnel, and one report row per recipient.

Every figure comes from a set-based query over `messages` (counts grouped by status, the funnel as
conditional counts in one query); the per-recipient report is streamed with `yield_per` so a
million-row campaign is written without holding it in memory.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler import experiments
from scheduler.campaigns import empty_counts, get_campaign, status_counts
from scheduler.zones import ZoneRow, describe_zones, zone_table
from worker import lifecycle
from worker.contacts.service import SERVICE_WINDOW, open_window_among, opted_out_among
from worker.failures import FailureClass
from worker.models import Campaign, Contact, ContactEvent, Message, utcnow
from worker.settings import OPT_OUT_BUTTON_IDS
from worker.status import CampaignStatus, DeliveryStatus, MessageStatus

#: the sending rate is measured over at most this much of the latest sending time (Progress.rate_per_minute)
RATE_WINDOW_S = 60
#: ...and not over less: a campaign (re)started this recently has no rate yet ("measuring")
RATE_MIN_WINDOW_S = 5
REPORT_YIELD_ROWS = 1_000
#: `variant`: the A/B test's letter this person was sent (empty for a campaign of one message, and while held)
REPORT_COLUMNS = (
    "message_id", "phone", "variant", "status", "vendor_id", "vendor_message_id", "attempts", "last_error_code",
    "last_error_message", "sent_at", "delivery_status", "delivered_at", "read_at", "replied_at",
    "reply_button_id", "reply_button_title", "failure_code", "failure_class",
    "contact_opted_out", "window_open_until",   # from the contact, not the message: keep these two last
)
#: still to go out: the estimate counts these against the rate limit
LEFT_STATUSES = (MessageStatus.PENDING.value, MessageStatus.QUEUED.value, MessageStatus.SENDING.value)
HELD = MessageStatus.HELD.value   # an A/B test's rest of the audience: neither left (not dispatched yet) nor done
#: nothing more will happen to these
DONE_STATUSES = tuple(s.value for s in MessageStatus if s.is_final)
#: a campaign in these sends nothing (until resumed, or ever): no finish time is estimated
NO_ETA_STATUSES = (CampaignStatus.PAUSED.value, CampaignStatus.COMPLETED.value, CampaignStatus.CANCELLED.value)


@dataclass(frozen=True)
class Funnel:
    """Sent -> delivered -> read -> replied, and taps per button (id, title) -> count.

    `sent_last_minute`: the messages sent in the rate window [`rate_since`, `rate_until`] (`rate_window`:
    at most the last minute, and none of it before the campaign last (re)started sending)."""

    sent: int
    delivered: int
    read: int
    replied: int
    sent_last_minute: int
    taps: list[tuple[str | None, str | None, int]] = field(default_factory=list)
    rate_since: datetime | None = None
    rate_until: datetime | None = None

    def rate(self, count: int) -> float | None:
        """`count` as a share of sent messages (None before anything was sent)."""
        return count / self.sent if self.sent else None


def _delivered() -> sa.ColumnElement[bool]:
    # A read receipt can arrive without (or before) its delivered one: read implies delivered.
    reached = (DeliveryStatus.DELIVERED.value, DeliveryStatus.READ.value)
    return sa.or_(Message.delivered_at.is_not(None), Message.read_at.is_not(None), Message.delivery_status.in_(reached))


def _read() -> sa.ColumnElement[bool]:
    return sa.or_(Message.read_at.is_not(None), Message.delivery_status == DeliveryStatus.READ.value)


def sending_since(campaign: Campaign) -> datetime | None:
    """When the campaign last (re)started sending: its start, or its last resume (`late_breaker_since`
    is set on every resume, scheduler.campaigns.resume); None before it started."""
    return _latest(campaign.started_at, campaign.late_breaker_since)


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def rate_window(now: datetime, restarted_at: datetime | None) -> datetime:
    """The start of the rate window ending `now`: RATE_WINDOW_S back, but never before `restarted_at`."""
    start = now - timedelta(seconds=RATE_WINDOW_S)
    return start if restarted_at is None else min(now, max(start, restarted_at))


def _rate_since(session: Session, campaign_id: int, now: datetime) -> datetime:
    row = session.execute(sa.select(Campaign.started_at, Campaign.late_breaker_since)
                          .where(Campaign.id == campaign_id)).one_or_none()
    return rate_window(now, None if row is None else _latest(*row))


def funnel(session: Session, campaign_id: int, now: datetime | None = None) -> Funnel:
    """The funnel in two queries: conditional counts, then taps grouped by button."""
    now = now or utcnow()
    since = _rate_since(session, campaign_id, now)
    delivered, read = _delivered(), _read()
    row = session.execute(
        sa.select(
            sa.func.count(Message.sent_at),
            sa.func.count(sa.case((delivered, 1))),
            sa.func.count(sa.case((read, 1))),
            sa.func.count(Message.replied_at),
            sa.func.count(sa.case((Message.sent_at >= since, 1))),
        ).where(Message.campaign_id == campaign_id)
    ).one()
    taps = session.execute(
        sa.select(Message.reply_button_id, Message.reply_button_title, sa.func.count())
        .where(Message.campaign_id == campaign_id, Message.replied_at.is_not(None))
        .group_by(Message.reply_button_id, Message.reply_button_title)
        .order_by(sa.func.count().desc())
    ).all()
    return Funnel(*row, taps=[tuple(t) for t in taps], rate_since=since, rate_until=now)  # type: ignore[misc]


def late_failures(session: Session, campaign_id: int) -> dict[str, int]:
    """Late failures (`failed` status webhooks) by class (worker.failures), most frequent first."""
    rows = session.execute(
        sa.select(Message.failure_class, sa.func.count())
        .where(Message.campaign_id == campaign_id, Message.failure_class.is_not(None))
        .group_by(Message.failure_class)
        .order_by(sa.func.count().desc(), Message.failure_class)
    ).all()
    return {klass: count for klass, count in rows}


@dataclass(frozen=True)
class Audience:
    """Consent and the 24-hour window across a campaign's recipients, now."""

    recipients: int
    opted_out: int              # recipients whose contact is opted out now...
    window_open: int
    opted_out_after_send: int = 0   # ...of whom this many had been sent the campaign's message

    @property
    def window_share(self) -> float | None:
        return self.window_open / self.recipients if self.recipients else None


def audience(session: Session, campaign_id: int, now: datetime | None = None) -> Audience:
    window_open, recipients = open_window_among(session, campaign_id, now=now)
    return Audience(recipients=recipients, opted_out=opted_out_among(session, campaign_id), window_open=window_open,
                    opted_out_after_send=opted_out_after_send(session, campaign_id))


def opted_out_after_send(session: Session, campaign_id: int) -> int:
    """How many of a campaign's recipients opted out although (usually: because) they were sent its
    message: a STOP reply, an opt-out button, a 131050 late failure. Not "never sent" (issue 25)."""
    return session.scalar(
        sa.select(sa.func.count()).select_from(Message)
        .join(Contact, Contact.phone == Message.phone)
        .where(Message.campaign_id == campaign_id, Message.sent_at.is_not(None), Contact.opted_out_at.is_not(None))
    ) or 0


def describe_audience(a: Audience, *, require_open_window: bool, rule: str = "--require-open-window") -> str:
    """The pre-flight / show line: who has an open window, and what happens to the others
    (`rule`: what the reader calls the open-window rule, the CLI's flag by default)."""
    share = f" ({a.window_share:.1%})" if a.window_share is not None else ""
    closed = a.recipients - a.window_open
    then = (f"held as suppressed (window_closed) at send time: {rule}" if require_open_window
            else "button messages to them are likely to fail with 131047 (re-engagement: outside the 24-hour window)")
    text = f"24-hour window open now for {a.window_open} of {a.recipients} recipient(s){share}"
    if closed:
        text += f"; {closed} closed: {then}"
    unsent = a.opted_out - a.opted_out_after_send
    if unsent:
        text += f"; {unsent} opted out (never sent)"
    if a.opted_out_after_send:
        text += f"; {a.opted_out_after_send} opted out after they were sent it (nothing more goes to them)"
    return text


@dataclass(frozen=True)
class Progress:
    """A campaign's state for `campaign show` and `--watch`."""

    campaign: Campaign
    counts: dict[str, int]
    funnel: Funnel
    per_second_limit: float
    now: datetime
    audience: Audience | None = None
    late_failures: dict[str, int] = field(default_factory=dict)
    experiment: dict[str, Any] | None = None    # an A/B test's experiments.results (None: one message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(self.counts[s] for s in DONE_STATUSES)

    @property
    def left(self) -> int:
        return sum(self.counts[s] for s in LEFT_STATUSES)

    @property
    def failed_at_send(self) -> int:
        """Refused when sending (status `failed`)."""
        return self.counts.get(MessageStatus.FAILED.value, 0)

    @property
    def failed_later(self) -> int:
        """Accepted when sent, then reported failed by the vendor (a late failure, any class)."""
        return min(sum(self.late_failures.values()), self.counts.get(MessageStatus.SENT.value, 0))

    @property
    def failed_total(self) -> int:
        """What the console calls failed: at send plus reported later."""
        return self.failed_at_send + self.failed_later

    @property
    def sent_not_failed(self) -> int:
        """Sent and not (yet) reported failed: what the console calls sent."""
        return self.counts.get(MessageStatus.SENT.value, 0) - self.failed_later

    def late_failure_rows(self) -> list[tuple[str, FailureClass | None, int]]:
        """(class name, its FailureClass or None for one this version does not know, count), most first."""
        return [(name, FailureClass.parse(name), n) for name, n in self.late_failures.items()]

    @property
    def rate_per_minute(self) -> int | None:
        """Messages sent per minute over the last minute of *sending* time, or None (no rate).

        Precisely: n * 60 / w, where t is when the figures were counted (`funnel.rate_until`), s when
        the campaign last (re)started sending (`sending_since`: its start or its latest resume),
        w = min(RATE_WINDOW_S, t - s) seconds and n the messages sent in [t - w, t]. So 6 s after
        the start at a real 600/min it says 600 (60 sent in 6 s), not the 10 a trailing minute of
        wall time would. None while the campaign is not running (paused, scheduled, completed,
        cancelled: nothing is being sent, so no old rate is shown), when w < RATE_MIN_WINDOW_S (just
        (re)started: too soon to say), and when the figures were counted before its latest (re)start."""
        window = self.rate_window_s
        return None if window is None else round(self.funnel.sent_last_minute * 60 / window)

    @property
    def rate_window_s(self) -> float | None:
        """w of `rate_per_minute`: the seconds of sending time the rate is measured over (None: no rate)."""
        f = self.funnel
        if self.campaign.status != CampaignStatus.RUNNING.value or f.rate_since is None or f.rate_until is None:
            return None
        restarted = sending_since(self.campaign)
        if restarted is not None and restarted > f.rate_since:
            return None   # counted before it was last resumed: the figures describe the time before the pause
        window = (f.rate_until - f.rate_since).total_seconds()
        return window if window >= RATE_MIN_WINDOW_S else None

    @property
    def zones(self) -> list[ZoneRow] | None:
        """`--tz recipient`: per zone group, its recipients and its window now (None otherwise)."""
        return zone_table(self.campaign, self.now)

    def eta(self) -> datetime | None:
        """Finish time if the whole rate limit went to this campaign (a best case: the budget is
        shared with other campaigns and ad-hoc sends, and a send window pauses it). None when nothing
        is left, and while the campaign is paused, completed or cancelled: nothing is being sent."""
        if self.campaign.status in NO_ETA_STATUSES or not self.left or self.per_second_limit <= 0:
            return None
        start = max(self.now, self.campaign.scheduled_at or self.now)
        return start + timedelta(seconds=self.left / self.per_second_limit)


def progress(session: Session, campaign_id: int, per_second_limit: float, now: datetime | None = None, *,
             opt_out_button_ids: Iterable[str] = OPT_OUT_BUTTON_IDS) -> Progress:
    """Everything `campaign show` says; an A/B test's figures per variant included (taps on the
    `opt_out_button_ids` are not counted as the taps metric)."""
    now = now or utcnow()
    campaign = get_campaign(session, campaign_id)
    return Progress(campaign, status_counts(session, campaign_id), funnel(session, campaign_id, now), per_second_limit, now,
                    audience(session, campaign_id, now), late_failures(session, campaign_id),
                    experiments.results(session, campaign_id, opt_out_button_ids))


@dataclass(frozen=True)
class Tally:
    """What one scan of a campaign's rows yields: counts per status, the funnel, late failures."""

    counts: dict[str, int]
    funnel: Funnel
    late_failures: dict[str, int]


def overview(session: Session, campaign_id: int, per_second_limit: float,
             now: datetime | None = None) -> tuple[Progress, dict[str, int]]:
    """`progress()` (without the audience) and `late_failures()` from ONE scan of the campaign's
    rows, grouped by status, button tapped and late failure: what the console's campaign page
    reads every second, where four separate scans of a million rows cost four times as much."""
    now = now or utcnow()
    campaign = get_campaign(session, campaign_id)
    t = tally(session, campaign_id, now)
    return Progress(campaign, t.counts, t.funnel, per_second_limit, now, late_failures=t.late_failures), t.late_failures


def tally(session: Session, campaign_id: int, now: datetime | None = None) -> Tally:
    """The one scan behind `overview()` (of the campaign row only its (re)start time is read, for the
    rate window: a cache of tallies can pair an older tally with the campaign as it is now)."""
    now = now or utcnow()
    since = _rate_since(session, campaign_id, now)
    late = Message.failure_class   # a late failure's class (worker.failures), as late_failures() counts it
    rows = session.execute(
        sa.select(Message.status, Message.reply_button_id, Message.reply_button_title, late, sa.func.count(),
                  sa.func.count(Message.sent_at), sa.func.count(sa.case((_delivered(), 1))),
                  sa.func.count(sa.case((_read(), 1))), sa.func.count(Message.replied_at),
                  sa.func.count(sa.case((Message.sent_at >= since, 1))))
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.status, Message.reply_button_id, Message.reply_button_title, late)
    ).all()
    counts = empty_counts()
    sums = [0, 0, 0, 0, 0]
    taps: dict[tuple[str | None, str | None], int] = {}
    failures: dict[str, int] = {}
    for status, button_id, title, late_reason, n, *figures in rows:
        counts[status] = counts.get(status, 0) + n
        sums = [a + b for a, b in zip(sums, figures)]
        if figures[3]:  # replied
            taps[(button_id, title)] = taps.get((button_id, title), 0) + figures[3]
        if late_reason is not None:
            failures[str(late_reason)] = failures.get(str(late_reason), 0) + n
    tap_rows = sorted(((b, t, n) for (b, t), n in taps.items()), key=lambda row: -row[2])
    failures = dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])))
    return Tally(counts, Funnel(*sums, taps=tap_rows, rate_since=since, rate_until=now), failures)


def report_rows(session: Session, campaign_id: int) -> Iterator[dict[str, Any]]:
    """One dict per recipient in import order, streamed (server-side cursor on Postgres)."""
    get_campaign(session, campaign_id)
    columns = [Message.id.label("message_id")] + [getattr(Message, c) for c in REPORT_COLUMNS[1:-2]]
    query = (
        sa.select(*columns, Contact.opted_out_at, Contact.last_inbound_at)
        .outerjoin(Contact, Contact.phone == Message.phone)
        .where(Message.campaign_id == campaign_id).order_by(Message.id)
        .execution_options(yield_per=REPORT_YIELD_ROWS)
    )
    for row in session.execute(query):
        out = dict(row._mapping)
        out["contact_opted_out"] = out.pop("opted_out_at") is not None
        inbound = out.pop("last_inbound_at")
        out["window_open_until"] = inbound + SERVICE_WINDOW if inbound else None
        yield out


def queue_depth(session: Session) -> dict[str, int]:
    """Messages not yet final, all campaigns and ad-hoc sends, per status (pending, queued, sending)."""
    rows = session.execute(
        sa.select(Message.status, sa.func.count()).where(Message.status.in_(LEFT_STATUSES)).group_by(Message.status)
    ).all()
    return {status: 0 for status in LEFT_STATUSES} | {status: count for status, count in rows}


TAPPER_COLUMNS = ("phone", "message_id", "replied_at", "reply_button_id", "reply_button_title")


def opt_outs_since_start(session: Session, campaign_id: int) -> list[tuple[str, str, str | None]]:
    """(phone, source, reason) of every opt-out by one of the campaign's recipients since it started,
    in the order they came (none before it started)."""
    started = session.scalar(sa.select(Campaign.started_at).where(Campaign.id == campaign_id))
    if started is None:
        return []
    return [tuple(row) for row in session.execute(
        sa.select(ContactEvent.phone, ContactEvent.source, ContactEvent.reason)
        .where(ContactEvent.action == "opt_out", ContactEvent.at >= started,
               ContactEvent.phone.in_(sa.select(Message.phone).where(Message.campaign_id == campaign_id)))
        .order_by(ContactEvent.at, ContactEvent.id)
    )]


def nothing_left_to_send(session: Session) -> bool:
    """No campaign running or scheduled, and no message pending (ad hoc), queued or sending: what
    `buttoncast run --until-idle` waits for."""
    active_campaign = session.scalar(
        sa.select(sa.func.count()).select_from(Campaign)
        .where(Campaign.status.in_(lifecycle.ACTIVE))
    )
    unfinished = session.scalar(
        sa.select(sa.func.count()).select_from(Message).where(
            Message.status.in_([MessageStatus.QUEUED.value, MessageStatus.SENDING.value]) |
            ((Message.status == MessageStatus.PENDING.value) & Message.campaign_id.is_(None))
        )
    )
    return not active_campaign and not unfinished


def tapper_rows(session: Session, campaign_id: int, button_id: str) -> Iterator[dict[str, Any]]:
    """Everyone who tapped `button_id` in this campaign (to target them again), streamed."""
    get_campaign(session, campaign_id)
    query = (
        sa.select(Message.phone, Message.id.label("message_id"), Message.replied_at, Message.reply_button_id,
                  Message.reply_button_title)
        .where(Message.campaign_id == campaign_id, Message.replied_at.is_not(None), Message.reply_button_id == button_id)
        .order_by(Message.id).execution_options(yield_per=REPORT_YIELD_ROWS)
    )
    for row in session.execute(query):
        yield dict(row._mapping)


def _text(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


#: OWASP CSV injection: a cell starting with one of these is a formula to a spreadsheet
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """One report cell; text a spreadsheet would run as a formula gets a leading ' (issue 12 item 17).

    Vendor error texts and button titles from webhooks are third-party text. Numbers (ids,
    attempts) and phones (digits only) are never changed; the JSON report is left as it is.
    """
    if value is None:
        return ""
    value = _text(value)
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def stream_csv(rows: Iterator[dict[str, Any]], chunk_rows: int = REPORT_YIELD_ROWS,
               columns: tuple[str, ...] = REPORT_COLUMNS) -> Iterator[str]:
    """The CSV of `write_csv` as text chunks of `chunk_rows` rows, for a streamed HTTP response."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for count, row in enumerate(rows, 1):
        writer.writerow([csv_cell(row[c]) for c in columns])
        if count % chunk_rows == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def stream_json(rows: Iterator[dict[str, Any]], chunk_rows: int = REPORT_YIELD_ROWS) -> Iterator[str]:
    """The JSON array of `write_json` as text chunks, for a streamed HTTP response."""
    buffer = io.StringIO()
    buffer.write("[")
    count = 0
    for row in rows:
        buffer.write(("\n" if count == 0 else ",\n") + json.dumps({c: _text(row[c]) for c in REPORT_COLUMNS}, ensure_ascii=False))
        count += 1
        if count % chunk_rows == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    buffer.write("\n]\n" if count else "]\n")
    yield buffer.getvalue()


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    """CSV with a header row; times as ISO 8601 UTC. Returns the number of rows written."""
    writer = csv.writer(out, lineterminator="\n")
    # QUOTE_MINIMAL quotes only what contains the "\n" terminator: a bare CR would split the row
    quote_all = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(REPORT_COLUMNS)
    count = 0
    for row in rows:
        cells = [csv_cell(row[c]) for c in REPORT_COLUMNS]
        (quote_all if any(isinstance(c, str) and "\r" in c for c in cells) else writer).writerow(cells)
        count += 1
    return count


def write_json(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    """A JSON array, one object per line, written as rows arrive. Returns the number of rows."""
    count = 0
    out.write("[")
    for row in rows:
        out.write(("\n" if count == 0 else ",\n") + json.dumps({c: _text(row[c]) for c in REPORT_COLUMNS}, ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def format_utc(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _share(f: Funnel, count: int) -> str:
    rate = f.rate(count)
    return f"{count}" + ("" if rate is None else f" ({rate:.1%} of sent)")


def describe_rate(p: Progress) -> str:
    """`rate_per_minute` in words, with the span it was measured over, or why there is none."""
    rate, window = p.rate_per_minute, p.rate_window_s
    if rate is not None and window is not None:
        span = "the last minute" if window >= RATE_WINDOW_S else f"the {window:.0f} s since it (re)started"
        return f"{rate}/min (sent over {span} of sending)"
    if p.campaign.status == CampaignStatus.RUNNING.value:
        return "measuring (it has just started or resumed)"
    return f"none ({p.campaign.status}: nothing is being sent)"


def _no_estimate(p: Progress) -> str:
    status = p.campaign.status
    if status == CampaignStatus.PAUSED.value and p.left:
        return f"none while paused ({p.left} left to send when it resumes)"
    if status in NO_ETA_STATUSES and status != CampaignStatus.PAUSED.value:
        return f"none: {status}"
    return "nothing left to send"


def describe(p: Progress) -> list[str]:
    """The lines of `campaign show`: status, schedule, window, counts, rate, ETA, funnel."""
    c, f = p.campaign, p.funnel
    window = f"{c.window_start}-{c.window_end} {c.window_tz}" if c.window_start else "any time"
    zones = p.zones
    eta = p.eta()
    lines = [
        f"campaign {c.id}: {c.name}",
        f"  status:     {c.status}" + (f" (reason: {c.pause_reason})" if c.pause_reason else ""),
        f"  sender:     phone_number_id {c.phone_number_id}",
        f"  scheduled:  {format_utc(c.scheduled_at)}   started: {format_utc(c.started_at)}   finished: {format_utc(c.finished_at)}",
        f"  window:     {window}" + (" (each recipient's own time zone)" if zones is not None else ""),
        f"  imported:   {c.recipients_imported} recipient(s), {c.rows_rejected} row(s) rejected at import",
        "  messages:   " + ", ".join(f"{s} {n}" for s, n in p.counts.items()) + f"  (total {p.total})",
        f"  progress:   {p.done}/{p.total} done, {p.left} left"
        + (f", {p.counts[HELD]} held for the A/B test's winner" if p.counts.get(HELD) else "")
        + f"; rate: {describe_rate(p)}",
        "  estimate:   " + (f"finishes around {format_utc(eta)} at the rate limit of {p.per_second_limit * 3600:g}/h "
                             "(best case: the budget is shared, and the window is not counted)" if eta
                             else _no_estimate(p)),
        f"  funnel:     sent {f.sent}, delivered {_share(f, f.delivered)}, read {_share(f, f.read)}, replied {_share(f, f.replied)}",
    ]
    lines += [f"    tapped {title or '?'} [{button_id or '?'}]: {_share(f, n)}" for button_id, title, n in f.taps]
    if zones is not None:
        lines += describe_zones(zones)
    if p.audience is not None:
        lines.append("  audience:   " + describe_audience(p.audience, require_open_window=bool(c.require_open_window)))
    gates = [f"expires {format_utc(c.expires_at)}"] if c.expires_at else []
    if c.require_open_window:
        gates.append("require open window")
    if gates:
        lines.append("  gate:       " + ", ".join(gates))
    lines += describe_late_failures(p)
    if p.experiment is not None:
        lines += experiments.describe_lines(p.experiment)
    return lines


def describe_late_failures(p: Progress) -> list[str]:
    """`late failures:` by class with what each means, and the retry command for the resendable ones."""
    late = p.late_failures
    if not late:
        return ["  late failures: none"]
    lines = [f"  late failures: {_share(p.funnel, sum(late.values()))} failed after sending, by class:"]
    for name, count in late.items():
        klass = FailureClass.parse(name)
        lines.append(f"    {name}: {count}  ({klass.advice if klass else 'a class this version does not know'})")
        if klass is not None and not klass.resend_needs_force:
            lines.append(f"      resend: buttoncast retry --campaign {p.campaign.id} --reason {name}")
    return lines
