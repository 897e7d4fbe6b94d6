"""Database tables (SQLAlchemy 2.x typed models). The database is the source of truth.

Times are stored as naive UTC and come back timezone-aware (UTCDateTime), on Postgres and SQLite.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from worker.status import CampaignStatus, MessageStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Store naive UTC; return aware UTC. Rejects naive input so no local time sneaks in."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; pass an aware datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL on SQLite
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: JSON on SQLite, JSONB on Postgres (binary, so `->>` on a million contacts reads no text)
JsonDoc = sa.JSON().with_variant(JSONB(), "postgresql")


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    phone_number_id: Mapped[str] = mapped_column(sa.String(64))
    #: the message template (header/body/footer with {{placeholders}}, buttons), as in message.json
    template: Mapped[dict] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(16), default=CampaignStatus.DRAFT.value, index=True)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_start: Mapped[str | None] = mapped_column(sa.String(5))   # "09:00"
    window_end: Mapped[str | None] = mapped_column(sa.String(5))     # "21:00"
    window_tz: Mapped[str | None] = mapped_column(sa.String(64))     # "Asia/Riyadh"
    #: copied to each recipient's message at import (see Message)
    require_open_window: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pause_reason: Mapped[str | None] = mapped_column(sa.Text)
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: the late-failure breaker counts only messages sent since (set on resume; worker.webhooks.breaker)
    late_breaker_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: ambiguous outcomes (unknown) since the last send; AUTO_PAUSE_CONSECUTIVE_UNKNOWN pauses
    consecutive_unknown: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    recipients_imported: Mapped[int] = mapped_column(sa.Integer, default=0)
    rows_rejected: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # --- audiences (worker.contacts.segments, scheduler.audience, scheduler.series) ---
    #: segment rules resolved into recipients when the campaign starts (a segment or a follow-up);
    #: None for a campaign whose recipients came from a CSV
    audience: Mapped[dict | None] = mapped_column(sa.JSON(none_as_null=True))
    #: when the audience was resolved into messages (then frozen, as a CSV import)
    audience_resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the saved segment this campaign (or series) targets; no FK: deleting it pauses a series
    segment_id: Mapped[int | None] = mapped_column(BigId)
    #: a follow-up's source campaign (its audience is a result of that campaign)
    follow_up_of: Mapped[int | None] = mapped_column(BigId)
    #: a series (recurring campaign): a run every `series_every_s` until `series_until`; the next at `series_next_at`
    series_every_s: Mapped[int | None] = mapped_column(sa.Integer)
    series_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    series_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: a run of a series: its parent and the slot it was started for (unique: a slot runs once)
    series_id: Mapped[int | None] = mapped_column(BigId)
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: window_tz == "recipient": recipients per zone group (worker.window), counted when they were stored
    zones: Mapped[dict | None] = mapped_column(sa.JSON)
    #: an A/B test (scheduler.experiments): every variant's message, in order A, B[, C]; `template`
    #: is the first. None for a campaign of one message.
    variants: Mapped[list | None] = mapped_column(sa.JSON(none_as_null=True))

    # a unique index, not a constraint: migration 0011 adds it without rebuilding the table on SQLite
    __table_args__ = (sa.Index("uq_campaigns_series_run", "series_id", "run_at", unique=True),)


#: ix_messages_unfinished's predicate: the statuses a message leaves on its way to a final one
_UNFINISHED = "status IN ('pending', 'queued', 'sending')"


class Message(Base):
    """One button message to one recipient: a campaign recipient or an ad-hoc message."""

    __tablename__ = "messages"
    __table_args__ = (
        sa.UniqueConstraint("campaign_id", "phone", name="uq_messages_campaign_phone"),
        # a campaign's recipients in id order (the console's recipients table, keyset pages), all or by status
        sa.Index("ix_messages_campaign_id", "campaign_id", "id"),
        sa.Index("ix_messages_campaign_status", "campaign_id", "status", "id"),
        # A status change is never a HOT update (status is indexed), so it writes an entry into every
        # index whose predicate the new row meets: the ones below hold only the rows their queries
        # read (migration 0018; bench/index_audit.py, docs/scaling.md "Indexes of `messages`").
        # what is left to send, across campaigns: the dispatcher's in-flight count, the sweeper's
        # lost/stale rows and broker-loss hand-back, the queue depth, `run --until-idle`.
        # Whole on SQLite: its planner uses a partial index only for the predicate's own term (not
        # status = 'sending'), and it writes an index only when the index's columns change.
        sa.Index("ix_messages_unfinished", "status", "campaign_id", "id", postgresql_where=sa.text(_UNFINISHED)),
        # a contact's messages (worker.contacts.service), the frequency cap, a reply without context
        sa.Index("ix_messages_phone_sent", "phone", "sent_at"),
        # the late-failure breaker reads a campaign's last N sent messages (worker.webhooks.breaker)
        sa.Index("ix_messages_campaign_sent", "campaign_id", "sent_at",
                 postgresql_where=sa.text("sent_at IS NOT NULL"), sqlite_where=sa.text("sent_at IS NOT NULL")),
        # Only what is left to send: the dispatcher's claim walks it in id order and never steps
        # over the rows a big campaign has already sent. ix_messages_campaign_status holds the same
        # range, but without this one Postgres's planner walks the primary key (195 ms for the first
        # 50 pending rows behind 750,000 others: bench/index_audit.py).
        sa.Index("ix_messages_pending_campaign_id", "campaign_id", "id",
                 postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'")),
        # what an API key created, newest first: a `send` key's reads (worker.sending.history)
        sa.Index("ix_messages_api_key_id", "api_key_id", "id",
                 postgresql_where=sa.text("api_key_id IS NOT NULL"), sqlite_where=sa.text("api_key_id IS NOT NULL")),
        # the recipients table's filters by button tapped and by error code, newest first
        sa.Index("ix_messages_campaign_button", "campaign_id", "reply_button_id", "id",
                 postgresql_where=sa.text("reply_button_id IS NOT NULL"), sqlite_where=sa.text("reply_button_id IS NOT NULL")),
        sa.Index("ix_messages_campaign_error", "campaign_id", "last_error_code", "id",
                 postgresql_where=sa.text("last_error_code IS NOT NULL"), sqlite_where=sa.text("last_error_code IS NOT NULL")),
        # late failures (failure_class set by a `failed` webhook) by class, newest first: the console's
        # failed counts and filters (worker.sending.history.status_matches / failure_matches), the retry by class
        sa.Index("ix_messages_campaign_late", "campaign_id", "failure_class", "id",
                 postgresql_where=sa.text("failure_class IS NOT NULL"), sqlite_where=sa.text("failure_class IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    phone_number_id: Mapped[str] = mapped_column(sa.String(64))
    phone: Mapped[str] = mapped_column(sa.String(64))
    #: the filled message: body_text, buttons, header_text, footer_text (validated)
    content: Mapped[dict] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(16), default=MessageStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)  # HTTP attempts; 429s excluded
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    vendor_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    vendor_message_id: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    vendor_status: Mapped[str | None] = mapped_column(sa.String(32))
    last_error_code: Mapped[str | None] = mapped_column(sa.String(64))
    last_error_message: Mapped[str | None] = mapped_column(sa.Text)
    last_request_id: Mapped[str | None] = mapped_column(sa.String(100))
    claim_token: Mapped[str | None] = mapped_column(sa.String(64))
    claimed_by: Mapped[str | None] = mapped_column(sa.String(200))
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: not sent by then -> `expired` (checked at claim time)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: hold as suppressed(window_closed) when the contact's 24-hour window is closed at claim time
    require_open_window: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last task published
    sending_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # what the vendor's webhooks say later (forward only: sent -> delivered -> read)
    delivery_status: Mapped[str | None] = mapped_column(sa.String(16))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivery_error: Mapped[str | None] = mapped_column(sa.Text)
    replied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reply_button_id: Mapped[str | None] = mapped_column(sa.String(256))
    reply_button_title: Mapped[str | None] = mapped_column(sa.String(64))
    #: a late failure (`failed` status webhook): the vendor's code and its class (worker.failures)
    failure_code: Mapped[str | None] = mapped_column(sa.String(16))
    failure_class: Mapped[str | None] = mapped_column(sa.String(32))
    #: window_tz == "recipient": the time zones this number may be in ("|"-joined; worker.window)
    zone: Mapped[str | None] = mapped_column(sa.String(200))
    #: the API key that created it (POST /v1/messages); a `send` key reads only these
    api_key_id: Mapped[int | None] = mapped_column(BigId)
    #: an A/B test: the variant this person gets ("A", "B", "C"), fixed once assigned (retries keep it);
    #: None while `held` for the winner
    variant: Mapped[str | None] = mapped_column(sa.String(1))
    #: a `held` message: every variant's filled message ({"A": {...}, "B": {...}}), until the winner is known
    alternatives: Mapped[dict | None] = mapped_column(sa.JSON(none_as_null=True))

    attempt_rows: Mapped[list["Attempt"]] = relationship(back_populates="message", order_by="Attempt.id")
    events: Mapped[list["MessageEvent"]] = relationship(back_populates="message", order_by="MessageEvent.id")


class Attempt(Base):
    """One HTTP request to the vendor for a message: when, how long, what came back, which worker."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(sa.Integer)
    http_status: Mapped[int | None] = mapped_column(sa.Integer)
    outcome: Mapped[str] = mapped_column(sa.String(32))
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    request_id: Mapped[str | None] = mapped_column(sa.String(100))
    vendor_message_id: Mapped[str | None] = mapped_column(sa.String(200))
    worker: Mapped[str | None] = mapped_column(sa.String(200))

    message: Mapped[Message] = relationship(back_populates="attempt_rows")


class MessageEvent(Base):
    """A status change that no HTTP attempt explains (sweeper, operator retry, pause, cancel)."""

    __tablename__ = "message_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    from_status: Mapped[str | None] = mapped_column(sa.String(16))
    to_status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.Text)
    actor: Mapped[str | None] = mapped_column(sa.String(200))  # worker hostname, "sweeper", "operator"

    message: Mapped[Message] = relationship(back_populates="events")


class Experiment(Base):
    """An A/B test of a campaign's variants (scheduler.experiments): how it is run, where it is, and
    the decision with its numbers. One per campaign that has `variants`."""

    __tablename__ = "experiments"

    campaign_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    #: the share of the audience in the test group (split evenly over the variants); 1: every recipient
    test_share: Mapped[float] = mapped_column(sa.Float)
    #: the decision comes this long after the test group finished sending (None with test_share 1)
    decide_after_s: Mapped[int | None] = mapped_column(sa.Integer)
    metric: Mapped[str] = mapped_column(sa.String(16))            # taps, replies, reads
    default_variant: Mapped[str] = mapped_column(sa.String(1))    # sent when no variant clearly wins
    #: testing -> waiting (the clock runs) -> decided; `report` for test_share 1 (no winner step)
    phase: Mapped[str] = mapped_column(sa.String(16))
    test_done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decide_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the campaign was seen paused at this time while the clock ran (decide_at moves by the pause)
    clock_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the variant the rest of the audience got; `winner` only when one clearly won (else None)
    sent_variant: Mapped[str | None] = mapped_column(sa.String(1))
    winner: Mapped[str | None] = mapped_column(sa.String(1))
    #: the numbers the decision was taken on (scheduler.significance), and who took it (None: the engine)
    decision: Mapped[dict | None] = mapped_column(sa.JSON(none_as_null=True))
    decided_by: Mapped[str | None] = mapped_column(sa.String(200))


class Contact(Base):
    """One person, by normalised phone (digits, as `messages.phone`): what we know about their
    consent and their 24-hour customer-service window. `opted_out_at` set means: never message."""

    __tablename__ = "contacts"
    # everyone opted out, in phone order: the suppression list's pages and export (worker.contacts.service)
    __table_args__ = (sa.Index("ix_contacts_opted_out_phone", "phone", postgresql_where=sa.text("opted_out_at IS NOT NULL"),
                               sqlite_where=sa.text("opted_out_at IS NOT NULL")),)

    phone: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: their last inbound message (`message.received`): the window is open until this + 24 h
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: keyword, button, vendor_code, operator, import (worker.contacts.service.SOURCES)
    opt_out_source: Mapped[str | None] = mapped_column(sa.String(16))
    opt_out_note: Mapped[str | None] = mapped_column(sa.Text)
    opted_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: what a marketer knows of them (name, city, plan): text values by column name
    attributes: Mapped[dict] = mapped_column(JsonDoc, default=dict, server_default=sa.text("'{}'"))


class ContactTag(Base):
    """One tag on one contact (`vip`); segments select by tag through (tag, phone)."""

    __tablename__ = "contact_tags"
    __table_args__ = (sa.Index("ix_contact_tags_tag_phone", "tag", "phone"),)

    phone: Mapped[str] = mapped_column(sa.ForeignKey("contacts.phone", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(sa.String(64), primary_key=True)


class Segment(Base):
    """A saved audience: rules (worker.contacts.segments) counted and resolved live, never a list."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    rules: Mapped[dict] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ContactEvent(Base):
    """One change of a contact's consent (opt_out / opt_in), with where it came from."""

    __tablename__ = "contact_events"
    __table_args__ = (sa.Index("ix_contact_events_phone_at", "phone", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    phone: Mapped[str] = mapped_column(sa.ForeignKey("contacts.phone", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[str] = mapped_column(sa.String(16))   # opt_out, opt_in
    source: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    actor: Mapped[str | None] = mapped_column(sa.String(200))


class CampaignTally(Base):
    """A campaign's counts as one full scan of its rows found them (`scheduler.report.tally`), and
    when: a snapshot, never a counter. The console shows it at once and says how old it is; the
    console and beat's sweep replace it with a newer scan (scheduler.snapshots)."""

    __tablename__ = "campaign_tallies"

    campaign_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    #: when the scan began: rows are counted as they were then (or later)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)
    scan_ms: Mapped[int] = mapped_column(sa.Integer)
    #: counts per status, the funnel, taps per button, late failures by class (scheduler.snapshots)
    tally: Mapped[dict] = mapped_column(sa.JSON)
