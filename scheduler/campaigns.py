"""Campaigns: create, schedule, pause, resume, cancel, and their counts per status.

What status may follow what, and the guarded UPDATEs that change it, live in `worker.lifecycle`;
this module is what an operator asks of it.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from scheduler import experiments
from scheduler.importer import ImportRefused, ImportResult, check_header, import_recipients, refuse_if_invalid
from scheduler.template import check_template, compile_template, variants_data
from worker.audit import record_audit
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.lifecycle import TRANSITIONS, CampaignNotFound, IllegalTransition, operator_may, transition  # noqa: F401 - re-exported
from worker.lifecycle import load as get_campaign
from worker.models import Campaign, Message, utcnow
from worker.status import CampaignStatus, MessageStatus
from worker.window import Window

if TYPE_CHECKING:
    from worker.runtime import Runtime

S = CampaignStatus
NAME_MAX_CHARS = 200
PHONE_NUMBER_ID_MAX_CHARS = 64
PAUSED_BY_OPERATOR = "paused by operator"
#: messages a cancel stops: not yet handed to a worker's HTTP call (`sending` finishes on its own)
CANCELLABLE = (MessageStatus.PENDING.value, MessageStatus.QUEUED.value, MessageStatus.HELD.value)


def parse_at(text: str | None, option: str = "--at") -> datetime | None:
    """ISO 8601 with an offset ('Z' or +03:00); a naive time is refused rather than guessed."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise MessageInvalid([FieldProblem(option, f"{text!r} is not an ISO 8601 time; write e.g. 2026-12-01T09:00:00+03:00")]) from None
    if value.tzinfo is None:
        raise MessageInvalid([FieldProblem(option, f"{text!r} has no UTC offset; add one, e.g. {text.strip()}+03:00 or {text.strip()}Z")])
    return value


#: a start time this close behind now is "now" (a time typed to the minute), not a mistake worth a word
PAST_START_TOLERANCE_S = 60


def past_start_note(at: datetime | None, now: datetime | None = None) -> str | None:
    """What to tell the person who gave a start time already past (issue 25: it was accepted without
    a word): the campaign starts at once, not at that time. None for a time to come, or none given.
    The CLI prints it on standard error, the API returns it in `warnings`, the console shows it."""
    now = now or utcnow()
    if at is None or (now - at).total_seconds() <= PAST_START_TOLERANCE_S:
        return None
    return (f"the start time {at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC is already past ({_ago(now - at)} ago): "
            "the campaign starts at once (at the dispatcher's next tick), not at that time")


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def create_campaign(
    session: Session,
    *,
    name: str,
    phone_number_id: str,
    template: Mapping[str, Any],
    scheduled_at: datetime | None = None,
    window: Window | None = None,
    draft: bool = False,
    require_open_window: bool = False,
    expires_at: datetime | None = None,
    experiment: "experiments.Plan | None" = None,
) -> Campaign:
    """Add a campaign (flushed, not committed): `draft`, or `scheduled` at `scheduled_at` (default now).
    `experiment`: an A/B test of its variants (`template` is then the first variant).

    `require_open_window` and `expires_at` are copied to each recipient's message at import; the
    send claim's gate (worker.sending.gate) holds or expires them."""
    problems = _field_problems(name, phone_number_id, scheduled_at)
    if expires_at is not None and expires_at.tzinfo is None:
        problems.append(FieldProblem("expires_at", "has no UTC offset; give e.g. 2026-12-01T09:00:00+03:00"))
    elif expires_at is not None and expires_at <= (scheduled_at or utcnow()):
        problems.append(FieldProblem("expires_at", "is before the campaign starts: nothing would be sent"))
    try:
        check_template(template)
    except MessageInvalid as exc:
        problems.extend(exc.problems)
    if problems:
        raise MessageInvalid(problems)
    now = utcnow()
    campaign = Campaign(
        name=name.strip(), phone_number_id=str(phone_number_id), template=dict(template),
        status=(S.DRAFT if draft else S.SCHEDULED).value,
        scheduled_at=scheduled_at or (None if draft else now),
        window_start=window.start if window else None, window_end=window.end if window else None,
        window_tz=window.tz if window else None,
        require_open_window=bool(require_open_window), expires_at=expires_at,
        consecutive_failures=0, recipients_imported=0, rows_rejected=0, created_at=now, updated_at=now,
    )
    session.add(campaign)
    session.flush()
    if experiment is not None:
        experiments.start(session, campaign, experiment)
    return campaign


def with_opt_out_button(template: Mapping[str, Any], spec: str, *, opt_out_button_ids: frozenset[str]) -> dict[str, Any]:
    """message.json with an opt-out reply button appended ("stop:Stop offers" -> id stop, title
    "Stop offers"). It counts toward the vendor's 3 buttons (check_template judges the result);
    its id must be one of OPT_OUT_BUTTON_IDS, or a tap on it would opt no one out."""
    button_id, sep, title = (spec or "").partition(":")
    button_id, title = button_id.strip(), title.strip()
    if not sep or not button_id or not title:
        raise MessageInvalid([FieldProblem("--opt-out-button", f"{spec!r} is not ID:TITLE, e.g. \"stop:Stop offers\"")])
    if button_id not in opt_out_button_ids:
        raise MessageInvalid([FieldProblem("--opt-out-button", f"id {button_id!r} is not one of OPT_OUT_BUTTON_IDS "
                                           f"({', '.join(sorted(opt_out_button_ids)) or 'none set'}): a tap would not opt out")])
    buttons = template.get("buttons")
    buttons = list(buttons) if isinstance(buttons, list) else []
    return {**template, "buttons": buttons + [{"id": button_id, "title": title}]}


def _field_problems(name: str, phone_number_id: str, scheduled_at: datetime | None) -> list[FieldProblem]:
    problems = []
    if not isinstance(name, str) or not name.strip():
        problems.append(FieldProblem("name", "is required"))
    elif len(name.strip()) > NAME_MAX_CHARS:
        problems.append(FieldProblem("name", f"is {len(name.strip())} characters; the limit is {NAME_MAX_CHARS}"))
    if not phone_number_id or not str(phone_number_id).strip():
        problems.append(FieldProblem("phone_number_id", "is required: pass --phone-number-id or set AWAL_PHONE_NUMBER_ID"))
    elif len(str(phone_number_id)) > PHONE_NUMBER_ID_MAX_CHARS:
        problems.append(FieldProblem("phone_number_id", f"is {len(str(phone_number_id))} characters; the limit is {PHONE_NUMBER_ID_MAX_CHARS}"))
    if scheduled_at is not None and scheduled_at.tzinfo is None:
        problems.append(FieldProblem("scheduled_at", "has no UTC offset; give e.g. 2026-12-01T09:00:00+03:00"))
    return problems


def schedule(session: Session, campaign_id: int, at: datetime | None = None, *, actor: str | None = None) -> Campaign:
    """draft (or paused) -> scheduled at `at` (aware); without `at`, the time stored at creation
    (`create --draft --at`) or else now, i.e. the next dispatcher tick."""
    if at is not None and at.tzinfo is None:
        raise MessageInvalid([FieldProblem("--at", "has no UTC offset; give e.g. 2026-12-01T09:00:00+03:00")])
    at = at or get_campaign(session, campaign_id).scheduled_at or utcnow()
    return transition(session, campaign_id, S.SCHEDULED, actor=actor, scheduled_at=at)


def pause(session: Session, campaign_id: int, reason: str = PAUSED_BY_OPERATOR, *, actor: str | None = None) -> Campaign:
    """scheduled/running -> paused: the dispatcher stops at its next tick; queued sends come back."""
    return transition(session, campaign_id, S.PAUSED, actor=actor, pause_reason=reason)


def resume(session: Session, campaign_id: int, *, actor: str | None = None) -> Campaign:
    """paused -> running if it had started, else scheduled; the failure streak starts again, and
    so does the late-failure breaker's window (worker.webhooks.breaker counts messages sent from now)."""
    # started_at only changes on scheduled -> running, never while paused, so reading it first is safe.
    # A completed campaign is refused by the table itself (completed -> running is the engine's reopen).
    target = S.RUNNING if get_campaign(session, campaign_id).started_at is not None else S.SCHEDULED
    return transition(session, campaign_id, target, actor=actor, pause_reason=None, consecutive_failures=0,
                      late_breaker_since=utcnow())


def cancel(session: Session, campaign_id: int, *, actor: str | None = None) -> tuple[Campaign, int]:
    """-> cancelled, and every pending/queued message of it -> cancelled in one UPDATE.

    Returns the campaign and how many messages were cancelled. Messages already `sending` are in
    a worker's HTTP call; they finish on their own (sent, failed or unknown).
    """
    now = utcnow()
    campaign = transition(session, campaign_id, S.CANCELLED, actor=actor, finished_at=now)
    cancelled = session.execute(
        sa.update(Message)
        .where(Message.campaign_id == campaign_id, Message.status.in_(CANCELLABLE))
        .values(status=MessageStatus.CANCELLED.value, finished_at=now, updated_at=now, enqueued_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    return campaign, cancelled


# What an operator does to a campaign, each in a transaction of its own: the CLI, the API and the
# console call these (never the Session-level steps above inside a transaction of their own making).

def schedule_campaign(runtime: "Runtime", campaign_id: int, at: datetime | None = None, *,
                      actor: str | None = None) -> Campaign:
    with runtime.session_factory.begin() as session:
        return schedule(session, campaign_id, at, actor=actor)


def pause_campaign(runtime: "Runtime", campaign_id: int, reason: str = PAUSED_BY_OPERATOR, *,
                   actor: str | None = None) -> Campaign:
    with runtime.session_factory.begin() as session:
        return pause(session, campaign_id, reason, actor=actor)


def resume_campaign(runtime: "Runtime", campaign_id: int, *, actor: str | None = None) -> Campaign:
    with runtime.session_factory.begin() as session:
        return resume(session, campaign_id, actor=actor)


def cancel_campaign(runtime: "Runtime", campaign_id: int, *, actor: str | None = None) -> tuple[Campaign, int]:
    with runtime.session_factory.begin() as session:
        return cancel(session, campaign_id, actor=actor)


def empty_counts() -> dict[str, int]:
    return {s.value: 0 for s in MessageStatus}


def status_counts(session: Session, campaign_id: int) -> dict[str, int]:
    """Messages per status for one campaign (every status present, zeros included): one grouped query."""
    return status_counts_many(session, [campaign_id]).get(campaign_id, empty_counts())


def status_counts_many(session: Session, campaign_ids: Iterable[int] | None = None) -> dict[int, dict[str, int]]:
    """Messages per status for many campaigns (all when `campaign_ids` is None): one grouped query."""
    query = (
        sa.select(Message.campaign_id, Message.status, sa.func.count())
        .where(Message.campaign_id.is_not(None))
        .group_by(Message.campaign_id, Message.status)
    )
    ids = None if campaign_ids is None else list(campaign_ids)
    if ids is not None:
        query = query.where(Message.campaign_id.in_(ids))
    counts: dict[int, dict[str, int]] = {i: empty_counts() for i in ids or []}
    for campaign_id, status, count in session.execute(query):
        counts.setdefault(campaign_id, empty_counts())[status] = count
    return counts


def create_with_recipients(
    session_factory: sessionmaker[Session],
    recipients: str | os.PathLike[str],
    *,
    strict: bool = False,
    draft: bool = False,
    scheduled_at: datetime | None = None,
    actor: str | None = None,
    default_region: str | None = None,
    processes: int | None = None,
    **fields: Any,
) -> tuple[int, ImportResult]:
    """Create a campaign and import its CSV; returns (campaign id, import result).

    The campaign is stored as a draft while rows go in (batch by batch, so the dispatcher never
    starts a half-imported campaign) and only then becomes `scheduled` (unless `draft`). Nothing
    is left behind when it is not created: a bad header, --strict with an invalid row, no valid row,
    a failure part way. `processes` (tests, benchmarks): see scheduler.import_pool.judged_chunks.
    """
    experiment = fields.get("experiment")
    # validates message.json (every variant's) before the file is read
    template = compile_template(variants_data(fields["template"], experiment.variants if experiment else None))
    check_header(recipients, template)
    if strict:
        window = fields.get("window")
        refuse_if_invalid(recipients, template, default_region=default_region, processes=processes,
                          zones=window is not None and window.per_recipient)
    with session_factory.begin() as session:
        campaign_id = create_campaign(session, draft=True, scheduled_at=scheduled_at, **fields).id
    try:
        result = import_recipients(session_factory, campaign_id, recipients, default_region=default_region,
                                   processes=processes)
        if result.imported == 0:
            raise ImportRefused("no valid recipient in the file; the campaign was not created", result)
        with session_factory.begin() as session:
            record_audit(session, actor, "campaign.created", "campaign", campaign_id, imported=result.imported,
                         rejected=result.rejected, duplicates=result.duplicates)
            if not draft:
                schedule(session, campaign_id, scheduled_at, actor=actor)
    except BaseException:
        _delete_campaign(session_factory, campaign_id)
        raise
    return campaign_id, result


def discard_draft(runtime: "Runtime", campaign_id: int, *, actor: str | None = None) -> None:
    """Delete a draft and its recipients (the console's "discard" after the import report).
    Only a draft: a campaign that was ever scheduled keeps its history."""
    with runtime.session_factory.begin() as session:
        campaign = get_campaign(session, campaign_id)
        if campaign.status != S.DRAFT.value:
            raise IllegalTransition(campaign_id, campaign.status, "discarded")
        record_audit(session, actor, "campaign.discarded", "campaign", campaign_id, name=campaign.name)
    _delete_campaign(runtime.session_factory, campaign_id)


def _delete_campaign(session_factory: sessionmaker[Session], campaign_id: int) -> None:
    with session_factory.begin() as session:
        session.execute(sa.delete(Message).where(Message.campaign_id == campaign_id))
        session.execute(sa.delete(Campaign).where(Campaign.id == campaign_id))


def list_campaigns(session: Session, *, after_id: int = 0, limit: int | None = None,
                   status: str | None = None) -> list[tuple[Campaign, dict[str, int]]]:
    """Campaigns in id order from `after_id` (keyset), each with its message counts per status;
    only those in `status` when given."""
    rows = list_campaign_rows(session, after_id=after_id, limit=limit, status=status)
    counts = status_counts_many(session, [c.id for c in rows]) if rows else {}
    return [(c, counts.get(c.id) or empty_counts()) for c in rows]


def list_campaign_rows(session: Session, *, after_id: int = 0, limit: int | None = None,
                       status: str | None = None) -> list[Campaign]:
    """`list_campaigns` without the counts (for a caller that has them from tally snapshots)."""
    query = sa.select(Campaign).where(Campaign.id > after_id).order_by(Campaign.id)
    if status is not None:
        query = query.where(Campaign.status == status)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


class NoRecipients(ButtoncastError):
    def __init__(self, campaign_id: int) -> None:
        super().__init__(f"campaign {campaign_id} has no recipients to take the variables from")


def send_test(runtime: "Runtime", campaign_id: int, phone: str, *, actor: str | None = None) -> int:
    """The campaign's message, filled with its first recipient's variables, to `phone` now.

    It goes through the normal send path as an ad-hoc message (rate limit, retries, audit trail),
    so the campaign's counts are untouched. Returns the new message id."""
    from worker.sending.enqueue import enqueue_message

    with runtime.session_factory() as session:
        campaign = get_campaign(session, campaign_id)
        content = session.scalar(sa.select(Message.content).where(Message.campaign_id == campaign_id).order_by(Message.id).limit(1))
    if content is None:
        raise NoRecipients(campaign_id)
    return enqueue_message(phone=phone, phone_number_id=campaign.phone_number_id, runtime=runtime, actor=actor, **content)


def create_from_options(
    runtime: "Runtime",
    recipients: str | os.PathLike[str],
    *,
    name: Any,
    template: Any,
    at: str | datetime | None = None,
    window: str | None = None,
    tz: str | None = None,
    phone_number_id: str | None = None,
    draft: bool = False,
    strict: bool = False,
    require_open_window: bool = False,
    expires_at: str | datetime | None = None,
    opt_out_button: str | None = None,
    default_region: str | None = None,
    actor: str | None = None,
    save_attributes: bool = True,
    variants: list | None = None,
    variant_labels: list[str] | None = None,
    test_share: Any = None,
    decide_after: Any = None,
    metric: Any = None,
    default_variant: Any = None,
) -> tuple[Campaign, ImportResult]:
    """`campaign create`, `POST /v1/campaigns` and the console's New campaign: their options as
    they come (`at`/`expires_at` as ISO 8601 text or a datetime; `default_region` as a region,
    default DEFAULT_COUNTRY_CODE): parse them, default the sender, create and import. Returns the
    stored campaign and the import. `save_attributes`: then store the file's columns on the
    contacts of its valid phones (`result.attributes`; `--no-save-attributes` skips it).
    `variants` (instead of `template`): an A/B test (scheduler.experiments.plan checks its options).
    (The console's New campaign calls scheduler.preflight.create_checked: every problem at once.)"""
    from worker.contacts.attributes import store_campaign_attributes
    from worker.window import parse_window

    scheduled_at = parse_at(at, "at") if isinstance(at, str) else at
    expires = parse_at(expires_at, "expires_at") if isinstance(expires_at, str) else expires_at
    send_window = parse_window(window, tz)
    experiment = experiment_plan(runtime, template, variants, labels=variant_labels, test_share=test_share,
                                 decide_after=decide_after, metric=metric, default_variant=default_variant,
                                 opt_out_button=opt_out_button)
    if experiment is not None:
        template = experiment.variants[0]
    elif not isinstance(template, Mapping):
        raise MessageInvalid([FieldProblem("message", "must be a JSON object with body_text and buttons")])
    elif opt_out_button:
        template = with_opt_out_button(template, opt_out_button, opt_out_button_ids=runtime.settings.opt_out_button_ids)
    sender = phone_number_id or runtime.settings.awal_phone_number_id
    if not sender:
        raise MessageInvalid([FieldProblem("phone_number_id", "is required: pass it or set AWAL_PHONE_NUMBER_ID")])
    campaign_id, result = create_with_recipients(
        runtime.session_factory, recipients, strict=strict, draft=draft, scheduled_at=scheduled_at, actor=actor,
        name=name, phone_number_id=sender, template=template, window=send_window,
        require_open_window=bool(require_open_window), expires_at=expires, experiment=experiment,
        default_region=default_region or runtime.settings.default_country_code,
    )
    if save_attributes:   # after the import: a refused file (strict) stores nothing
        result.attributes = store_campaign_attributes(
            runtime, recipients, actor=actor, default_region=default_region or runtime.settings.default_country_code,
            campaign_id=campaign_id)
    with runtime.session_factory() as session:
        return get_campaign(session, campaign_id), result


def experiment_plan(runtime: "Runtime", template: Any, variants: list | None, *, labels: list[str] | None = None,
                    opt_out_button: str | None = None, **options: Any) -> "experiments.Plan | None":
    """An A/B test's options checked (None when no `variants` were given and no test option either).
    Each variant gets the campaign's opt-out button, as a single message would."""
    given = {k: v for k, v in options.items() if v is not None}
    if variants is None:
        if given:
            names = ", ".join(sorted(given))
            raise MessageInvalid([FieldProblem(sorted(given)[0], f"{names} belong(s) to an A/B test; give 2 or 3 variants")])
        return None
    if template is not None:
        raise MessageInvalid([FieldProblem("variants", "give the message or its variants, not both")])

    def add_opt_out(message: Mapping[str, Any]) -> dict[str, Any]:
        if not opt_out_button:
            return dict(message)
        return with_opt_out_button(message, opt_out_button, opt_out_button_ids=runtime.settings.opt_out_button_ids)

    return experiments.plan(variants, labels=labels, opt_out_button=add_opt_out, **options)
