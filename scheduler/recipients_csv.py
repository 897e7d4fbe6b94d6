"""A recipients CSV read and judged row by row: the checks every import runs, with no database.

The CSV has a `phone` column; every other column is a variable for `{{placeholders}}`. Each row is
normalised and filled, and the filled message validated against the vendor's limits; a row that
fails is a RowProblem with its physical line number (header = line 1). `RecipientsFile` reads the
records (the main process: cheap, sequential, line numbers exact); `RowJudge` judges them (where
the CPU goes: libphonenumber and the message checks), in this process or in a pool of them
(scheduler.import_pool), with identical results.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import IO, Any, Iterator, Sequence, Union

from scheduler.template import MessageTemplate, compile_template
from worker.errors import ButtoncastError, MessageInvalid
from worker.phone import judge_phone
from worker.window import UNKNOWN_ZONE, UNKNOWN_ZONE_REASON, zone_group_of

LINE_MAX_CHARS = 1_048_576  # a longer physical line is rejected as a row, never held whole (item 11)
HEADER_MAX_CHARS = 65_536   # the header (line 1) is refused past this many characters (issue 25 item 8) ...
HEADER_MAX_COLUMNS = 1_000  # ... or this many columns: a wide header is refused, never checked at length
PHONE_COLUMN = "phone"


class RecipientsFileError(ButtoncastError):
    """The recipients file as a whole cannot be used (no phone column, unknown placeholder, not UTF-8)."""


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Recipient:
    line: int
    phone: str
    content: dict[str, Any]


#: one record as read: (line, cells), or the row's CSV-level problem (unreadable, too long)
Record = Union[tuple[int, list[str]], RowProblem]
#: one valid row as stored: (line, normalised phone, the filled message as JSON text[, its zone group])
#: (the zone group only for a campaign whose window is in the recipients' own zones: worker.window)
StagedRow = Union[tuple[int, str, str], tuple[int, str, str, str]]


@dataclass(frozen=True)
class Layout:
    """Where the phone and each variable are in a row."""

    width: int
    phone_index: int
    variables: tuple[tuple[str, int], ...]


def _column_names(header: list[str], path: str) -> list[str]:
    """The header's column names, trimmed (and the BOM dropped); refused past HEADER_MAX_COLUMNS."""
    if len(header) > HEADER_MAX_COLUMNS:
        raise RecipientsFileError(f"{path}: the header (line 1) has {len(header):,} columns; the limit is {HEADER_MAX_COLUMNS:,}")
    return [c.strip().lstrip("\ufeff").strip() for c in header]


def _layout(columns: list[str], template: MessageTemplate, path: str) -> Layout:
    """Where the phone and each placeholder's column are. Linear in the columns (issue 25 item 8:
    `list.count` per column made a 349 KB header take 32 s): one pass builds a name -> index map."""
    first_at: dict[str, int] = {}
    repeated: set[str] = set()
    for index, name in enumerate(columns):
        if name in first_at:
            if name:
                repeated.add(name)
        else:
            first_at[name] = index
    if repeated:
        raise RecipientsFileError(f"{path}: column(s) {', '.join(map(repr, sorted(repeated)))} appear more than once in the header (line 1)")
    phone_at = next((i for i, name in enumerate(columns) if name.lower() == PHONE_COLUMN), None)
    if phone_at is None:
        raise RecipientsFileError(f"{path}: the header (line 1) has no {PHONE_COLUMN!r} column; it has: {', '.join(map(repr, columns)) or 'nothing'}")
    missing = [n for n in template.names if n not in first_at]
    if missing:
        raise RecipientsFileError(
            f"{path}: the message uses {', '.join('{{' + n + '}}' for n in missing)} but no column has that name; "
            f"columns: {', '.join(map(repr, columns))}"
        )
    return Layout(len(columns), phone_at, tuple((n, first_at[n]) for n in template.names))


def _prepare(cells: list[str], line: int, layout: Layout, template: MessageTemplate,
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


@dataclass
class JudgedChunk:
    """A chunk of records judged: the valid rows and the problems, each in line order."""

    rows: list[StagedRow]
    problems: list[RowProblem]
    last_line: int


class RowJudge:
    """Judges records with one file's layout, template and default region (picklable inputs only,
    so a pool process builds its own from the same values). With `zones` (a `--tz recipient`
    campaign) each valid row also gets its number's zone group, and a number of no known zone is
    refused (worker.window.UNKNOWN_ZONE_REASON); without it no zone is looked up at all."""

    def __init__(self, template_data: dict[str, Any], layout: Layout, default_region: str | None,
                 zones: bool = False) -> None:
        self.template, self.layout, self.default_region = compile_template(template_data), layout, default_region
        self.zones = zones

    def judge(self, records: Sequence[Record]) -> JudgedChunk:
        rows: list[StagedRow] = []
        problems: list[RowProblem] = []
        dumps = self.template.dumps  # json.dumps: what SQLAlchemy's JSON type writes, byte for byte
        for record in records:
            if isinstance(record, RowProblem):
                problems.append(record)
                continue
            line, cells = record
            item = _prepare(cells, line, self.layout, self.template, self.default_region)
            if isinstance(item, Recipient) and self.zones:
                group = zone_group_of(item.phone)
                if group == UNKNOWN_ZONE:
                    problems.append(RowProblem(line, f"phone {item.phone}: {UNKNOWN_ZONE_REASON}"))
                else:
                    rows.append((item.line, item.phone, dumps(item.content), group))
            elif isinstance(item, Recipient):
                rows.append((item.line, item.phone, dumps(item.content)))
            elif item is not None:
                problems.append(item)
        last = records[-1] if records else None
        return JudgedChunk(rows, problems, last.line if isinstance(last, RowProblem) else last[0] if last else 0)


class _LineTooLong(Exception):
    """A physical line over LINE_MAX_CHARS; the rest of it was read and dropped."""


class _HeaderTooLong(Exception):
    """The header record passed HEADER_MAX_CHARS."""


class _Lines:
    """The file's physical lines for csv.reader, each at most LINE_MAX_CHARS, counted and quote-tracked.

    Issue 12 item 11: after a bad row the csv reader is replaced by a fresh one, and this source
    first skips to the end of the bad record: while the record's quotes are unbalanced, a quoted
    field (possibly spanning lines) is still open. Memory stays bounded by LINE_MAX_CHARS.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream, self.line_no, self.quotes = stream, 0, 0
        #: characters the record being read may still take (the header's HEADER_MAX_CHARS); None: per line only
        self.budget: int | None = None

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        limit = LINE_MAX_CHARS if self.budget is None else max(1, min(LINE_MAX_CHARS, self.budget + 1))
        line = self.stream.readline(limit)
        if not line:
            raise StopIteration
        self.line_no += 1
        self.quotes += line.count('"')
        if self.budget is not None:
            self.budget -= len(line)
            if self.budget < 0:
                raise _HeaderTooLong   # the file is refused: nothing more of it is read
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


class RecipientsFile:
    """An open recipients CSV: the header judged on open (`layout`), then its records in order.

    UTF-8 with or without a BOM; CRLF or LF; quoted fields may span lines (the line reported is
    where the row starts). A row the csv module cannot read (a cell over its field limit, a line
    over LINE_MAX_CHARS) is a RowProblem record; the rows after it are still read.
    """

    def __init__(self, path: str | os.PathLike[str], template: MessageTemplate) -> None:
        self.name = os.fspath(path)
        self.stream = open(self.name, encoding="utf-8-sig", newline="")
        self.lines = _Lines(self.stream)
        self.reader = csv.reader(self.lines)
        try:
            self.lines.budget = HEADER_MAX_CHARS + 2   # its line end (CRLF) is not counted
            try:
                header = next(self.reader, None)
            except _HeaderTooLong:
                raise RecipientsFileError(f"{self.name}: the header (line 1) is over {HEADER_MAX_CHARS:,} characters; "
                                          f"the limit is {HEADER_MAX_CHARS:,}") from None
            except (csv.Error, _LineTooLong) as exc:
                raise RecipientsFileError(f"{self.name}: line 1 (the header): {_bad_row_reason(exc)}") from None
            except UnicodeDecodeError as exc:
                raise self._not_utf8(exc) from None
            finally:
                self.lines.budget = None
            if header is None:
                raise RecipientsFileError(f"{self.name}: the file is empty; line 1 must be a header with a {PHONE_COLUMN!r} column")
            self.layout = _layout(_column_names(header, self.name), template, self.name)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "RecipientsFile":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.stream.close()

    def _not_utf8(self, exc: UnicodeDecodeError) -> RecipientsFileError:
        return RecipientsFileError(f"{self.name}: not UTF-8 text after line {self.lines.line_no} ({exc.reason}); save it as UTF-8")

    def __iter__(self) -> Iterator[Record]:
        lines = self.lines
        try:
            while True:
                start, lines.quotes = lines.line_no + 1, 0
                try:
                    cells = next(self.reader)
                except StopIteration:
                    return
                except (csv.Error, _LineTooLong) as exc:
                    lines.skip_rest_of_record()
                    self.reader = csv.reader(lines)  # a fresh parser: the old one may be mid-field
                    yield RowProblem(start, _bad_row_reason(exc))
                    continue
                yield start, cells
        except UnicodeDecodeError as exc:
            raise self._not_utf8(exc) from None


def read_recipients(path: str | os.PathLike[str], template: MessageTemplate, *,
                    default_region: str | None = None) -> Iterator[Recipient | RowProblem]:
    """Stream the file: checks the header first (raises RecipientsFileError), then yields per row,
    judged in this process. `default_region` is for trunk-0 national phones."""
    with RecipientsFile(path, template) as recipients:
        for record in recipients:
            if isinstance(record, RowProblem):
                yield record
                continue
            item = _prepare(record[1], record[0], recipients.layout, template, default_region)
            if item is not None:
                yield item


def check_header(path: str | os.PathLike[str], template: MessageTemplate) -> None:
    """Raise RecipientsFileError if the header lacks `phone` or a column a placeholder needs."""
    RecipientsFile(path, template).close()
