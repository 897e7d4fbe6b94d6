"""Where judged recipients go: a staging table per import, merged into `messages` set-based.

Each window of rows (file order) is loaded into a TEMP staging table (no migration: it lives in
the import's connection) — by COPY on Postgres, by one executemany on SQLite — and merged with
one set-based statement per step: the first row of each phone (lowest line) that the campaign
does not already have becomes a pending message, in line order (so message ids follow the file
and the dispatcher sends in file order); every other staged row is a duplicate, reported with its
line. No million-entry set of phones lives in the process; windows merge in file order, so a
phone seen in an earlier window is "already a recipient", as with two imports into one campaign.

Postgres: one transaction for the whole import (the staging table is ON COMMIT DROP), so a
failure anywhere rolls back every row; the merge is one statement (INSERT ... ON CONFLICT DO
NOTHING RETURNING in a CTE), exact even against a concurrent import into the same campaign.
SQLite: one short write transaction per window (BEGIN IMMEDIATE serialises writers, so the
duplicate check and the insert see the same table), so senders are not locked out for the whole
import; a failure deletes the id ranges this import inserted.

A `--tz recipient` campaign's rows carry their zone group (a fourth column, staged and copied to
`messages.zone`); other campaigns stage three columns, and the zone stays NULL.

`BackgroundWriter` runs a store on its own thread, one window behind the reader: the database
work (the server's on Postgres; sqlite3 releases the GIL while a statement runs) overlaps the
checks of the next window.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from scheduler.recipients_csv import RowProblem, StagedRow
from worker.models import Campaign, UTCDateTime, utcnow
from worker.status import MessageStatus
from worker.window import RECIPIENT

MERGE_ROWS = 10_000            # rows staged and merged per window (larger: no faster, more memory)
_THREAD_POLL_S = 0.5

_MESSAGE_COLUMNS = ("campaign_id, phone_number_id, phone, content, status, attempts, created_at, updated_at, "
                    "require_open_window, expires_at, zone")
_MESSAGE_VALUES = (":campaign_id, :phone_number_id, s.phone, s.content, :status, 0, :now, :now, :require_open_window, "
                   ":expires_at, s.zone")

_PG_STAGING = ("CREATE TEMP TABLE import_staging (line integer NOT NULL, phone text NOT NULL, content json NOT NULL, "
               "zone text) ON COMMIT DROP")
#: the merge sorts a window twice (by phone, by line); in memory rather than in temp files
_PG_WORK_MEM = "SET LOCAL work_mem = '64MB'"
_PG_COPY = "COPY import_staging (line, phone, content) FROM STDIN"
_PG_COPY_ZONES = "COPY import_staging (line, phone, content, zone) FROM STDIN"
# firsts: the lowest line of each phone; ins: those the campaign did not have; the answer: every
# staged row that did not go in (its phone was taken by an earlier line or an earlier import).
_PG_MERGE = f"""
WITH firsts AS MATERIALIZED (
    SELECT DISTINCT ON (phone) line, phone, content, zone FROM import_staging ORDER BY phone, line
), ins AS (
    INSERT INTO messages ({_MESSAGE_COLUMNS})
    SELECT {_MESSAGE_VALUES} FROM firsts s ORDER BY s.line
    ON CONFLICT (campaign_id, phone) DO NOTHING
    RETURNING phone
), new_contacts AS (
    INSERT INTO contacts (phone, first_seen_at, updated_at) SELECT phone, :now, :now FROM ins
    ON CONFLICT (phone) DO NOTHING
)
SELECT s.line, s.phone FROM import_staging s
JOIN firsts f ON f.phone = s.phone
LEFT JOIN ins ON ins.phone = s.phone
WHERE ins.phone IS NULL OR s.line <> f.line
ORDER BY s.line
"""

_SQLITE_STAGING = ("CREATE TEMP TABLE IF NOT EXISTS import_staging (line INTEGER PRIMARY KEY, phone TEXT NOT NULL, "
                   "content TEXT NOT NULL, zone TEXT, dup INTEGER NOT NULL DEFAULT 0)",
                   "CREATE INDEX IF NOT EXISTS temp.ix_import_staging_phone ON import_staging (phone, line)",
                   "DELETE FROM import_staging")
_SQLITE_STAGE = "INSERT INTO import_staging (line, phone, content) VALUES (?, ?, ?)"
_SQLITE_STAGE_ZONES = "INSERT INTO import_staging (line, phone, content, zone) VALUES (?, ?, ?, ?)"
_SQLITE_MARK = """
UPDATE import_staging SET dup = 1
WHERE EXISTS (SELECT 1 FROM import_staging e WHERE e.phone = import_staging.phone AND e.line < import_staging.line)
   OR EXISTS (SELECT 1 FROM messages m WHERE m.campaign_id = :campaign_id AND m.phone = import_staging.phone)
"""
_SQLITE_CONTACTS = ("INSERT INTO contacts (phone, first_seen_at, updated_at) SELECT s.phone, :now, :now "
                    "FROM import_staging s WHERE s.dup = 0 ON CONFLICT (phone) DO NOTHING")
_SQLITE_INSERT = f"INSERT INTO messages ({_MESSAGE_COLUMNS}) SELECT {_MESSAGE_VALUES} FROM import_staging s WHERE s.dup = 0 ORDER BY s.line"


_TYPES = {"now": UTCDateTime(), "expires_at": UTCDateTime(), "require_open_window": sa.Boolean()}


def _statement(sql: str) -> sa.TextClause:
    """`sql` with its time and flag parameters bound through the columns' types (UTC, 0/1)."""
    return sa.text(sql).bindparams(*(sa.bindparam(name, type_=t) for name, t in _TYPES.items() if f":{name}" in sql))


def duplicate(line: int, phone: str) -> RowProblem:
    return RowProblem(line, f"duplicate: phone {phone} is already a recipient (first row wins)")


class RecipientStore(Protocol):
    """Stages and merges windows of one import; `write` returns (rows inserted, duplicate rows)."""

    def write(self, rows: list[StagedRow]) -> tuple[int, list[RowProblem]]: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class _Store:
    def __init__(self, engine: sa.Engine, campaign: Campaign) -> None:
        self.connection = engine.connect()
        self.campaign_id = campaign.id
        self.zones = campaign.window_tz == RECIPIENT   # rows carry their zone group (StagedRow's 4th value)
        self.values: dict[str, Any] = {
            "campaign_id": campaign.id, "phone_number_id": campaign.phone_number_id,
            "status": MessageStatus.PENDING.value, "require_open_window": bool(campaign.require_open_window),
            "expires_at": campaign.expires_at,
        }

    def _close(self) -> None:
        self.connection.close()


class PostgresStore(_Store):
    def __init__(self, engine: sa.Engine, campaign: Campaign) -> None:
        super().__init__(engine, campaign)
        self.transaction = self.connection.begin()
        self.connection.exec_driver_sql(_PG_WORK_MEM)
        self.connection.exec_driver_sql(_PG_STAGING)
        self.merge = _statement(_PG_MERGE)
        self.copy = _PG_COPY_ZONES if self.zones else _PG_COPY

    def write(self, rows: list[StagedRow]) -> tuple[int, list[RowProblem]]:
        driver = self.connection.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(self.copy) as copy:
            for row in rows:
                copy.write_row(row)
        dups = [duplicate(line, phone) for line, phone in self.connection.execute(self.merge, {**self.values, "now": utcnow()})]
        self.connection.exec_driver_sql("TRUNCATE import_staging")
        return len(rows) - len(dups), dups

    def commit(self) -> None:
        try:
            self.transaction.commit()
        finally:
            self._close()

    def rollback(self) -> None:
        try:
            self.transaction.rollback()
        finally:
            self._close()


class SqliteStore(_Store):
    def __init__(self, engine: sa.Engine, campaign: Campaign) -> None:
        super().__init__(engine, campaign)
        self.inserted_ids: list[tuple[int, int]] = []   # (after, up to) per window, to undo on failure
        self.mark, self.contacts, self.insert = (_statement(s) for s in (_SQLITE_MARK, _SQLITE_CONTACTS, _SQLITE_INSERT))
        self.stage = _SQLITE_STAGE_ZONES if self.zones else _SQLITE_STAGE
        with self.connection.begin():
            for statement in _SQLITE_STAGING:
                self.connection.exec_driver_sql(statement)

    def write(self, rows: list[StagedRow]) -> tuple[int, list[RowProblem]]:
        values = {**self.values, "now": utcnow()}
        with self.connection.begin():
            self.connection.connection.driver_connection.executemany(self.stage, rows)
            self.connection.execute(self.mark, values)
            dups = [duplicate(line, phone) for line, phone in
                    self.connection.exec_driver_sql("SELECT line, phone FROM import_staging WHERE dup = 1 ORDER BY line")]
            before = self._max_id()
            self.connection.execute(self.contacts, values)
            inserted = self.connection.execute(self.insert, values).rowcount
            self.inserted_ids.append((before, self._max_id()))   # under the write lock: all ours
            self.connection.exec_driver_sql("DELETE FROM import_staging")
        return inserted, dups

    def _max_id(self) -> int:
        return self.connection.exec_driver_sql("SELECT coalesce(max(id), 0) FROM messages").scalar_one()

    def commit(self) -> None:
        self._drop_staging_and_close()

    def rollback(self) -> None:
        try:
            with self.connection.begin():
                for after, up_to in self.inserted_ids:
                    self.connection.exec_driver_sql("DELETE FROM messages WHERE campaign_id = ? AND id > ? AND id <= ?",
                                                    (self.campaign_id, after, up_to))
        finally:
            self._drop_staging_and_close()

    def _drop_staging_and_close(self) -> None:
        try:
            self.connection.exec_driver_sql("DROP TABLE IF EXISTS temp.import_staging")
        finally:
            self._close()


def open_store(session_factory: sessionmaker[Session], campaign: Campaign) -> RecipientStore:
    engine = session_factory.kw["bind"]
    if engine.dialect.name == "postgresql":
        return PostgresStore(engine, campaign)
    if engine.dialect.name == "sqlite":
        return SqliteStore(engine, campaign)
    raise RuntimeError(f"recipients import needs Postgres or SQLite, not {engine.dialect.name}")


_END = object()


class BackgroundWriter:
    """Runs `store.write` on a thread, at most one window queued behind the one being written.
    `report(inserted, duplicates)` is called on that thread, in window order."""

    def __init__(self, store: RecipientStore, report: Callable[[int, list[RowProblem]], None]) -> None:
        self.store, self.report = store, report
        self.windows: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="import-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (rows := self.windows.get()) is not _END:
            if self.error is None:
                try:
                    self.report(*self.store.write(rows))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self.error = exc

    def put(self, rows: list[StagedRow]) -> None:
        """Queue a window; raises the writer's error if it failed."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.windows.put(rows, timeout=_THREAD_POLL_S)
                return
            except queue.Full:
                continue

    def _stop(self) -> None:
        self.windows.put(_END)
        self.thread.join()

    def finish(self) -> None:
        """Write what is queued and commit; on any failure roll back and raise it."""
        self._stop()
        if self.error is not None:
            self.store.rollback()
            raise self.error
        self.store.commit()

    def abort(self) -> None:
        """Stop after the window in progress and roll back everything this import wrote."""
        self.error = self.error or ImportAborted()
        self._drop_queued()
        self._stop()
        self.store.rollback()

    def _drop_queued(self) -> None:
        try:
            while True:
                self.windows.get_nowait()
        except queue.Empty:
            pass


class ImportAborted(Exception):
    """Internal: the reader failed; the writer stops writing."""
