"""Engines and sessions for Postgres (psycopg 3) and SQLite, and migrations via Alembic."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 20
# A pooled connection is pinged before use only after sitting idle this long: a busy worker checks
# connections out thousands of times a second, and a ping on every checkout (pool_pre_ping) was a
# database round trip on each of the send path's three transactions.
PG_PING_IDLE_S = 5.0
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


# The database cannot take a statement now: unreachable, a broken connection, or no pooled
# connection free for the pool's timeout (a hung database). Outcome writes retry these and journal.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)


def make_engine(database_url: str, *, read_only: bool = False, pool_size: int = PG_POOL_SIZE,
                max_overflow: int = PG_MAX_OVERFLOW) -> Engine:
    """An engine tuned for the backend. SQLite: WAL, a busy timeout, and BEGIN IMMEDIATE so that
    concurrent writers in one process queue up instead of failing on a lock upgrade.

    `read_only` (SQLite): plain deferred BEGIN, for long reads (reports) that must not hold the
    write lock while workers wait for it; WAL lets them read a consistent snapshot meanwhile.
    `pool_size` (Postgres): connections kept open (DATABASE_POOL_SIZE for a process's runtime), opened
    lazily; up to `max_overflow` more are opened for a burst and closed when returned. A worker
    process passes 0 (Runtime.bound_pool): its threads hold a connection only for their statements
    and never two at once (worker/sending/send.py _Statements), so 64 threads share 16 at the same rate,
    where overflow let 3 worker processes pass Postgres's default max_connections of 100."""
    if database_url.startswith("sqlite"):
        engine = sa.create_engine(
            database_url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    engine = sa.create_engine(database_url, pool_size=pool_size, max_overflow=max_overflow)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping, but only for connections idle longer than PG_PING_IDLE_S (a restarted or
    failed-over database is noticed before use; a busy pool pays nothing). A dead connection is
    replaced by the pool, as pool_pre_ping would; one that dies while in use raises as before."""

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record):  # noqa: ANN001
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy):  # noqa: ANN001
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PG_PING_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure: let the pool open a fresh connection
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def single_statements(engine: Engine) -> Callable[[], AbstractContextManager[sa.Connection]]:
    """Connections for work that is one statement. On Postgres they are in autocommit, so the
    statement is its own transaction and the BEGIN and COMMIT round trips go away (the send path's
    load, claim and record went from 11 round trips to 3); same pool, same connections. On SQLite
    each is an ordinary transaction (BEGIN IMMEDIATE), so several statements there stay atomic."""
    if engine.dialect.name == "sqlite":
        return engine.begin
    return engine.execution_options(isolation_level="AUTOCOMMIT").connect


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str):  # noqa: ANN201 - alembic.config.Config
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (what `buttoncast db upgrade` runs)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


Row = TypeVar("Row")
_NO_ROW = object()


class StreamedRead(Iterator[str]):
    """The chunks of a download and the read session they come from, closed together.

    `close()` (idempotent) closes the renderer, the row iterator (its cursor) and the session, so
    the connection goes back to the pool with its transaction ended. A generator's own `finally`
    is not enough: a generator that was never started, or one a client abandoned mid-stream, runs
    it only when it is garbage-collected, and until then its connection sits "idle in
    transaction". The response that streams it (worker.downloads) calls `close()` when it ends,
    however it ends; reading to the end closes it too. Not for two threads at once: close it only
    while no `next()` runs."""

    def __init__(self, session: Session, rows: Iterator[Row], chunks: Iterator[str]) -> None:
        self._session, self._rows, self._chunks = session, rows, chunks
        self.closed = False

    def __iter__(self) -> "StreamedRead":
        return self

    def __next__(self) -> str:
        if self.closed:
            raise StopIteration
        try:
            return next(self._chunks)
        except BaseException:   # the end, or an error: either way nothing more is read
            self.close()
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for iterator in (self._chunks, self._rows):
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        finally:
            self._session.close()


def streamed_read(sessions: Callable[[], Session], rows: Callable[[Session], Iterator[Row]],
                  render: Callable[[Iterator[Row]], Iterator[str]]) -> StreamedRead:
    """A download read for as long as it streams: the API's report and the console's CSVs.

    The first row is read now, so a missing campaign raises before a response starts; the session
    stays open while the returned iterator is consumed and closes when it ends or is closed
    (`StreamedRead.close`, which worker.downloads.DownloadResponse calls however the response ends)."""
    session = sessions()
    try:
        iterator = rows(session)
        first = next(iterator, _NO_ROW)
    except BaseException:
        session.close()
        raise
    return StreamedRead(session, iterator, render(iter(()) if first is _NO_ROW else _chain(first, iterator)))


def _chain(first: Row, rest: Iterator[Row]) -> Iterator[Row]:
    yield first
    yield from rest
