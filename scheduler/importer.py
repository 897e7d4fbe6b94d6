"""Recipients import: a CSV streamed row by row into `messages` rows of a campaign, in batches.

The CSV has a `phone` column; every other column is a variable for `{{placeholders}}`. Each row is
normalised and filled, and the filled message validated against the vendor's limits; a row that
fails is reported with its physical line number (header = line 1) and not imported.

Memory stays bounded: one batch of rows is held at a time. De-duplication is left to the database's
unique (campaign_id, phone) index with ON CONFLICT DO NOTHING RETURNING phone: the rows a batch did
not return are the duplicates; earlier rows win because batches go in file order and VALUES are
inserted in order; no million-entry set of phones lives in the process; importing more rows into a
campaign later, or two imports racing, de-duplicate against what is stored. (A per-batch
"SELECT phone ... IN (...)" pre-check was tried and dropped: psycopg's prepared generic plan for it
scanned the campaign's rows, so the import turned quadratic on Postgres.)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from scheduler.template import MessageTemplate
from worker.contacts import ensure_contacts, opted_out_among
from worker.errors import ButtoncastError, MessageInvalid
from worker.phone import judge_phone
from worker.models import Campaign, Message, utcnow
from worker.status import MessageStatus

BATCH_ROWS = 2_000
LINE_MAX_CHARS = 1_048_576  # a longer physical line is rejected as a row, never held whole (item 11)
MAX_DETAILS = 1_000        # row problems kept with their line and reason; all are counted
PHONE_COLUMN = "phone"


class RecipientsFileError(ButtoncastError):
    """The recipients file as a whole cannot be used (no phone column, unknown placeholder, not UTF-8)."""


class ImportRefused(RecipientsFileError):
    """Nothing was imported (--strict and an invalid row, or no valid row at all); `result` says why."""

    def __init__(self, message: str, result: "ImportResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ImportResult:
    """What an import did: counts of every outcome, and the first MAX_DETAILS problems in detail."""

    imported: int = 0
    opted_out: int = 0         # imported recipients whose contact is opted out: never sent (suppressed)
    rejected: int = 0
    duplicates: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    duplicate_rows: list[RowProblem] = field(default_factory=list)

    def reject(self, problem: RowProblem) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_DETAILS:
            self.problems.append(problem)

    def duplicate(self, problem: RowProblem) -> None:
        self.duplicates += 1
        if len(self.duplicate_rows) < MAX_DETAILS:
            self.duplicate_rows.append(problem)


@dataclass(frozen=True)
class Recipient:
    line: int
    phone: str
    content: dict[str, Any]


@dataclass(frozen=True)
class _Layout:
    """Where the phone and each variable are in a row."""

    width: int
    phone_index: int
    variables: tuple[tuple[str, int], ...]


def _layout(header: list[str], template: MessageTemplate, path: str) -> _Layout:
    columns = [c.strip().lstrip("\ufeff").strip() for c in header]
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        raise RecipientsFileError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once in the header (line 1)")
    lowered = [c.lower() for c in columns]
    if PHONE_COLUMN not in lowered:
        raise RecipientsFileError(f"{path}: the header (line 1) has no {PHONE_COLUMN!r} column; it has: {', '.join(map(repr, columns)) or 'nothing'}")
    missing = [n for n in template.names if n not in columns]
    if missing:
        raise RecipientsFileError(
            f"{path}: the message uses {', '.join('{{' + n + '}}' for n in missing)} but no column has that name; "
            f"columns: {', '.join(map(repr, columns))}"
        )
    return _Layout(len(columns), lowered.index(PHONE_COLUMN), tuple((n, columns.index(n)) for n in template.names))


def _prepare(cells: list[str], line: int, layout: _Layout, template: MessageTemplate,
             default_region: str | None = None) -> Recipient | RowProblem | None:
    """One row -> a Recipient, or the reason it is refused; None for a blank line."""
    if not any(c.strip() for c in cells):
        return None
    if len(cells) > layout.width and any(c.strip() for c in cells[layout.width:]):
        return RowProblem(line, f"has {len(cells)} fields; the header has {layout.width}")
    phone, problem = judge_phone(cells[layout.phone_index] if layout.phone_index < len(cells) else "",
                                 default_region=default_region)
    if problem is not None:
        return RowProblem(line, str(problem))
    try:
        values = {name: (cells[i].strip() if i < len(cells) else "") for name, i in layout.variables}
        return Recipient(line, phone, template.fill(values))  # type: ignore[arg-type]
    except MessageInvalid as exc:
        return RowProblem(line, str(exc))


class _LineTooLong(Exception):
    """A physical line over LINE_MAX_CHARS; the rest of it was read and dropped."""


class _Lines:
    """The file's physical lines for csv.reader, each at most LINE_MAX_CHARS, counted and quote-tracked.

    Issue 12 item 11: after a bad row the csv reader is replaced by a fresh one, and this source
    first skips to the end of the bad record: while the record's quotes are unbalanced, a quoted
    field (possibly spanning lines) is still open. Memory stays bounded by LINE_MAX_CHARS.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream, self.line_no, self.quotes = stream, 0, 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        line = self.stream.readline(LINE_MAX_CHARS)
        if not line:
            raise StopIteration
        self.line_no += 1
        self.quotes += line.count('"')
        if len(line) == LINE_MAX_CHARS and not line.endswith(("\n", "\r")):
            while (rest := self.stream.readline(LINE_MAX_CHARS)) and not rest.endswith(("\n", "\r")):
                self.quotes += rest.count('"')
            self.quotes += rest.count('"')
            raise _LineTooLong
        return line

    def skip_rest_of_record(self) -> None:
        """Skip lines until the bad record's open quoted field (if any) closes."""
        while self.quotes % 2:
            try:
                next(self)
            except _LineTooLong:
                continue
            except StopIteration:
                return


def _bad_row_reason(exc: Exception) -> str:
    if isinstance(exc, _LineTooLong):
        return f"the line is over {LINE_MAX_CHARS:,} characters; row skipped"
    if "field larger than field limit" in str(exc):
        return f"a cell is over the CSV field limit of {csv.field_size_limit():,} characters; row skipped"
    return f"is not valid CSV ({exc}); row skipped"


def read_recipients(path: str | os.PathLike[str], template: MessageTemplate, *,
                    default_region: str | None = None) -> Iterator[Recipient | RowProblem]:
    """Stream the file: checks the header first (raises RecipientsFileError), then yields per row.

    UTF-8 with or without a BOM; CRLF or LF; quoted fields may span lines (the line reported is
    where the row starts). A row the csv module cannot read (a cell over its field limit) is a
    RowProblem; the rows after it are still read. `default_region` is for trunk-0 national phones.
    """
    name = os.fspath(path)
    with open(name, encoding="utf-8-sig", newline="") as stream:
        lines = _Lines(stream)
        reader = csv.reader(lines)
        try:
            try:
                header = next(reader, None)
            except (csv.Error, _LineTooLong) as exc:
                raise RecipientsFileError(f"{name}: line 1 (the header): {_bad_row_reason(exc)}") from None
            if header is None:
                raise RecipientsFileError(f"{name}: the file is empty; line 1 must be a header with a {PHONE_COLUMN!r} column")
            layout = _layout(header, template, name)
            while True:
                start, lines.quotes = lines.line_no + 1, 0
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except (csv.Error, _LineTooLong) as exc:
                    lines.skip_rest_of_record()
                    reader = csv.reader(lines)  # a fresh parser: the old one may be mid-field
                    yield RowProblem(start, _bad_row_reason(exc))
                    continue
                item = _prepare(cells, start, layout, template, default_region)
                if item is not None:
                    yield item
        except UnicodeDecodeError as exc:
            raise RecipientsFileError(f"{name}: not UTF-8 text after line {lines.line_no} ({exc.reason}); save it as UTF-8") from None


def check_header(path: str | os.PathLike[str], template: MessageTemplate) -> None:
    """Raise RecipientsFileError if the header lacks `phone` or a column a placeholder needs."""
    items = read_recipients(path, template)
    try:
        next(items, None)  # the header is judged before the first row is yielded
    finally:
        items.close()


def check_recipients(path: str | os.PathLike[str], template: MessageTemplate, *,
                     default_region: str | None = None) -> ImportResult:
    """A dry run: every row judged, nothing stored (what --strict does before importing)."""
    result = ImportResult()
    for item in read_recipients(path, template, default_region=default_region):
        if isinstance(item, RowProblem):
            result.reject(item)
    return result


class _BatchWriter:
    """Inserts recipients BATCH_ROWS at a time, one transaction per batch, counting duplicates."""

    def __init__(self, session_factory: sessionmaker[Session], campaign: Campaign, result: ImportResult,
                 batch_rows: int, dialect: str) -> None:
        self.session_factory, self.result, self.batch_rows = session_factory, result, batch_rows
        self.campaign_id, self.phone_number_id = campaign.id, campaign.phone_number_id
        self.gate_values = {"require_open_window": bool(campaign.require_open_window), "expires_at": campaign.expires_at}
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # Core insert on the table (no ORM bookkeeping). The unique index judges duplicates on every
        # row in the same step as the insert; RETURNING says which rows went in.
        table = Message.__table__
        self.statement = insert(table).on_conflict_do_nothing(index_elements=["campaign_id", "phone"]).returning(table.c.phone)
        self.batch: list[Recipient] = []

    def add(self, recipient: Recipient) -> None:
        self.batch.append(recipient)
        if len(self.batch) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        now = utcnow()
        rows = [
            {"campaign_id": self.campaign_id, "phone_number_id": self.phone_number_id, "phone": r.phone,
             "content": r.content, "status": MessageStatus.PENDING.value, "attempts": 0,
             "created_at": now, "updated_at": now, **self.gate_values}
            for r in self.batch
        ]
        with self.session_factory.begin() as session:
            inserted = set(session.connection().execute(self.statement, rows).scalars())
            ensure_contacts(session, inserted, at=now)
        for r in self.batch:
            if r.phone in inserted:
                inserted.discard(r.phone)  # the first row with this phone took it
                self.result.imported += 1
            else:
                self.result.duplicate(RowProblem(r.line, f"duplicate: phone {r.phone} is already a recipient (first row wins)"))
        self.batch = []


def import_recipients(
    session_factory: sessionmaker[Session],
    campaign_id: int,
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    batch_rows: int = BATCH_ROWS,
    default_region: str | None = None,
) -> ImportResult:
    """Import a CSV into an existing campaign; updates its recipients_imported and rows_rejected.

    With `strict`, the file is checked first and refused (ImportRefused, nothing stored) if any row
    is invalid. Otherwise valid rows are imported and invalid ones reported in the result.
    """
    with session_factory() as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            raise RecipientsFileError(f"no campaign {campaign_id}")
        session.expunge(campaign)
        dialect = session.get_bind().dialect.name
    template = MessageTemplate(campaign.template)
    if strict:
        refuse_if_invalid(path, template, default_region=default_region)
    result = ImportResult()
    writer = _BatchWriter(session_factory, campaign, result, batch_rows, dialect)
    for item in read_recipients(path, template, default_region=default_region):
        if isinstance(item, RowProblem):
            result.reject(item)
        else:
            writer.add(item)
    writer.flush()
    with session_factory() as session:
        result.opted_out = opted_out_among(session, campaign_id)
    with session_factory.begin() as session:
        session.execute(
            sa.update(Campaign).where(Campaign.id == campaign_id).values(
                recipients_imported=Campaign.recipients_imported + result.imported,
                rows_rejected=Campaign.rows_rejected + result.rejected, updated_at=utcnow(),
            )
        )
    return result


def refuse_if_invalid(path: str | os.PathLike[str], template: MessageTemplate, *,
                      default_region: str | None = None) -> None:
    """--strict: raise ImportRefused when any row of the file is invalid."""
    checked = check_recipients(path, template, default_region=default_region)
    if checked.rejected:
        raise ImportRefused(f"--strict: {checked.rejected} invalid row(s); nothing was imported", checked)
