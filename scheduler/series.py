"""Recurring campaigns: a series whose runs are child campaigns, one per `--every` slot.

The series (a campaign row with `series_every_s`) holds the message, the window and the segment;
it never has recipients of its own and stays `scheduled` while it is live. At each slot, beat's
tick (`start_due_runs`) creates one run: an ordinary audience campaign (scheduler.audience) with
its own counts, which resolves the segment at its own start. A run is unique per (series, slot)
in the database, and the series' next slot moves on with a guarded UPDATE, so two beats never make
two runs of one slot. Slots missed while beat was down are not replayed one by one: the first
tick after it returns starts one run and moves the next slot past now.

Pausing or cancelling the series stops future runs (a run already started goes on; pause it on its
own). Deleting the series' segment pauses the series with the reason (worker.contacts.segments).
`--until` ends the series: once no slot is left before it, the series is completed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scheduler.campaigns import NAME_MAX_CHARS, create_campaign
from worker import lifecycle
from worker.durations import parse_duration
from worker.models import Campaign, utcnow
from worker.status import CampaignStatus
from worker.window import Window

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

#: the shortest interval between runs: a run must have time to resolve and send
MIN_EVERY_S = 3600


def parse_every(text: object) -> timedelta:
    """`--every 1d` / `7d` / `1w` (at least an hour); MessageInvalid naming `every` otherwise."""
    return parse_duration(text, "every", minimum_s=MIN_EVERY_S)


def next_slot(slot: datetime, every: timedelta, now: datetime) -> datetime:
    """The first slot after `now` on the grid slot + k * every (k >= 1)."""
    missed = max(0, int((now - slot) // every))
    candidate = slot + every * (missed + 1)
    return candidate if candidate > now else candidate + every


def run_name(series: Campaign, slot: datetime) -> str:
    suffix = f" · {slot:%Y-%m-%d %H:%M} UTC"
    return series.name[: NAME_MAX_CHARS - len(suffix)] + suffix


def start_due_runs(runtime: "Runtime", now: datetime | None = None) -> list[int]:
    """Start one run of every live series whose slot has come; returns the new runs' ids."""
    now = now or utcnow()
    with runtime.session_factory() as session:
        due = list(session.scalars(sa.select(Campaign.id).where(
            Campaign.series_every_s.is_not(None), Campaign.status == CampaignStatus.SCHEDULED.value,
            Campaign.series_next_at <= now)))
    started = []
    for series_id in due:
        with runtime.session_factory.begin() as session:
            run_id = _start_run(session, series_id, now)
        if run_id is not None:
            started.append(run_id)
    return started


def _start_run(session: Session, series_id: int, now: datetime) -> int | None:
    series = session.get(Campaign, series_id, populate_existing=True, with_for_update=True)
    if series is None or series.status != CampaignStatus.SCHEDULED.value or series.series_next_at is None \
            or series.series_next_at > now:
        return None   # another beat took this slot, or the series was paused meanwhile
    slot = series.series_next_at
    every = timedelta(seconds=series.series_every_s or MIN_EVERY_S)
    following = next_slot(slot, every, now)
    # the slot moves first, guarded: the beat that moves it is the one that makes the run
    moved = session.execute(
        sa.update(Campaign).where(Campaign.id == series_id, Campaign.series_next_at == slot)
        .values(series_next_at=following, updated_at=now).execution_options(synchronize_session=False)).rowcount
    if moved != 1:
        return None
    run_id = None
    if series.series_until is None or slot <= series.series_until:
        window = Window(series.window_start, series.window_end, series.window_tz) if series.window_start else None
        run = create_campaign(session, name=run_name(series, slot), phone_number_id=series.phone_number_id,
                              template=series.template, scheduled_at=now, window=window,
                              require_open_window=bool(series.require_open_window))
        run.audience, run.segment_id, run.series_id, run.run_at = series.audience, series.segment_id, series_id, slot
        session.flush()
        run_id = run.id
        log.info("series %s: run %s started for the slot %s", series_id, run_id, slot.isoformat())
    if series.series_until is not None and following > series.series_until:
        lifecycle.finish_series(session, series_id, now)
    return run_id


def runs_of(session: Session, series_id: int) -> list[Campaign]:
    """The series' runs, newest first (each an ordinary campaign with its own counts)."""
    return list(session.scalars(sa.select(Campaign).where(Campaign.series_id == series_id)
                                .order_by(Campaign.run_at.desc())))
