"""Recipients import: a CSV streamed into `messages` rows of a campaign, checked on every core.

The pipeline (data flows one way): the main thread reads the file's records
(scheduler.recipients_csv) and has them judged chunk by chunk, in a process pool for a big file
(scheduler.import_pool); valid rows gather into windows that a writer thread stages and merges
set-based (scheduler.import_store) while the next window is being checked. A row that fails is
reported with its physical line number (header = line 1) and reason; a duplicate (phones compared
normalised, the first row wins) with its line. Memory stays bounded: a few windows of rows are
held at a time, whatever the file's size; de-duplication happens in the database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from scheduler.import_pool import ImportInterrupted, judged_chunks
from scheduler.import_store import MERGE_ROWS, BackgroundWriter, open_store
from scheduler.recipients_csv import (
    LINE_MAX_CHARS,
    PHONE_COLUMN,
    Recipient,
    RecipientsFileError,
    RowProblem,
    check_header,
    read_recipients,
)
from scheduler import experiments
from scheduler.template import MessageTemplate, compile_template, variants_data
from scheduler.zones import recount_zones
from worker.contacts.attributes import AttributeImportResult
from worker.contacts.service import opted_out_among
from worker.models import Campaign, utcnow
from worker.window import RECIPIENT

__all__ = ["BATCH_ROWS", "LINE_MAX_CHARS", "MAX_DETAILS", "PHONE_COLUMN", "ImportInterrupted", "ImportRefused",
           "ImportResult", "Recipient", "RecipientsFileError", "RowProblem", "check_header", "check_recipients",
           "import_recipients", "read_recipients", "refuse_if_invalid"]

BATCH_ROWS = MERGE_ROWS
MAX_DETAILS = 1_000        # row problems kept with their line and reason; all are counted


class ImportRefused(RecipientsFileError):
    """Nothing was imported (--strict and an invalid row, or no valid row at all); `result` says why."""

    def __init__(self, message: str, result: "ImportResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass
class ImportResult:
    """What an import did: counts of every outcome, and the first MAX_DETAILS problems in detail."""

    imported: int = 0
    opted_out: int = 0         # imported recipients whose contact is opted out: never sent (suppressed)
    rejected: int = 0
    duplicates: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    duplicate_rows: list[RowProblem] = field(default_factory=list)
    #: the file's columns stored on the contacts (campaigns.create_from_options, save_attributes)
    attributes: AttributeImportResult | None = None

    def reject(self, problem: RowProblem) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_DETAILS:
            self.problems.append(problem)

    def duplicate(self, problem: RowProblem) -> None:
        self.duplicates += 1
        if len(self.duplicate_rows) < MAX_DETAILS:
            self.duplicate_rows.append(problem)

    def merged(self, inserted: int, duplicates: list[RowProblem]) -> None:
        """One window written: `inserted` new recipients, `duplicates` in line order."""
        self.imported += inserted
        for problem in duplicates:
            self.duplicate(problem)


def check_recipients(path: str | os.PathLike[str], template: MessageTemplate, *, default_region: str | None = None,
                     processes: int | None = None, zones: bool = False) -> ImportResult:
    """A dry run: every row judged (on every core for a big file), nothing stored (what --strict
    does before importing). `zones`: for a `--tz recipient` campaign (a number of no known zone is refused)."""
    result = ImportResult()
    for chunk in judged_chunks(path, template, default_region=default_region, processes=processes, zones=zones):
        for problem in chunk.problems:
            result.reject(problem)
    return result


def import_recipients(
    session_factory: sessionmaker[Session],
    campaign_id: int,
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    batch_rows: int | None = None,
    default_region: str | None = None,
    processes: int | None = None,
) -> ImportResult:
    """Import a CSV into an existing campaign; updates its recipients_imported and rows_rejected.

    With `strict`, the file is checked first and refused (ImportRefused, nothing stored) if any row
    is invalid. Otherwise valid rows are imported and invalid ones reported in the result. Any
    failure part way (the database, a checking process) leaves none of this import's rows.
    `batch_rows`: rows per merge window (BATCH_ROWS); `processes`: see import_pool.judged_chunks.
    A `--tz recipient` campaign: each row's zone group is stored, and `campaigns.zones` recounted.
    """
    with session_factory() as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            raise RecipientsFileError(f"no campaign {campaign_id}")
        session.expunge(campaign)
    template = compile_template(variants_data(campaign.template, campaign.variants))
    zones = campaign.window_tz == RECIPIENT
    if strict:
        refuse_if_invalid(path, template, default_region=default_region, processes=processes, zones=zones)
    batch_rows = batch_rows or BATCH_ROWS
    result = ImportResult()
    chunks = judged_chunks(path, template, default_region=default_region, processes=processes, zones=zones)
    writer = BackgroundWriter(open_store(session_factory, campaign), result.merged)
    try:
        window: list = []
        for chunk in chunks:
            for problem in chunk.problems:
                result.reject(problem)
            window += chunk.rows
            if len(window) >= batch_rows:
                writer.put(window)
                window = []
        if window:
            writer.put(window)
    except BaseException:
        chunks.close()   # stops the pool before the rollback
        writer.abort()
        raise
    writer.finish()
    with session_factory() as session:
        result.opted_out = opted_out_among(session, campaign_id)
    with session_factory.begin() as session:
        session.execute(
            sa.update(Campaign).where(Campaign.id == campaign_id).values(
                recipients_imported=Campaign.recipients_imported + result.imported,
                rows_rejected=Campaign.rows_rejected + result.rejected, updated_at=utcnow(),
            )
        )
        if zones:
            recount_zones(session, campaign_id)
        experiments.assign(session, campaign_id)   # an A/B test: each recipient's variant, or held
    return result


def refuse_if_invalid(path: str | os.PathLike[str], template: MessageTemplate, *,
                      default_region: str | None = None, processes: int | None = None, zones: bool = False) -> None:
    """--strict: raise ImportRefused when any row of the file is invalid."""
    checked = check_recipients(path, template, default_region=default_region, processes=processes, zones=zones)
    if checked.rejected:
        raise ImportRefused(f"--strict: {checked.rejected} invalid row(s); nothing was imported", checked)
