"""The API's request and response shapes (pydantic): they make the OpenAPI document.

Request bodies of messages and campaigns are *documented* by these models but validated by the
project's own rules (worker.message, scheduler.*), so an error names `buttons[0].title` with the
CLI's wording. Responses are built from what the service functions return.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.zones import zone_table
from worker import message as limits
from worker.failures import FailureClass
from worker.models import utcnow
from worker.status import MessageStatus


class FieldError(BaseModel):
    field: str = Field(examples=["buttons[0].title"])
    problem: str = Field(examples=["is 21 characters; the limit is 20"])


class RejectedRow(BaseModel):
    line: int
    reason: str


class ProblemDetail(BaseModel):
    """RFC 9457 problem details; `errors` for invalid input, `rejected` when an import was refused."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(examples=["urn:buttoncast:problem:validation-failed"])
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None
    rejected: list[RejectedRow] | None = None


# --- messages ------------------------------------------------------------------------------

class ButtonIn(BaseModel):
    id: str = Field(min_length=1, max_length=limits.BUTTON_ID_MAX_CHARS)
    title: str = Field(min_length=1, max_length=limits.BUTTON_TITLE_MAX_CHARS)


class MessageIn(BaseModel):
    """One button message: the `send_task` payload's fields (the key goes in the Idempotency-Key header)."""

    model_config = ConfigDict(extra="forbid")
    phone: str = Field(examples=["96650000000"], description="international format; +, spaces and dashes are removed")
    body_text: str = Field(min_length=1, max_length=limits.BODY_TEXT_MAX_CHARS)
    buttons: list[ButtonIn] = Field(min_length=limits.BUTTONS_MIN, max_length=limits.BUTTONS_MAX)
    header_text: str | None = Field(None, max_length=limits.HEADER_TEXT_MAX_CHARS)
    footer_text: str | None = Field(None, max_length=limits.FOOTER_TEXT_MAX_CHARS)
    phone_number_id: str | None = Field(None, max_length=64, description="sender; default AWAL_PHONE_NUMBER_ID")
    require_open_window: bool = Field(False, description="hold it (suppressed, window_closed) unless the contact wrote in the last 24 h")
    expires_at: datetime | None = Field(None, description="not sent by then (ISO 8601 with offset): expired, never delivered late")


class MessageCreated(BaseModel):
    id: int
    status: str


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    started_at: datetime
    duration_ms: int
    http_status: int | None
    outcome: str
    error_code: str | None
    error_message: str | None
    request_id: str | None
    vendor_message_id: str | None
    worker: str | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: datetime
    from_status: str | None
    to_status: str
    reason: str
    actor: str | None


class MessageSummary(BaseModel):
    id: int
    campaign_id: int | None
    phone: str
    phone_number_id: str
    status: MessageStatus
    attempt_count: int = Field(description="HTTP attempts; 429s not counted")
    vendor_id: int | None
    vendor_message_id: str | None
    vendor_status: str | None
    delivery_status: str | None
    failure_class: str | None = Field(description="the last error code (e.g. validation_failed, http_503, read_timeout)")
    last_error_message: str | None
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    replied_at: datetime | None
    reply_button_id: str | None
    variant: str | None = Field(None, description="an A/B test's variant this person gets (A, B, C); null while "
                                                  "held for the winner, and for a message of no A/B test")

    @classmethod
    def of(cls, m: Any) -> "MessageSummary":
        return cls(id=m.id, campaign_id=m.campaign_id, phone=m.phone, phone_number_id=m.phone_number_id,
                   status=m.status, attempt_count=m.attempts, vendor_id=m.vendor_id, vendor_message_id=m.vendor_message_id,
                   vendor_status=m.vendor_status, delivery_status=m.delivery_status, failure_class=m.last_error_code,
                   last_error_message=m.last_error_message, created_at=m.created_at, sent_at=m.sent_at,
                   delivered_at=m.delivered_at, read_at=m.read_at, replied_at=m.replied_at, reply_button_id=m.reply_button_id,
                   variant=m.variant)


class MessageDetail(MessageSummary):
    content: dict[str, Any]
    last_request_id: str | None
    idempotency_key: str | None
    queued_at: datetime | None
    not_before: datetime | None
    attempts: list[AttemptOut]
    events: list[EventOut]


class MessagePage(BaseModel):
    data: list[MessageSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last one")


# --- campaigns -----------------------------------------------------------------------------

class MessageTemplateIn(BaseModel):
    """message.json: {{column}} placeholders allowed in header, body and footer."""

    header_text: str | None = None
    body_text: str
    footer_text: str | None = None
    buttons: list[ButtonIn] = Field(min_length=limits.BUTTONS_MIN, max_length=limits.BUTTONS_MAX)


# --- A/B tests: the create's fields (scheduler.experiments.plan checks them) ------------------------

VARIANTS_DOC = ("an A/B test: 2 or 3 messages (variants A, B, C) in place of `message`, each checked as `message` "
                "is; a problem is named `variants[i]: <field>`")
TEST_SHARE_DOC = ("the share of the recipients in the test group, split evenly over the variants, in (0, 1]; "
                  "default 1: every recipient gets a variant and the test only reports (no winner step)")
DECIDE_AFTER_DOC = ("with test_share below 1 (and only then): the winner is chosen this long after the test group "
                    "is sent (30s, 15m, 4h, 1d); the clock stops while the campaign is paused")
METRIC_DOC = "what wins: taps (on any button but an opt-out one; the default), replies or reads, out of those sent"
DEFAULT_VARIANT_DOC = "sent to the rest when no variant clearly wins (default A)"


class ExperimentOptions(BaseModel):
    """The A/B test fields of a create (give `variants` instead of `message`)."""

    variants: list[MessageTemplateIn] | None = Field(None, min_length=2, max_length=3, description=VARIANTS_DOC)
    test_share: float | None = Field(None, gt=0, le=1, examples=[0.2], description=TEST_SHARE_DOC)
    decide_after: str | None = Field(None, examples=["4h"], description=DECIDE_AFTER_DOC)
    metric: Literal["taps", "replies", "reads"] | None = Field(None, description=METRIC_DOC)
    default_variant: Literal["A", "B", "C"] | None = Field(None, description=DEFAULT_VARIANT_DOC)


class CampaignOptions(BaseModel):
    at: str | None = Field(None, description="start, ISO 8601 with offset; default: the next dispatcher tick",
                           examples=["2026-12-01T09:00:00+03:00"])
    window: str | None = Field(None, examples=["09:00-21:00"], description="daily send window, HH:MM-HH:MM")
    tz: str | None = Field(None, examples=["Asia/Riyadh"],
                           description='the window\'s IANA time zone, or "recipient": each recipient\'s own zone(s)')
    phone_number_id: str | None = None
    draft: bool = False
    strict: bool = Field(False, description="refuse the whole file if any row is invalid")
    require_open_window: bool = Field(False, description="hold recipients whose 24-hour window is closed at send time")
    expires_at: str | None = Field(None, description="not sent by then (ISO 8601 with offset): expired")
    opt_out_button: str | None = Field(None, examples=["stop:Stop offers"],
                                       description="append an opt-out reply button ID:TITLE (ID in OPT_OUT_BUTTON_IDS)")
    save_attributes: bool = Field(True, description="keep the file's columns on the contacts (every column but phone "
                                                    "as an attribute, a `tags` column as tags); false skips it")


class CampaignJsonIn(CampaignOptions, ExperimentOptions):
    """A small campaign in one JSON body: recipients as a list of objects with `phone` and the variables."""

    name: str = Field(max_length=200)
    message: MessageTemplateIn | None = Field(None, description="required unless `variants` are given")
    recipients: list[dict[str, str | int | float | None]]


class CampaignSegmentIn(ExperimentOptions):
    """A campaign whose recipients are a saved segment's members when it starts (no file); with
    `every`, a series: one run per period, each resolving the segment at its own start."""

    name: str = Field(max_length=200)
    message: MessageTemplateIn | None = Field(None, description="required unless `variants` are given")
    segment_id: int = Field(ge=1, description="the saved segment (`/v1/segments`)")
    every: str | None = Field(None, examples=["1w"], description="repeat: one run every 1d, 7d, 1w (at least 1h)")
    until: str | None = Field(None, description="with every: no run after this time (ISO 8601 with offset)")
    at: str | None = Field(None, description="start (a series: its first run), ISO 8601 with offset")
    window: str | None = Field(None, examples=["09:00-21:00"])
    tz: str | None = Field(None, examples=["Asia/Riyadh"], description='IANA zone, or "recipient"')
    phone_number_id: str | None = None
    draft: bool = False
    require_open_window: bool = False
    expires_at: str | None = Field(None, description="not with every")
    opt_out_button: str | None = None


class CampaignMultipartIn(CampaignOptions, ExperimentOptions):
    """A campaign of any size: `recipients` is the CSV file, streamed to disk and imported in batches."""

    name: str = Field(max_length=200)
    message: str | None = Field(None, description="message.json as a JSON string (or a file part); required unless "
                                                  "`variants` are given")
    variants: list[str] | None = Field(None, min_length=2, max_length=3,
                                       description="an A/B test: 2 or 3 `variants` parts in place of `message`, each "
                                                   "a message.json (a JSON string or a file part), in order A, B, C")
    recipients: bytes = Field(json_schema_extra={"format": "binary"}, description="CSV (UTF-8) with a phone column")


class Window(BaseModel):
    start: str
    end: str
    tz: str = Field(description='an IANA time zone, or "recipient": each recipient\'s own zone(s) (see `zones`)')


class ZoneOut(BaseModel):
    """One zone group of a `"recipient"`-zone campaign: the zones its numbers may be in ("|"-joined)."""

    zone: str = Field(examples=["America/Boise|America/Los_Angeles"])
    recipients: int
    open: bool = Field(description="the window is open now in every zone of the group")
    next_opening: datetime | None = Field(description="when it next opens in all of them (UTC); null when open, "
                                                      "or when it does not open within a week")


class CampaignSummary(BaseModel):
    id: int
    name: str
    status: str
    phone_number_id: str
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    window: Window | None
    zones: list[ZoneOut] | None = Field(None, description='window tz "recipient": recipients and window per zone group')
    pause_reason: str | None
    recipients_imported: int
    rows_rejected: int
    counts: dict[str, int]
    total: int

    @classmethod
    def of(cls, c: Any, counts: dict[str, int]) -> "CampaignSummary":
        window = Window(start=c.window_start, end=c.window_end, tz=c.window_tz) if c.window_start else None
        table = zone_table(c, utcnow())
        zones = [ZoneOut(zone=z.zone, recipients=z.recipients, open=z.open, next_opening=z.next_opening)
                 for z in table] if table is not None else None
        return cls(id=c.id, name=c.name, status=c.status, phone_number_id=c.phone_number_id, scheduled_at=c.scheduled_at,
                   started_at=c.started_at, finished_at=c.finished_at, window=window, zones=zones,
                   pause_reason=c.pause_reason, recipients_imported=c.recipients_imported,
                   rows_rejected=c.rows_rejected, counts=counts, total=sum(counts.values()))


class Tap(BaseModel):
    button_id: str | None
    title: str | None
    count: int


class FunnelOut(BaseModel):
    sent: int
    delivered: int
    read: int
    replied: int
    taps: list[Tap]


# --- A/B tests: what they show (scheduler.experiments.results) ----------------------------------

class RateOut(BaseModel):
    successes: int
    trials: int
    rate: float | None
    low: float | None
    high: float | None


class ComparisonOut(BaseModel):
    leader: str
    other: str
    z: float | None
    p_value: float | None = Field(description="one-sided: the chance of a lead this large if both were equal")
    large_enough: bool = Field(description="each sample has 5 successes and 5 failures at the pooled rate")


class DecisionOut(BaseModel):
    """The numbers the decision was taken on (scheduler.significance), as stored when it was taken."""

    model_config = ConfigDict(extra="allow")
    outcome: str = Field(examples=["winner", "no clear winner", "sample too small"])
    reason: str = Field(examples=["B beats A: 31.0% against 18.5% (one-sided p = 0.0004 < 0.05)"])
    winner: str | None = None
    leader: str | None = Field(None, description="the best rate (a winner only when it beats every other)")
    chosen_by: str | None = Field(None, examples=["engine", "operator"])
    sent_variant: str | None = None
    released: int | None = Field(None, description="held recipients who were given the chosen variant")
    metric: str | None = None
    alpha: float | None = Field(None, description="each comparison's threshold: 0.05 / (variants - 1)")
    confidence: float | None = None
    method: str | None = None
    rates: dict[str, RateOut] | None = None
    comparisons: list[ComparisonOut] | None = None


class VariantOut(BaseModel):
    variant: str = Field(examples=["B"])
    message: dict[str, Any] = Field(description="the variant's message.json (with the opt-out button, if any)")
    recipients: int = Field(description="recipients given this variant (the test group's, then the rest's)")
    sent: int
    delivered: int
    read: int
    replied: int
    tapped: int = Field(description="recipients who tapped a button that is not an opt-out button")
    taps: dict[str, int] = Field(description="taps per button id (opt-out buttons included)",
                                 examples=[{"reserve": 31, "stop": 2}])
    rate: float | None = Field(description="the metric's successes out of sent; null while none is sent")
    rate_low: float | None = Field(description="Wilson's 95 % interval of the rate")
    rate_high: float | None

    @classmethod
    def of(cls, v: Any) -> "VariantOut":  # scheduler.experiments.VariantResult
        return cls(variant=v.letter, message=v.message, recipients=v.recipients, sent=v.sent, delivered=v.delivered,
                   read=v.read, replied=v.replied, tapped=v.tapped, taps=v.taps, rate=v.metric.rate,
                   rate_low=v.metric.low, rate_high=v.metric.high)


class ExperimentOut(BaseModel):
    """An A/B test's options, where it is, its figures per variant and the decision."""

    phase: Literal["testing", "waiting", "decided", "report"] = Field(
        description="testing: the test group is being sent; waiting: the clock runs until decide_at; decided; "
                    "report: test_share 1, every recipient got a variant, no winner step")
    test_share: float
    decide_after: str | None
    metric: str
    default_variant: str
    test_done_at: datetime | None = Field(description="when the test group was sent (the clock started)")
    decide_at: datetime | None = Field(description="when the winner is chosen (moves while the campaign is paused)")
    clock_paused: bool
    decided_at: datetime | None
    decided_by: str | None = Field(description="who decided early (the key or operator); null: the engine")
    sent_variant: str | None = Field(description="the variant the rest of the audience got")
    winner: str | None = Field(description="the variant that clearly won; null when none did")
    held: int = Field(description="recipients waiting for the winner")
    decision: DecisionOut | None
    variants: list[VariantOut]

    @classmethod
    def of(cls, result: dict[str, Any] | None) -> "ExperimentOut | None":  # scheduler.experiments.results
        if result is None:
            return None
        return cls(**{k: v for k, v in result.items() if k != "variants"},
                   variants=[VariantOut.of(v) for v in result["variants"]])


class DecideIn(BaseModel):
    variant: str | None = Field(None, max_length=16, examples=["B"],
                                description="the variant to send to the rest; null: the statistics decide now")


class CampaignDetail(CampaignSummary):
    done: int
    left: int
    rate_per_minute: int | None = Field(description="messages sent per minute over the last minute of sending time "
                                                    "(since its latest start or resume, if more recent); null when "
                                                    "it is not running or has just (re)started")
    eta: datetime | None = Field(description="best case: the whole rate limit for this campaign, window not counted; "
                                             "null when nothing is left or it is paused, completed or cancelled")
    funnel: FunnelOut
    late_failures: dict[str, int] = Field(description="sent, then reported failed by the vendor: count per failure class (window_closed, undeliverable, opted_out, ...; README \"Late failures, by class\")")
    counts_as_of: datetime | None = Field(None, description="when the counts, funnel, rate and late failures were "
                                                            "counted (a snapshot at most a few seconds old)")
    experiment: ExperimentOut | None = Field(None, description="an A/B test: its phase, figures per variant and "
                                                               "decision (counted now); null for a campaign of one message")


class CampaignPage(BaseModel):
    data: list[CampaignSummary]
    next_cursor: str | None


class ImportReport(BaseModel):
    id: int = Field(description="the new campaign's id")
    status: str
    imported: int
    rejected: list[RejectedRow] = Field(description="the first rows refused, with their line numbers (all are counted)")
    rejected_total: int
    duplicates: int
    suppressed: int = Field(description="imported recipients who opted out: never sent (suppressed)")
    attributes_stored: int | None = Field(None, description="contacts the file's columns were stored on; "
                                                            "null when save_attributes was false")
    warnings: list[str] = Field(default_factory=list, description="what the request did that it may not have meant, "
                                "e.g. a start time already past (the campaign starts at once)")
    audience: list[str] | None = Field(None, description="a campaign from a segment or a follow-up: its audience, "
                                       "resolved into recipients when it starts (and a series' schedule), in words")
    experiment: ExperimentOut | None = Field(None, description="an A/B test: as on the campaign resource; null for "
                                                               "a campaign of one message")


class FollowUpIn(BaseModel):
    """`POST /v1/campaigns/{id}/follow-up`: a message to one result of the campaign."""

    message: dict[str, Any] = Field(description="message.json; {{placeholders}} fill from the contacts' attributes")
    result: Literal["tapped", "tapped_any", "not_tapped", "not_read"]
    button: str | None = Field(None, description="with result=tapped: the button id", examples=["reserve"])
    at: str | None = Field(None, description="start, ISO 8601 with offset; default: the next dispatcher tick")
    name: str | None = Field(None, max_length=200)


class ScheduleIn(BaseModel):
    at: str | None = Field(None, examples=["2026-12-01T09:00:00+03:00"])


class PauseIn(BaseModel):
    reason: str | None = Field(None, max_length=500)


class TestIn(BaseModel):
    phone: str


class CancelOut(CampaignSummary):
    cancelled_messages: int


# --- contacts ------------------------------------------------------------------------------

class ContactSummary(BaseModel):
    phone: str
    opted_out: bool
    opted_out_at: datetime | None
    opt_out_source: str | None
    opt_out_note: str | None
    opted_in_at: datetime | None

    @classmethod
    def of(cls, c: Any) -> "ContactSummary":
        return cls(phone=c.phone, opted_out=c.opted_out_at is not None, opted_out_at=c.opted_out_at,
                   opt_out_source=c.opt_out_source, opt_out_note=c.opt_out_note, opted_in_at=c.opted_in_at)


class ConsentChangeOut(BaseModel):
    at: datetime
    action: str
    source: str
    reason: str | None
    actor: str | None


class RecentMessageOut(BaseModel):
    id: int
    campaign_id: int | None
    status: str
    created_at: datetime
    sent_at: datetime | None
    reason: str | None


class ContactOut(ContactSummary):
    first_seen_at: datetime
    last_inbound_at: datetime | None
    last_sent_at: datetime | None
    window_open_until: datetime | None = Field(description="the 24-hour customer-service window: last inbound + 24 h")
    window_open: bool
    history: list[ConsentChangeOut]
    recent_messages: list[RecentMessageOut]
    attributes: dict[str, str] = Field(default_factory=dict, examples=[{"name": "Lina", "city": "Riyadh"}],
                                       description="what is known of the person, by name (they fill {{placeholders}})")
    tags: list[str] = Field(default_factory=list, examples=[["vip"]])
    changed: bool | None = Field(None, description="on optout/optin/PATCH: whether this request changed anything")


class OptOutIn(BaseModel):
    reason: str | None = Field(None, max_length=1000)


class ContactPatchIn(BaseModel):
    """Edit a contact's attributes and tags; checked by worker.contacts.attributes (names, lengths,
    counts), whose problems name `attributes.<name>`, `tags_add[i]`, `tags_remove[i]`."""

    model_config = ConfigDict(extra="forbid")
    attributes: dict[str, Any] | None = Field(
        None, examples=[{"city": "Jeddah", "plan": None}],
        description="each name set to its text (a number is kept as text); null or \"\" removes it. Names: "
                    "letters, digits and _, not starting with a digit, at most 64; values at most 1024 characters; "
                    "at most 100 a contact")
    tags_add: list[Any] = Field(default_factory=list, examples=[["vip"]],
                                description="tags to add (trimmed, lower-cased; at most 64 characters, no ';'; at most 50 a contact)")
    tags_remove: list[Any] = Field(default_factory=list, examples=[["trial"]])


class OptOutPage(BaseModel):
    data: list[ContactSummary]
    next_cursor: str | None


# --- retry, limits, health -----------------------------------------------------------------

class RetryIn(BaseModel):
    """The CLI's filters: a campaign with a status (plus error_code, since) or a late-failure `reason`, or one message."""

    model_config = ConfigDict(extra="forbid")
    campaign_id: int | None = Field(None, ge=1, le=2**63 - 1)
    status: Literal["failed", "unknown", "suppressed"] | None = Field(
        None, description="suppressed: never to a contact still opted out")
    error_code: str | None = None
    since: str | None = Field(None, examples=["2026-12-01T09:00:00+03:00"])
    message_id: int | None = Field(None, ge=1, le=2**63 - 1)
    reason: FailureClass | None = Field(None, description="resend late failures of this class (sent, then failed by "
                                                          "webhook); instead of status (the CLI's --reason)")
    force: bool = Field(False, description="allow reason opted_out or undeliverable (the CLI's --force)")
    dry_run: bool = False
    accept_duplicates: bool = Field(False, description="needed to retry unknown messages: the vendor may have sent them")


class RetryOut(BaseModel):
    selection: str
    dry_run: bool
    matched: int
    by_error_code: dict[str, int]
    unknown: int
    note: str | None
    requeued: int
    left_alone: int
    campaign_reopened: bool
    held_back: int = Field(0, description="matched, but their contact is opted out: requeued only after they opt back in")


class ScopeLimit(BaseModel):
    scope: str
    paced_at: str
    burst: int
    vendor_limit: int | None
    vendor_remaining: int | None
    vendor_reset_at: datetime | None
    blocked_until: datetime | None
    blocked_reason: str | None
    next_free_at: datetime | None


class LimitsOut(BaseModel):
    configured_limit: str
    scopes: list[ScopeLimit]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    database: str
    redis: str


# --- outbound hooks (worker.api.hooks) -----------------------------------------------------------

class HookIn(BaseModel):
    url: str = Field(examples=["https://crm.example.com/buttoncast"])
    events: list[str] = Field(examples=[["message.sent", "button.tapped"]])


class HookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    created_at: datetime
    pending: int
    delivered: int
    dead: int
    last_error: str | None = None

    @classmethod
    def of(cls, view: Any) -> "HookOut":  # worker.hooks.service.EndpointView
        return cls(id=view.id, url=view.url, events=view.events, created_at=view.created_at, pending=view.pending,
                   delivered=view.delivered, dead=view.dead, last_error=view.last_error)


class HookCreated(HookOut):
    secret: str = Field(description="the endpoint's signing secret (whsec_...): shown only in this response")


class HookList(BaseModel):
    data: list[HookOut]


class RedeliverIn(BaseModel):
    event_id: str | None = Field(None, examples=["evt_3f2a9c0d5b7e4e1f8a6b2c3d4e5f6a7b"])
    endpoint_id: int | None = Field(None, ge=1, le=2**63 - 1)


class RedeliverOut(BaseModel):
    due: int


# --- segments (worker.api.segments) --------------------------------------------------------------

SEGMENT_RULES_EXAMPLE = {"all": [{"attribute": "city", "equals": "Riyadh"}, {"tag": "vip"},
                                 {"tapped": {"campaign": 12, "button": "reserve"}}]}


class SegmentIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Riyadh VIPs who tapped Reserve"])
    rules: dict[str, Any] = Field(description="segment rules (docs/api.md, 'Segments')",
                                  examples=[SEGMENT_RULES_EXAMPLE])


class SegmentCountIn(BaseModel):
    rules: dict[str, Any] = Field(examples=[SEGMENT_RULES_EXAMPLE])


class SegmentCount(BaseModel):
    count: int = Field(description="members now (opted-out contacts are never members)")


class SegmentSummary(BaseModel):
    id: int
    name: str
    rules: dict[str, Any]
    description: str = Field(description="the rules in words")
    created_at: datetime
    created_by: str | None = None
    updated_at: datetime

    @classmethod
    def of(cls, view: Any) -> "SegmentSummary":  # worker.contacts.segments.SegmentView
        return cls(id=view.id, name=view.name, rules=view.rules, description=view.description,
                   created_at=view.created_at, created_by=view.created_by, updated_at=view.updated_at)


class SegmentOut(SegmentSummary):
    count: int | None = Field(description="members now; null when the rules cannot be counted (see problem)")
    problem: str | None = Field(None, description="why the segment cannot be counted (a campaign it names was deleted)")

    @classmethod
    def of(cls, view: Any) -> "SegmentOut":
        return cls(**SegmentSummary.of(view).model_dump(), count=view.count, problem=view.problem)


class SegmentList(BaseModel):
    data: list[SegmentSummary]
