"""Import a suppression list: a CSV of phones that opted out elsewhere (source `import`).

The CSV has a `phone` column and optionally a `reason` (or `note`) column. It is streamed in
windows of BATCH_ROWS rows (one transaction each), so a file of millions of rows stays in bounded
memory. Each window is loaded into a TEMP staging table (COPY on Postgres, one executemany on
SQLite) and applied set-based: unknown phones become contacts, and those not yet opted out are
opted out with the reason of their first row, each change with its contact_events row; the
report tells new opt-outs from phones already opted out (or repeated in the file). A phone that
is invalid is reported with its line (header = line 1), like the campaign import's report.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Iterator

import sqlalchemy as sa

from worker.contacts.service import OPT_OUT, REASON_MAX_CHARS, SOURCE_IMPORT
from worker.errors import ButtoncastError
from worker.models import UTCDateTime, utcnow
from worker.phone import judge_phone
from worker.runtime import Runtime

BATCH_ROWS = 20_000
MAX_DETAILS = 1_000
PHONE_COLUMN = "phone"
REASON_COLUMNS = ("reason", "note")


class OptOutFileError(ButtoncastError):
    """The file as a whole cannot be used (no phone column, not UTF-8, broken CSV)."""


@dataclass
class OptOutImportResult:
    opted_out: int = 0           # newly opted out by this import
    already_opted_out: int = 0   # were opted out before (or twice in the file)
    rejected: int = 0
    problems: list[str] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_DETAILS:
            self.problems.append(f"line {line}: {reason}")


def _rows(path: str, result: OptOutImportResult, default_region: str | None) -> Iterator[tuple[int, str, str | None]]:
    with open(path, encoding="utf-8-sig", newline="") as stream:
        reader = csv.reader(stream)
        try:
            header = [c.strip().lower() for c in next(reader, None) or []]
            if PHONE_COLUMN not in header:
                raise OptOutFileError(f"{path}: the header (line 1) has no {PHONE_COLUMN!r} column")
            phone_at = header.index(PHONE_COLUMN)
            reason_at = next((header.index(c) for c in REASON_COLUMNS if c in header), None)
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                phone, problem = judge_phone(cells[phone_at] if phone_at < len(cells) else "", default_region=default_region)
                if problem is not None:
                    result.reject(line, str(problem))
                    continue
                reason = cells[reason_at].strip() if reason_at is not None and reason_at < len(cells) else ""
                yield line, phone, reason[:REASON_MAX_CHARS] or None  # type: ignore[misc]
        except UnicodeDecodeError as exc:
            raise OptOutFileError(f"{path}: not UTF-8 text after line {reader.line_num} ({exc.reason})") from None
        except csv.Error as exc:
            raise OptOutFileError(f"{path}: line {reader.line_num}: {exc}") from None


_CONTACTS = "INSERT INTO contacts (phone, first_seen_at, updated_at) SELECT DISTINCT phone, :now, :now FROM optout_staging WHERE true ON CONFLICT (phone) DO NOTHING"
# Postgres: the first row of each phone; those not yet opted out are opted out, with an event each.
_PG_STAGING = "CREATE TEMP TABLE IF NOT EXISTS optout_staging (line integer NOT NULL, phone text NOT NULL, reason text)"
_PG_COPY = "COPY optout_staging (line, phone, reason) FROM STDIN"
_PG_OPT_OUT = """
WITH firsts AS MATERIALIZED (SELECT DISTINCT ON (phone) phone, reason FROM optout_staging ORDER BY phone, line),
changed AS (
    UPDATE contacts c SET opted_out_at = :now, opt_out_source = :source, opt_out_note = f.reason, updated_at = :now
    FROM firsts f WHERE c.phone = f.phone AND c.opted_out_at IS NULL
    RETURNING c.phone, f.reason),
events AS (
    INSERT INTO contact_events (phone, at, action, source, reason, actor)
    SELECT phone, :now, :action, :source, reason, :actor FROM changed)
SELECT count(*) FROM changed
"""
# SQLite (under the write lock, so reading first and updating next see the same rows)
_SQLITE_STAGING = ("CREATE TEMP TABLE IF NOT EXISTS optout_staging (line INTEGER PRIMARY KEY, phone TEXT NOT NULL, reason TEXT)",
                   "CREATE INDEX IF NOT EXISTS temp.ix_optout_staging_phone ON optout_staging (phone, line)")
_SQLITE_STAGE = "INSERT INTO optout_staging (line, phone, reason) VALUES (?, ?, ?)"
_SQLITE_FIRSTS = ("FROM optout_staging s JOIN contacts c ON c.phone = s.phone WHERE c.opted_out_at IS NULL "
                  "AND NOT EXISTS (SELECT 1 FROM optout_staging e WHERE e.phone = s.phone AND e.line < s.line)")
_SQLITE_EVENTS = ("INSERT INTO contact_events (phone, at, action, source, reason, actor) "
                  f"SELECT s.phone, :now, :action, :source, s.reason, :actor {_SQLITE_FIRSTS}")
_SQLITE_OPT_OUT = """
UPDATE contacts SET opted_out_at = :now, opt_out_source = :source, updated_at = :now,
    opt_out_note = (SELECT s.reason FROM optout_staging s WHERE s.phone = contacts.phone ORDER BY s.line LIMIT 1)
WHERE opted_out_at IS NULL AND phone IN (SELECT phone FROM optout_staging)
"""


def _statement(sql: str) -> sa.TextClause:
    return sa.text(sql).bindparams(sa.bindparam("now", type_=UTCDateTime()))


def _opt_out_window(connection: sa.Connection, rows: list[tuple[int, str, str | None]], *, actor: str | None) -> int:
    """Opt out every phone of the window not yet opted out (one transaction); returns how many changed."""
    values = {"now": utcnow(), "action": OPT_OUT, "source": SOURCE_IMPORT, "actor": actor[:200] if actor else None}
    driver = connection.connection.driver_connection
    with connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(_PG_STAGING)
            with driver.cursor() as cursor, cursor.copy(_PG_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
            connection.execute(_statement(_CONTACTS), values)
            changed = connection.execute(_statement(_PG_OPT_OUT), values).scalar_one()
        else:
            for statement in _SQLITE_STAGING:
                connection.exec_driver_sql(statement)
            driver.executemany(_SQLITE_STAGE, rows)
            connection.execute(_statement(_CONTACTS), values)
            changed = connection.execute(_statement(_SQLITE_EVENTS), values).rowcount
            connection.execute(_statement(_SQLITE_OPT_OUT), values)
        connection.exec_driver_sql("DELETE FROM optout_staging")
    return changed


def import_optouts(rt: Runtime, path: str | os.PathLike[str], *,
                   actor: str | None = "operator", batch_rows: int = BATCH_ROWS,
                   default_region: str | None = None) -> OptOutImportResult:
    """Opt out every valid phone of the file (source `import`); returns the counts and problems.
    `default_region` (DEFAULT_COUNTRY_CODE) reads national numbers written with a trunk 0."""
    result = OptOutImportResult()
    window: list[tuple[int, str, str | None]] = []
    engine: sa.Engine = rt.session_factory.kw["bind"]
    with engine.connect() as connection:
        def flush() -> None:
            if window:
                changed = _opt_out_window(connection, window, actor=actor)
                result.opted_out += changed
                result.already_opted_out += len(window) - changed   # the first row of a phone wins
                window.clear()

        try:
            for row in _rows(os.fspath(path), result, default_region):
                window.append(row)
                if len(window) >= batch_rows:
                    flush()
            flush()
        finally:
            connection.exec_driver_sql("DROP TABLE IF EXISTS optout_staging")
            connection.commit()
    return result
