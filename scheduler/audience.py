"""Campaigns whose recipients are an audience (a saved segment, a follow-up's result), resolved at start.

A campaign created with `--segment ID` or by `campaign follow-up` stores its audience as segment
rules (worker.contacts.segments) and no recipients. When its start time comes, the dispatcher's
tick resolves the rules into messages (`resolve_due`) and only then starts it: from that moment the
recipients are frozen, as after a CSV import; a contact who joins the segment later is not added.

Resolution walks the members in phone order, a batch at a time, each batch in its own transaction:
a member becomes a pending message filled from their attributes, or, when the message needs an
attribute they lack (or a filled text breaks a vendor limit), a `rejected` message that says why
(a person can read it in the report, like a CSV import's rejected row). Every insert is ON CONFLICT
DO NOTHING on (campaign, phone), and the next batch starts after the highest phone stored, so a
crash, a second beat or a tick's time budget running out just continues where it stopped: nobody
is added twice, nobody is skipped. A message without placeholders (and without recipients' own
time zones) is the same for everyone: then a batch is one INSERT ... SELECT in the database.

Opted-out contacts are never members (the rules exclude them); the send path's gate checks
consent again at claim time for anyone who opts out after the freeze.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from scheduler import experiments
from scheduler.campaigns import create_campaign, experiment_plan, parse_at, schedule, with_opt_out_button
from scheduler.template import MessageTemplate, compile_template, variants_data
from scheduler.zones import recount_zones
from worker import lifecycle
from worker.audit import record_audit
from worker.contacts import segments
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import Campaign, Contact, Message, UTCDateTime, utcnow
from worker.status import CampaignStatus, MessageStatus
from worker.window import RECIPIENT, UNKNOWN_ZONE, UNKNOWN_ZONE_REASON, WindowInvalid, parse_window, zone_group_of

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

#: members resolved per transaction (a batch is read, filled and inserted in one round)
RESOLVE_BATCH = 5_000
#: how long one dispatcher tick may spend resolving audiences before it serves the queues again
RESOLVE_BUDGET_S = 2.0
#: why a member did not become a pending message (messages.last_error_code of the rejected row)
MISSING_ATTRIBUTE = "missing_attribute"
INVALID_FOR_MEMBER = "invalid_content"
NO_ZONE = "no_time_zone"

#: `campaign follow-up`'s choices, as segment rules on the source campaign
FOLLOW_UP_RESULTS = ("tapped", "tapped_any", "not_tapped", "not_read")


def follow_up_rules(campaign_id: int, result: str, button: str | None = None) -> dict[str, Any]:
    """The audience of a follow-up: who tapped `button` (or any button), who received it and did
    not tap, who received it and did not read it."""
    received = {"received": {"campaign": campaign_id}}
    if result == "tapped":
        if not button:
            raise MessageInvalid([FieldProblem("tapped", "needs a button id, e.g. --tapped reserve")])
        return {"tapped": {"campaign": campaign_id, "button": button}}
    if result == "tapped_any":
        return {"tapped": {"campaign": campaign_id}}
    if result == "not_tapped":
        return {"all": [received, {"not": {"tapped": {"campaign": campaign_id}}}]}
    if result == "not_read":
        return {"all": [received, {"not": {"read": {"campaign": campaign_id}}}]}
    raise MessageInvalid([FieldProblem("result", f"{result!r} is not one of {', '.join(FOLLOW_UP_RESULTS)}")])


# ---------------------------------------------------------------------------------------------
# creating


def create_audience_campaign(
    runtime: "Runtime",
    *,
    name: Any,
    template: Any,
    rules: Mapping[str, Any] | None = None,
    segment_id: int | None = None,
    follow_up_of: int | None = None,
    at: str | datetime | None = None,
    window: str | None = None,
    tz: str | None = None,
    phone_number_id: str | None = None,
    draft: bool = False,
    require_open_window: bool = False,
    expires_at: str | datetime | None = None,
    opt_out_button: str | None = None,
    every: str | None = None,
    until: str | datetime | None = None,
    actor: str | None = None,
    variants: list | None = None,
    variant_labels: list[str] | None = None,
    test_share: Any = None,
    decide_after: Any = None,
    metric: Any = None,
    default_variant: Any = None,
) -> Campaign:
    """A campaign (or, with `every`, a series of runs) whose recipients are resolved at start.
    `variants` (instead of `template`): an A/B test of them (scheduler.experiments).

    Exactly one of `segment_id` (a saved segment, looked up at each start) and `rules` (an
    unsaved audience, e.g. a follow-up's) is given. Every problem is named by its field; nothing is
    created when there is one."""
    from scheduler import series  # the series' runs are made by series.py; the parent is made here

    problems: list[FieldProblem] = []
    if (segment_id is None) == (rules is None):
        problems.append(FieldProblem("segment", "give a segment (or a follow-up's result), and only one audience"))
    scheduled_at = _time(at, "at", problems)
    expires = _time(expires_at, "expires_at", problems)
    end = _time(until, "until", problems)
    interval = None
    if every is not None:
        try:
            interval = series.parse_every(every)
        except MessageInvalid as exc:
            problems.extend(exc.problems)
        if segment_id is None:
            problems.append(FieldProblem("every", "a recurring campaign needs --segment: each run resolves it again"))
        if expires is not None:
            problems.append(FieldProblem("expires_at", "is one time; a series' runs start at different times"))
    elif end is not None:
        problems.append(FieldProblem("until", "only with --every (it ends a series)"))
    send_window = None
    try:
        send_window = parse_window(window, tz)
    except WindowInvalid as exc:
        problems.append(FieldProblem(exc.field, exc.words))
    experiment = None
    try:
        experiment = experiment_plan(runtime, template, variants, labels=variant_labels, test_share=test_share,
                                     decide_after=decide_after, metric=metric, default_variant=default_variant,
                                     opt_out_button=opt_out_button)
    except MessageInvalid as exc:
        problems.extend(exc.problems)
        template = template if template is not None else (variants[0] if isinstance(variants, list) and variants else {})
    if experiment is not None:
        template = experiment.variants[0]
        if every is not None:
            problems.append(FieldProblem("every", "an A/B test is one campaign; a series cannot be one (yet)"))
    elif variants is not None:
        pass   # its problems are listed
    elif not isinstance(template, Mapping):
        problems.append(FieldProblem("message", "must be a JSON object with body_text and buttons"))
    elif opt_out_button:
        try:
            template = with_opt_out_button(template, opt_out_button, opt_out_button_ids=runtime.settings.opt_out_button_ids)
        except MessageInvalid as exc:
            problems.extend(exc.problems)
    sender = phone_number_id or runtime.settings.awal_phone_number_id
    audience = {"segment": segment_id} if segment_id is not None else dict(rules or {})
    with runtime.session_factory.begin() as session:
        if segment_id is not None or rules is not None:
            try:
                segments.validate(session, audience)
            except segments.RulesInvalid as exc:
                problems.extend(_as_audience(exc.problems, segment_id))
            except ButtoncastError as exc:
                problems.append(FieldProblem("segment", str(exc)))
        if end is not None and end <= (scheduled_at or utcnow()):
            problems.append(FieldProblem("until", "is before the first run: there would be none"))
        try:
            campaign = create_campaign(session, name=name, phone_number_id=sender or "", template=template or {},
                                       scheduled_at=scheduled_at, window=send_window, draft=True,
                                       require_open_window=require_open_window, expires_at=expires,
                                       experiment=experiment)
        except MessageInvalid as exc:
            problems.extend(exc.problems)
        if problems:
            raise MessageInvalid(_unique(problems))
        campaign.audience = audience
        campaign.segment_id = segment_id
        campaign.follow_up_of = follow_up_of
        if interval is not None:
            campaign.series_every_s = int(interval.total_seconds())
            campaign.series_until = end
            campaign.series_next_at = scheduled_at or utcnow()
        session.flush()
        record_audit(session, actor, "series.created" if interval else "campaign.created", "campaign", campaign.id,
                     audience=audience, every=every)
        if not draft:
            schedule(session, campaign.id, scheduled_at, actor=actor)
        campaign_id = campaign.id
    with runtime.session_factory() as session:
        return lifecycle.load(session, campaign_id)


def create_follow_up(
    runtime: "Runtime",
    campaign_id: int,
    *,
    template: Any,
    result: str,
    button: str | None = None,
    at: str | datetime | None = None,
    name: str | None = None,
    actor: str | None = None,
) -> Campaign:
    """`campaign follow-up ID`: a campaign to a result of campaign ID (who tapped a button, who did
    not tap, who did not read), resolved when it starts. It keeps the source's sender and window."""
    with runtime.session_factory() as session:
        source = lifecycle.load(session, campaign_id)
        session.expunge(source)
    rules = follow_up_rules(campaign_id, result, button)
    label = {"tapped": f"tapped {button}", "tapped_any": "tapped any button", "not_tapped": "did not tap",
             "not_read": "did not read"}[result]
    default_name = f"Follow-up of {source.name[:120]}: {label}"[:200]
    window = f"{source.window_start}-{source.window_end}" if source.window_start else None
    return create_audience_campaign(
        runtime, name=name or default_name, template=template, rules=rules, follow_up_of=campaign_id, at=at,
        window=window, tz=source.window_tz if window else None, phone_number_id=source.phone_number_id,
        require_open_window=bool(source.require_open_window), actor=actor,
    )


def follow_up_preview(session: Session, campaign_id: int, result: str, button: str | None) -> dict[str, Any]:
    """Who a follow-up would reach now: `words` and `members`, or the `problem` that stops it."""
    try:
        rules = follow_up_rules(campaign_id, result, button)
        return {"words": segments.describe(session, rules), "members": segments.count(session, rules), "problem": None}
    except ButtoncastError as exc:
        text = "; ".join(p.problem for p in exc.problems) if isinstance(exc, MessageInvalid) else str(exc)
        return {"words": None, "members": None, "problem": text}


def _time(value: str | datetime | None, field: str, problems: list[FieldProblem]) -> datetime | None:
    if not isinstance(value, str):
        return value
    try:
        return parse_at(value, field)
    except MessageInvalid as exc:
        problems.extend(exc.problems)
        return None


def _as_audience(problems: list[FieldProblem], segment_id: int | None) -> list[FieldProblem]:
    """A saved segment's problem is the `segment` option's; a follow-up's rules keep their path."""
    if segment_id is None:
        return problems
    return [FieldProblem("segment", f"{segment_id}: {p.problem}" if p.field.startswith("rules") else str(p))
            for p in problems]


def _unique(problems: list[FieldProblem]) -> list[FieldProblem]:
    return list(dict.fromkeys(problems))


# ---------------------------------------------------------------------------------------------
# resolving at start


def awaiting_resolution() -> sa.ColumnElement[bool]:
    """Campaigns whose audience is still to be resolved (the dispatcher does not start these)."""
    return sa.and_(Campaign.audience.is_not(None), Campaign.audience_resolved_at.is_(None))


def resolve_due(runtime: "Runtime", now: datetime, *, budget_s: float = RESOLVE_BUDGET_S) -> list[int]:
    """Resolve the audiences of campaigns whose start time has come; returns those finished now.

    Spends at most about `budget_s` (the tick serves the queues after it); what is left goes on at
    the next tick, from where it stopped."""
    with runtime.session_factory() as session:
        due = list(session.scalars(
            sa.select(Campaign.id).where(
                Campaign.status == CampaignStatus.SCHEDULED.value, Campaign.scheduled_at <= now,
                Campaign.series_every_s.is_(None), awaiting_resolution())
            .order_by(Campaign.scheduled_at, Campaign.id)))
    deadline = time.monotonic() + budget_s
    finished = []
    for campaign_id in due:
        if resolve(runtime.session_factory, campaign_id, now=now, deadline=deadline):
            finished.append(campaign_id)
        if time.monotonic() >= deadline:
            break
    return finished


def resolve(session_factory: sessionmaker[Session], campaign_id: int, *, now: datetime | None = None,
            deadline: float | None = None, batch: int = RESOLVE_BATCH) -> bool:
    """Resolve one campaign's audience into messages. True when it is done (now or before);
    False when `deadline` (time.monotonic()) came first or the audience could not be resolved
    (then the campaign is paused with the reason)."""
    now = now or utcnow()
    with session_factory() as session:
        campaign = lifecycle.load(session, campaign_id)
        session.expunge(campaign)
    if campaign.audience_resolved_at is not None:
        return True
    if campaign.audience is None:
        return True
    at = campaign.scheduled_at or now
    template = compile_template(variants_data(campaign.template, campaign.variants))
    constant = not template.names and campaign.window_tz != RECIPIENT
    while True:
        try:
            with session_factory.begin() as session:
                if constant:
                    more = _resolve_batch_in_database(session, campaign, template, at, batch)
                else:
                    more = _resolve_batch(session, campaign, template, at, batch)
        except ButtoncastError as exc:   # the segment was deleted, a campaign it names is gone
            with session_factory.begin() as session:
                lifecycle.pause_by_engine(session, campaign_id, reason=f"its audience cannot be resolved: {exc}")
            log.warning("campaign %s: audience not resolved: %s", campaign_id, exc)
            return False
        if not more:
            break
        if deadline is not None and time.monotonic() >= deadline:
            return False
    with session_factory.begin() as session:
        _finish(session, campaign, now)
    return True


def _members_after(session: Session, campaign: Campaign, at: datetime, batch: int,
                   names: Sequence[str] | None = None) -> sa.Select:
    last = session.scalar(sa.select(sa.func.max(Message.phone)).where(Message.campaign_id == campaign.id))
    query = segments.members(session, campaign.audience, now=at, names=names)
    if last is not None:
        query = query.where(Contact.phone > last)
    return query.limit(batch)


def _resolve_batch(session: Session, campaign: Campaign, template: MessageTemplate, at: datetime, batch: int) -> bool:
    names = template.names   # only the values the message needs, each as text
    members = session.execute(_members_after(session, campaign, at, batch, names)).all()
    if not members:
        return False
    now = utcnow()
    zones = campaign.window_tz == RECIPIENT
    pending, rejected = PENDING, REJECTED
    rows: list[tuple[str, str, str, str | None, str | None, str | None]] = []
    for phone, *values in members:
        zone = zone_group_of(phone) if zones else None
        if zone == UNKNOWN_ZONE:   # never sent at a guessed hour (as the CSV import rejects it)
            rows.append((phone, "{}", rejected, None, NO_ZONE, UNKNOWN_ZONE_REASON))
            continue
        try:
            rows.append((phone, template.dumps(template.fill(dict(zip(names, values)))), pending, zone, None, None))
        except MessageInvalid as exc:
            missing = all(p.field.startswith("column ") for p in exc.problems)
            rows.append((phone, "{}", rejected, zone, MISSING_ATTRIBUTE if missing else INVALID_FOR_MEMBER,
                         str(exc).replace("column '", "attribute '")))
    _store(session, campaign, rows, now)
    return len(members) == batch


PENDING, REJECTED = MessageStatus.PENDING.value, MessageStatus.REJECTED.value
_STAGED = "phone, content, status, zone, last_error_code, last_error_message"
_PG_STAGING = ("CREATE TEMP TABLE IF NOT EXISTS audience_staging (phone text NOT NULL, content json NOT NULL, "
               "status text NOT NULL, zone text, last_error_code text, last_error_message text) ON COMMIT DELETE ROWS")
_SQLITE_STAGING = ("CREATE TEMP TABLE IF NOT EXISTS audience_staging (phone TEXT NOT NULL, content TEXT NOT NULL, "
                   "status TEXT NOT NULL, zone TEXT, last_error_code TEXT, last_error_message TEXT)")
# a member's message: pending, or rejected (final at once) with why; ON CONFLICT: a concurrent
# resolver's rows are kept, never doubled
_MERGE = f"""
INSERT INTO messages (campaign_id, phone_number_id, phone, content, status, attempts, created_at, updated_at,
                      require_open_window, expires_at, zone, last_error_code, last_error_message, finished_at)
SELECT :campaign_id, :phone_number_id, phone, content, status, 0, :now, :now, :require_open_window, :expires_at,
       zone, last_error_code, last_error_message, CASE WHEN status = '{REJECTED}' THEN :now END
FROM audience_staging WHERE 1 = 1
ON CONFLICT (campaign_id, phone) DO NOTHING
"""


def _store(session: Session, campaign: Campaign, rows: list[tuple], now: datetime) -> None:
    """The batch's rows into `messages` through a staging table: COPY on Postgres (one round trip
    for the rows, none per row), one executemany on SQLite; then one set-based INSERT."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(_PG_STAGING)
        driver = connection.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(f"COPY audience_staging ({_STAGED}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        connection.exec_driver_sql(_SQLITE_STAGING)
        connection.exec_driver_sql("DELETE FROM audience_staging")
        connection.exec_driver_sql(f"INSERT INTO audience_staging ({_STAGED}) VALUES (?, ?, ?, ?, ?, ?)", rows)
    merge = sa.text(_MERGE).bindparams(sa.bindparam("now", type_=UTCDateTime()),
                                       sa.bindparam("expires_at", type_=UTCDateTime()),
                                       sa.bindparam("require_open_window", type_=sa.Boolean()))
    connection.execute(merge, dict(campaign_id=campaign.id, phone_number_id=campaign.phone_number_id, now=now,
                                   require_open_window=bool(campaign.require_open_window),
                                   expires_at=campaign.expires_at))
    if connection.dialect.name != "postgresql":
        connection.exec_driver_sql("DELETE FROM audience_staging")


def _resolve_batch_in_database(session: Session, campaign: Campaign, template: MessageTemplate, at: datetime,
                               batch: int) -> bool:
    """The same message for every member: one INSERT ... SELECT, no row leaves the database."""
    members = _members_after(session, campaign, at, batch).subquery()
    now = utcnow()
    content = template.fill({})
    select = sa.select(
        sa.literal(campaign.id, Message.campaign_id.type), sa.literal(campaign.phone_number_id, Message.phone_number_id.type),
        members.c.phone, sa.literal(content, Message.content.type), sa.literal(MessageStatus.PENDING.value),
        sa.literal(0), sa.literal(now, Message.created_at.type), sa.literal(now, Message.updated_at.type),
        sa.literal(bool(campaign.require_open_window), Message.require_open_window.type),
        sa.literal(campaign.expires_at, Message.expires_at.type),
    ).where(sa.text("1 = 1"))   # SQLite: without a WHERE, its parser reads ON CONFLICT as a join's ON
    columns = ["campaign_id", "phone_number_id", "phone", "content", "status", "attempts", "created_at", "updated_at",
               "require_open_window", "expires_at"]
    # the batch's size, not the rows inserted: a concurrent resolver's rows are skipped, not missed
    taken = session.scalar(sa.select(sa.func.count()).select_from(members))
    session.execute(_insert_ignoring_duplicates(session).from_select(columns, select))
    return taken == batch


def _insert_ignoring_duplicates(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(Message).on_conflict_do_nothing(index_elements=["campaign_id", "phone"])


def _finish(session: Session, campaign: Campaign, now: datetime) -> None:
    experiments.assign(session, campaign.id)   # an A/B test: each member's variant, or held for the winner
    counts = dict(session.execute(
        sa.select(Message.status, sa.func.count()).where(Message.campaign_id == campaign.id).group_by(Message.status)).all())
    rejected = counts.pop(MessageStatus.REJECTED.value, 0)
    values: dict[str, Any] = dict(audience_resolved_at=now, recipients_imported=sum(counts.values()),
                                  rows_rejected=rejected, updated_at=now)
    if campaign.window_tz == RECIPIENT:
        recount_zones(session, campaign.id)
    session.execute(sa.update(Campaign).where(Campaign.id == campaign.id, Campaign.audience_resolved_at.is_(None))
                    .values(**values).execution_options(synchronize_session=False))
    log.info("campaign %s: audience resolved: %s recipient(s), %s rejected", campaign.id,
             values["recipients_imported"], values["rows_rejected"])


def rejected_members(session: Session, campaign_id: int, limit: int = 20) -> list[tuple[str, str]]:
    """(phone, why) of members who did not become messages, for `campaign show` and the console."""
    return [tuple(r) for r in session.execute(
        sa.select(Message.phone, Message.last_error_message)
        .where(Message.campaign_id == campaign_id, Message.status == MessageStatus.REJECTED.value,
               Message.last_error_code.in_((MISSING_ATTRIBUTE, INVALID_FOR_MEMBER, NO_ZONE)))
        .order_by(Message.phone).limit(limit))]


# ---------------------------------------------------------------------------------------------
# what `campaign show`, the API and the console say about it


def describe_lines(session: Session, campaign: Campaign, *, now: datetime | None = None) -> list[str]:
    """The audience, the follow-up's source, the series and its runs, in words (one line each)."""
    from scheduler import series  # series.py builds on this module's campaigns, not the other way
    from scheduler.campaigns import status_counts_many
    from worker.durations import format_duration

    lines: list[str] = []
    if campaign.follow_up_of is not None:
        lines.append(f"follow-up of campaign {campaign.follow_up_of}")
    if campaign.audience is not None:
        try:
            words = segments.describe(session, campaign.audience)
        except ButtoncastError as exc:
            words = f"(cannot be read: {exc})"
        if campaign.series_every_s is not None:
            lines.append(f"audience:   {words} (each run resolves it at its own start)")
        elif campaign.audience_resolved_at is not None:
            lines.append(f"audience:   {words}; resolved {campaign.audience_resolved_at:%Y-%m-%d %H:%M:%S} UTC into "
                         f"{campaign.recipients_imported} recipient(s), {campaign.rows_rejected} rejected")
            for phone, why in rejected_members(session, campaign.id, limit=5):
                lines.append(f"  rejected {phone}: {why}")
        else:
            try:
                members = segments.count(session, campaign.audience, now=now)
                lines.append(f"audience:   {words}; {members} member(s) now, resolved into recipients when it starts")
            except ButtoncastError as exc:
                lines.append(f"audience:   {words}; cannot be resolved: {exc}")
    if campaign.series_every_s is not None:
        nxt = f"next run {campaign.series_next_at:%Y-%m-%d %H:%M} UTC" if campaign.series_next_at else "no run left"
        until = f" until {campaign.series_until:%Y-%m-%d %H:%M} UTC" if campaign.series_until else ""
        lines.append(f"series:     every {format_duration(campaign.series_every_s)}{until}; {nxt}")
        runs = series.runs_of(session, campaign.id)
        counts = status_counts_many(session, [r.id for r in runs]) if runs else {}
        lines.append(f"runs:       {len(runs)}" + ("" if runs else " (none yet)"))
        for run in runs[:20]:
            c = counts.get(run.id, {})
            lines.append(f"  campaign {run.id:>6}  {run.run_at:%Y-%m-%d %H:%M} UTC  {run.status:<10} "
                         f"{sum(c.values()):>7} recipient(s), {c.get('sent', 0)} sent, {c.get('failed', 0)} failed")
    if campaign.series_id is not None:
        lines.append(f"run of series {campaign.series_id} (slot {campaign.run_at:%Y-%m-%d %H:%M} UTC)")
    return lines
