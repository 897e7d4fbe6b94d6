"""A/B tests of a button message: variants, a test group, an honest automatic winner.

A campaign with 2-3 variants (`campaigns.variants`, the first also its `template`) has an
`experiments` row. Its life, driven by the dispatcher's tick (`tick`):

1. **Import / resolution.** Every recipient's row is filled with every variant
   (scheduler.template.VariantsTemplate: a row that any variant cannot carry is rejected, so
   nothing invalid is ever sent), then `assign` gives each one its part in one set-based UPDATE:
   a deterministic bucket of (campaign, phone) (`bucket`: the first 32 bits of an MD5, the same in
   Python and in Postgres) puts a `test_share` of the recipients in the test group, split evenly
   over the variants (`variant` set, `pending`); the rest are `held` (the dispatcher never takes
   them) with every variant's message kept in `alternatives`. A retry, a redelivery or a second
   import never changes a person's variant: it is a column, set once.
2. **testing**: the dispatcher sends the test group. When none of it is left to send
   (pending, queued, sending), the clock starts: `decide_at` = now + `decide_after`.
   **waiting**: while the campaign is paused the clock stops (`decide_at` moves by the pause).
3. **decided** (`decide`): at `decide_at`, or earlier by an operator (`campaign decide ID --variant B`,
   attributed in the audit trail), the metric's counts per variant go through
   scheduler.significance; the winner (or, with no clear winner, `default_variant`) is written on
   every held message, which becomes `pending`, in one UPDATE in the same transaction as the decision.
`test_share` 1: every recipient gets a variant and the test only reports (phase `report`).

The metric: `taps` (a tap on any button that is not an opt-out button, OPT_OUT_BUTTON_IDS),
`replies` (any reply: a tap or a text), `reads` (a read receipt), each out of the variant's sent
messages.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler import significance
from scheduler.template import VARIANTS_KEY, check_template
from worker.audit import record_audit
from worker.durations import format_duration, parse_duration
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import Campaign, Experiment, Message, utcnow
from worker.status import CampaignStatus, MessageStatus

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

LETTERS = "ABC"
MIN_VARIANTS, MAX_VARIANTS = 2, 3
METRICS = ("taps", "replies", "reads")
DEFAULT_METRIC = "taps"
TESTING, WAITING, DECIDED, REPORT = "testing", "waiting", "decided", "report"
BUCKETS = 1 << 32          # bucket() is a 32-bit number
PENDING, HELD = MessageStatus.PENDING.value, MessageStatus.HELD.value
UNSENT = (MessageStatus.PENDING.value, MessageStatus.QUEUED.value, MessageStatus.SENDING.value)
#: campaigns whose test the tick follows (a cancelled one is never decided: nobody is left to send to)
CLOCKED = (CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value, CampaignStatus.COMPLETED.value)


class ExperimentError(ButtoncastError):
    """An operator's request the experiment cannot take (decided already, report only, unknown variant)."""


# ---------------------------------------------------------------------------------------------
# the plan: options checked all at once


@dataclass(frozen=True)
class Plan:
    """An A/B test as asked for: the variants' messages (A, B[, C]) and how to decide."""

    variants: tuple[dict, ...]
    test_share: float
    decide_after_s: int | None
    metric: str
    default_variant: str

    @property
    def letters(self) -> str:
        return LETTERS[:len(self.variants)]


def plan(variants: Any, *, test_share: Any = None, decide_after: Any = None, metric: Any = None,
         default_variant: Any = None, labels: Sequence[str] | None = None,
         opt_out_button: Any = None) -> Plan:
    """Check an A/B test's options together; MessageInvalid lists every problem, each named by
    its field (a variant by `labels[i]`, e.g. its file name, else `variants[i]`).

    `opt_out_button(message) -> message` (optional) appends the campaign's opt-out button to each."""
    problems: list[FieldProblem] = []
    items = list(variants) if isinstance(variants, (list, tuple)) else None
    if items is None:
        raise MessageInvalid([FieldProblem("variants", "must be a list of 2 or 3 messages")])
    if not MIN_VARIANTS <= len(items) <= MAX_VARIANTS:
        problems.append(FieldProblem("variants", f"has {len(items)} message(s); an A/B test takes "
                                                 f"{MIN_VARIANTS} or {MAX_VARIANTS} variants"))
    checked: list[dict] = []
    for i, message in enumerate(items[:MAX_VARIANTS]):
        label = labels[i] if labels and i < len(labels) else f"variants[{i}]"
        if not isinstance(message, Mapping):
            problems.append(FieldProblem(label, "must be a JSON object with body_text and buttons"))
            continue
        try:
            message = opt_out_button(message) if opt_out_button else message
            check_template(message)
            checked.append(dict(message))
        except MessageInvalid as exc:
            problems.extend(FieldProblem(f"{label}: {p.field}", p.problem) for p in exc.problems)
    share = 1.0 if test_share is None else test_share
    if isinstance(share, str):
        try:
            share = float(share)
        except ValueError:
            problems.append(FieldProblem("test_share", f"{test_share!r} is not a number; give a share in (0, 1], e.g. 0.2"))
            share = None
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
        problems.append(FieldProblem("test_share", f"{test_share!r} is outside (0, 1]; e.g. 0.2 tests on a fifth, "
                                                   "1 sends every variant to an even split and only reports"))
        share = None
    after_s = None
    if decide_after is not None:
        try:
            after_s = int(parse_duration(decide_after, "decide_after").total_seconds())
        except MessageInvalid as exc:
            problems.extend(exc.problems)
    if share is not None and share < 1 and decide_after is None:
        problems.append(FieldProblem("decide_after", "is required with a test share below 1: how long after the "
                                                     "test group is sent to choose the winner (e.g. 4h)"))
    if share == 1 and decide_after is not None:
        problems.append(FieldProblem("decide_after", "has no use with test_share 1: every recipient gets a variant "
                                                     "and there is no winner step"))
    chosen_metric = DEFAULT_METRIC if metric is None else metric
    if chosen_metric not in METRICS:
        problems.append(FieldProblem("metric", f"{metric!r} is not a metric; use one of {', '.join(METRICS)}"))
    default = "A" if default_variant is None else str(default_variant).strip().upper()
    if default not in LETTERS[:max(len(items), 1)]:
        problems.append(FieldProblem("default_variant", f"{default_variant!r} is not one of the variants "
                                                        f"({', '.join(LETTERS[:len(items)]) or 'none'})"))
    if problems:
        raise MessageInvalid(problems)
    return Plan(tuple(checked), float(share), after_s, chosen_metric, default)


def start(session: Session, campaign: Campaign, experiment: Plan) -> Experiment:
    """The experiment row of a campaign just created (flushed with it)."""
    campaign.variants = [dict(v) for v in experiment.variants]
    row = Experiment(campaign_id=campaign.id, test_share=experiment.test_share,
                     decide_after_s=experiment.decide_after_s, metric=experiment.metric,
                     default_variant=experiment.default_variant,
                     phase=REPORT if experiment.test_share >= 1 else TESTING)
    session.add(row)
    session.flush()
    return row


# ---------------------------------------------------------------------------------------------
# assignment


def bucket(campaign_id: int, phone: str) -> int:
    """The recipient's fixed place in [0, 2**32): the first 8 hex digits of MD5("<campaign>:<phone>").
    Postgres computes the same number in `assign` (a test holds the two equal)."""
    return int(hashlib.md5(f"{campaign_id}:{phone}".encode()).hexdigest()[:8], 16)


def threshold(test_share: float) -> int:
    """Buckets below this are in the test group."""
    return min(BUCKETS, max(1, round(test_share * BUCKETS)))


def variant_of(campaign_id: int, phone: str, test_share: float, variants: int) -> str | None:
    """The variant this recipient gets in the test group, or None (held for the winner)."""
    b, t = bucket(campaign_id, phone), threshold(test_share)
    return LETTERS[b * variants // t] if b < t else None


_PG_ASSIGN = """
UPDATE messages m SET
    variant = a.variant,
    status = CASE WHEN a.variant IS NULL THEN 'held' ELSE m.status END,
    content = CASE WHEN a.variant IS NULL THEN m.content -> 'variants' -> CAST(:default_variant AS text)
                   ELSE m.content -> 'variants' -> a.variant END,
    alternatives = CASE WHEN a.variant IS NULL THEN m.content -> 'variants' END,
    updated_at = :now
FROM (
    SELECT id, CASE WHEN b < CAST(:threshold AS bigint)
                     THEN chr(65 + CAST((b * CAST(:k AS bigint)) / CAST(:threshold AS bigint) AS integer)) END AS variant
    FROM (SELECT id, ('x' || substr(md5(campaign_id::text || ':' || phone), 1, 8))::bit(32)::bigint AS b
          FROM messages WHERE campaign_id = :campaign_id AND status = 'pending' AND variant IS NULL) s
) a
WHERE m.id = a.id
"""


def assign(session: Session, campaign_id: int) -> int:
    """Give every stored recipient of an A/B test that has none its part (test variant or held);
    returns how many. Rows filled with every variant (VariantsTemplate) only: a no-op otherwise."""
    campaign = session.get(Campaign, campaign_id)
    experiment = session.get(Experiment, campaign_id)
    if campaign is None or experiment is None or not campaign.variants:
        return 0
    now = utcnow()
    k, t = len(campaign.variants), threshold(experiment.test_share)
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(sa.text(_PG_ASSIGN).bindparams(sa.bindparam("now", type_=Message.updated_at.type)),
                               dict(campaign_id=campaign_id, k=k, threshold=t, now=now,
                                    default_variant=experiment.default_variant)).rowcount
    rows = session.execute(sa.select(Message.id, Message.phone, Message.content).where(
        Message.campaign_id == campaign_id, Message.status == PENDING, Message.variant.is_(None))).all()
    updates = []
    for message_id, phone, content in rows:
        bundle = (content or {}).get(VARIANTS_KEY)
        if not isinstance(bundle, dict):
            continue   # not filled with the variants (cannot happen in an A/B test's import)
        b = bucket(campaign_id, phone)
        letter = LETTERS[b * k // t] if b < t else None
        updates.append(dict(id=message_id, variant=letter, status=PENDING if letter else HELD,
                            content=bundle[letter or experiment.default_variant],
                            alternatives=None if letter else bundle, updated_at=now))
    if updates:
        session.execute(sa.update(Message), updates)
    return len(updates)


# ---------------------------------------------------------------------------------------------
# the tick: the test group's end starts the clock; a pause stops it; the time decides


def tick(runtime: "Runtime", now: datetime) -> list[int]:
    """One pass over the running tests (the dispatcher's tick); returns the campaigns decided now."""
    decided = []
    with runtime.session_factory() as session:
        live = session.execute(
            sa.select(Experiment.campaign_id, Experiment.phase, Experiment.decide_at, Experiment.clock_paused_at,
                      Campaign.status)
            .join(Campaign, Campaign.id == Experiment.campaign_id)
            .where(Experiment.phase.in_((TESTING, WAITING)), Campaign.status.in_(CLOCKED))).all()
    for row in live:
        # completed: nobody was held (a small audience, a high share); the test is still decided and shown
        running = row.status != CampaignStatus.PAUSED.value
        with runtime.session_factory.begin() as session:
            if row.phase == TESTING and running and not _test_unsent(session, row.campaign_id):
                _start_clock(session, row.campaign_id, now)
            elif row.phase == WAITING and not running and row.clock_paused_at is None:
                _guarded(session, row.campaign_id, WAITING, clock_paused_at=now)
            elif row.phase == WAITING and running and row.clock_paused_at is not None:
                _guarded(session, row.campaign_id, WAITING, clock_paused_at=None,
                         decide_at=row.decide_at + (now - row.clock_paused_at))
            elif row.phase == WAITING and running and row.decide_at is not None and row.decide_at <= now:
                if _decide(session, row.campaign_id, now, runtime.settings.opt_out_button_ids) is not None:
                    decided.append(row.campaign_id)
    return decided


def _test_unsent(session: Session, campaign_id: int) -> bool:
    return session.scalar(sa.select(sa.exists().where(
        Message.campaign_id == campaign_id, Message.status.in_(UNSENT), Message.variant.is_not(None)))) or False


def _start_clock(session: Session, campaign_id: int, now: datetime) -> None:
    experiment = session.get(Experiment, campaign_id)
    if experiment is None:
        return
    _guarded(session, campaign_id, TESTING, phase=WAITING, test_done_at=now,
             decide_at=now + timedelta(seconds=experiment.decide_after_s or 0))
    log.info("campaign %s: the A/B test group is sent; the winner is chosen in %s", campaign_id,
             format_duration(experiment.decide_after_s or 0))


def _guarded(session: Session, campaign_id: int, current: str, **values: Any) -> bool:
    """Change the experiment only if it is still in phase `current` (two ticks never both act)."""
    return session.execute(sa.update(Experiment).where(Experiment.campaign_id == campaign_id, Experiment.phase == current)
                           .values(**values).execution_options(synchronize_session=False)).rowcount == 1


# ---------------------------------------------------------------------------------------------
# the decision


def metric_counts(session: Session, campaign_id: int, metric: str,
                  opt_out_button_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """{variant: (successes, sent)} over the messages of each variant that were sent."""
    success = _success(metric, opt_out_button_ids)
    rows = session.execute(
        sa.select(Message.variant, sa.func.count(sa.case((success, 1))), sa.func.count())
        .where(Message.campaign_id == campaign_id, Message.variant.is_not(None), Message.sent_at.is_not(None))
        .group_by(Message.variant)).all()
    return {variant: (successes, sent) for variant, successes, sent in rows}


def _success(metric: str, opt_out_button_ids: Iterable[str]) -> sa.ColumnElement[bool]:
    if metric == "reads":
        return Message.read_at.is_not(None)
    if metric == "replies":
        return Message.replied_at.is_not(None)
    opt_outs = sorted(set(opt_out_button_ids))
    tapped = sa.and_(Message.reply_button_id.is_not(None), Message.reply_button_id != "")
    return sa.and_(tapped, Message.reply_button_id.not_in(opt_outs)) if opt_outs else tapped


def decide(runtime: "Runtime", campaign_id: int, *, variant: str | None = None, actor: str | None = None,
           now: datetime | None = None) -> Experiment:
    """Decide now: `variant` (an operator's choice) or the statistics' verdict; the held recipients
    get the chosen variant and are sent. ExperimentError when there is nothing to decide."""
    now = now or utcnow()
    with runtime.session_factory.begin() as session:
        experiment = session.get(Experiment, campaign_id)
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            from worker.lifecycle import CampaignNotFound
            raise CampaignNotFound(campaign_id)
        if experiment is None:
            raise ExperimentError(f"campaign {campaign_id} is not an A/B test (it has one message)")
        if experiment.phase == REPORT:
            raise ExperimentError(f"campaign {campaign_id} sends every variant to everyone (test share 1): "
                                  "there is no winner step to decide")
        if experiment.phase == DECIDED:
            raise ExperimentError(f"campaign {campaign_id} was decided already: variant {experiment.sent_variant} "
                                  f"at {experiment.decided_at:%Y-%m-%d %H:%M} UTC")
        if campaign.status == CampaignStatus.CANCELLED.value:
            raise ExperimentError(f"campaign {campaign_id} is cancelled: nobody is left to send the winner to")
        letters = LETTERS[:len(campaign.variants or [])]
        if variant is not None and str(variant).strip().upper() not in letters:
            raise MessageInvalid([FieldProblem("variant", f"{variant!r} is not one of this campaign's variants "
                                                          f"({', '.join(letters)})")])
        chosen = _decide(session, campaign_id, now, runtime.settings.opt_out_button_ids,
                         variant=None if variant is None else str(variant).strip().upper(), actor=actor)
        if chosen is None:
            raise ExperimentError(f"campaign {campaign_id} was decided meanwhile; see `campaign show {campaign_id}`")
        return chosen


def _decide(session: Session, campaign_id: int, now: datetime, opt_out_button_ids: Iterable[str], *,
            variant: str | None = None, actor: str | None = None) -> Experiment | None:
    experiment = session.get(Experiment, campaign_id)
    if experiment is None or not _guarded(session, campaign_id, experiment.phase, phase=DECIDED, decided_at=now):
        return None
    session.refresh(experiment)
    counts = metric_counts(session, campaign_id, experiment.metric, opt_out_button_ids)
    letters = LETTERS[:len(session.get(Campaign, campaign_id).variants or [])]
    verdict = significance.decide({letter: counts.get(letter, (0, 0)) for letter in letters})
    sent = variant or verdict.winner or experiment.default_variant
    decision = {**verdict.as_dict(), "metric": experiment.metric, "chosen_by": "operator" if variant else "engine",
                "sent_variant": sent}
    if variant is None and verdict.winner is None:
        decision["reason"] += f"; the default variant {experiment.default_variant} is sent"
    released = _release(session, campaign_id, sent, now)
    session.execute(sa.update(Experiment).where(Experiment.campaign_id == campaign_id).values(
        sent_variant=sent, winner=verdict.winner, decision={**decision, "released": released}, decided_by=actor)
        .execution_options(synchronize_session=False))
    record_audit(session, actor, "campaign.decided", "campaign", campaign_id, variant=sent, winner=verdict.winner,
                 outcome=verdict.outcome, released=released)
    log.info("campaign %s: A/B test decided: %s (%s); %s held recipient(s) get variant %s",
             campaign_id, verdict.outcome, verdict.reason, released, sent)
    session.refresh(experiment)
    return experiment


def _release(session: Session, campaign_id: int, letter: str, now: datetime) -> int:
    """Every held recipient gets `letter` (its filled message from `alternatives`) and is pending."""
    if session.get_bind().dialect.name == "postgresql":
        content = sa.type_coerce(Message.alternatives, sa.JSON)[letter]
    else:
        content = sa.func.json_extract(Message.alternatives, f"$.{letter}")
    return session.execute(
        sa.update(Message).where(Message.campaign_id == campaign_id, Message.status == HELD)
        .values(status=PENDING, variant=letter, content=content, alternatives=None, updated_at=now)
        .execution_options(synchronize_session=False)).rowcount


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class VariantResult:
    letter: str
    message: dict
    recipients: int
    sent: int
    delivered: int
    read: int
    replied: int
    tapped: int                     # taps on any button that is not an opt-out button
    taps: dict[str, int]            # per button id (opt-out buttons included)
    metric: significance.Rate


def results(session: Session, campaign_id: int, opt_out_button_ids: Iterable[str]) -> dict[str, Any] | None:
    """An A/B test's state and figures per variant (None for a campaign of one message): what
    `campaign show`, the report, the API's campaign resource and the console's page show."""
    experiment = session.get(Experiment, campaign_id)
    campaign = session.get(Campaign, campaign_id)
    if experiment is None or campaign is None:
        return None
    opt_outs = set(opt_out_button_ids)
    tap = _success("taps", opt_outs)
    rows = {r.variant: r for r in session.execute(
        sa.select(Message.variant, sa.func.count().label("recipients"),
                  sa.func.count(Message.sent_at).label("sent"), sa.func.count(Message.delivered_at).label("delivered"),
                  sa.func.count(Message.read_at).label("read"), sa.func.count(Message.replied_at).label("replied"),
                  sa.func.count(sa.case((tap, 1))).label("tapped"),
                  sa.func.count(sa.case((sa.and_(Message.sent_at.is_not(None), _success(experiment.metric, opt_outs)), 1)))
                  .label("successes"))
        .where(Message.campaign_id == campaign_id, Message.variant.is_not(None)).group_by(Message.variant))}
    taps: dict[str, dict[str, int]] = {}
    for letter, button, n in session.execute(
            sa.select(Message.variant, Message.reply_button_id, sa.func.count())
            .where(Message.campaign_id == campaign_id, Message.reply_button_id.is_not(None),
                   Message.reply_button_id != "", Message.variant.is_not(None))   # "": a text reply, not a tap
            .group_by(Message.variant, Message.reply_button_id)):
        taps.setdefault(letter, {})[button] = n
    held = session.scalar(sa.select(sa.func.count()).select_from(Message).where(
        Message.campaign_id == campaign_id, Message.status == HELD)) or 0
    variants = []
    for i, message in enumerate(campaign.variants or []):
        letter = LETTERS[i]
        r = rows.get(letter)
        get = (lambda name, r=r: getattr(r, name) if r is not None else 0)
        variants.append(VariantResult(letter, message, get("recipients"), get("sent"), get("delivered"), get("read"),
                                      get("replied"), get("tapped"), taps.get(letter, {}),
                                      significance.rate(get("successes"), get("sent"))))
    return {"phase": experiment.phase, "campaign_status": campaign.status, "test_share": experiment.test_share,
            "decide_after": format_duration(experiment.decide_after_s) if experiment.decide_after_s else None,
            "metric": experiment.metric, "default_variant": experiment.default_variant,
            "test_done_at": experiment.test_done_at, "decide_at": experiment.decide_at,
            "clock_paused": experiment.clock_paused_at is not None, "decided_at": experiment.decided_at,
            "decided_by": experiment.decided_by, "sent_variant": experiment.sent_variant,
            "winner": experiment.winner, "decision": experiment.decision, "held": held, "variants": variants}


def verdict_now(result: Mapping[str, Any]) -> significance.Verdict:
    """What the decision would say now, on the figures `results` returned (the same counts as
    `metric_counts`: each variant's successes out of its sent messages)."""
    return significance.decide({v.letter: (v.metric.successes, v.metric.trials) for v in result["variants"]})


def describe_lines(result: Mapping[str, Any]) -> list[str]:
    """The test in words, for `campaign show` (one line each)."""
    lines = [f"A/B test: {len(result['variants'])} variants, metric {result['metric']}, "
             + ("every recipient in the test (report only)" if result["test_share"] >= 1 else
                f"test group {result['test_share']:.0%}, winner {result['decide_after']} after the test group is sent"
                f" (default {result['default_variant']})")]
    for v in result["variants"]:
        m = v.metric
        rate = "n/a" if m.rate is None else f"{m.rate:.1%} [{m.low:.1%}, {m.high:.1%}]"
        buttons = ", ".join(f"{b} {n}" for b, n in sorted(v.taps.items())) or "none"
        lines.append(f"  variant {v.letter}: {v.recipients} recipient(s), sent {v.sent}, delivered {v.delivered}, "
                     f"read {v.read}, tapped {v.tapped} (by button: {buttons}); {result['metric']} rate {rate}")
    phase = result["phase"]
    if phase in (TESTING, WAITING) and result.get("campaign_status") == CampaignStatus.CANCELLED.value:
        lines.append("  cancelled before a decision: no winner was chosen, and the held recipients were not sent")
    elif phase == TESTING:
        lines.append(f"  testing: {result['held']} recipient(s) held for the winner until the test group is sent")
    elif phase == WAITING:
        paused = " (clock stopped while the campaign is paused)" if result["clock_paused"] else ""
        lines.append(f"  waiting: the winner is chosen at {result['decide_at']:%Y-%m-%d %H:%M:%S} UTC{paused}; "
                     f"{result['held']} recipient(s) held")
    elif phase == DECIDED:
        decision = result["decision"] or {}
        who = f"by {result['decided_by']}" if result["decided_by"] else "by the engine"
        lines.append(f"  decided {who} at {result['decided_at']:%Y-%m-%d %H:%M:%S} UTC: "
                     f"{decision.get('outcome', '?')}; variant {result['sent_variant']} sent to the rest "
                     f"({decision.get('released', 0)} recipient(s))")
        if decision.get("reason"):
            lines.append(f"  why: {decision['reason']}")
    return lines
