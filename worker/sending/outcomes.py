"""Group commit of send outcomes (issue 26 item 2): one writer per worker process.

A send thread whose message the vendor accepted hands the outcome to this process's writer and
waits; the writer takes every outcome handed in while its previous commit ran (up to
OUTCOME_BATCH_MAX, waiting at most OUTCOME_BATCH_DELAY_S for more) and writes them with one
statement and one commit (`store.record_sent_batch`). The thread returns only when its outcome is
durable, so Celery acknowledges the task (acks_late) after the commit, never before: a crash
before the commit leaves the message `sending`, and its task unacknowledged.

What a failed batch does: the database unreachable -> every waiting thread gets the error and takes
the send path's own retry, journal and RECONCILE line for its message (`send._record`); any other
refusal (a messageId another message holds, a deadlock between two writers on one contact) ->
every thread records its message alone, as without a writer. Nothing is lost to a batch.

Postgres only: SQLite has one writer anyway, and each send records itself there.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Callable

import psycopg
import sqlalchemy as sa

from worker import metrics
from worker.db import DATABASE_UNAVAILABLE
from worker.runtime import Runtime
from worker.sending.store import SentOutcome, record_sent_batch

log = logging.getLogger("buttoncast.outcomes")


class BatchRefused(Exception):
    """The batch statement was refused for a reason that is not an outage: record alone."""


class OutcomeWriter:
    """This process's group-commit writer. `record(outcome)` blocks until the outcome is committed
    and says whether the claim token still owned the row (as `store.record_sent` does)."""

    def __init__(self, connect: Callable[[], AbstractContextManager[sa.Connection]], *, max_batch: int,
                 max_delay_s: float) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._pending: list[tuple[SentOutcome, Future[bool]]] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def record(self, outcome: SentOutcome) -> bool:
        future: Future[bool] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the outcome writer is closed")
            self._pending.append((outcome, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="buttoncast-outcomes", daemon=True)
                self._thread.start()
            self._ready.notify()
        return future.result()

    def close(self) -> None:
        """Write what is pending, then stop (a process shutting down)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(10)

    def _take(self) -> list[tuple[SentOutcome, Future[bool]]]:
        """Wait for the first outcome; then for more, until the batch is full or the delay is over."""
        with self._ready:
            while not self._pending and not self._closed:
                self._ready.wait()
            deadline = time.monotonic() + self._max_delay_s
            while len(self._pending) < self._max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return   # closed, nothing left
            self._write(batch)

    def _write(self, batch: list[tuple[SentOutcome, Future[bool]]]) -> None:
        began = time.perf_counter()
        try:
            with self._connect() as conn:
                written = record_sent_batch(conn, [outcome for outcome, _ in batch])
        except DATABASE_UNAVAILABLE as exc:
            if isinstance(getattr(exc, "orig", None), psycopg.errors.TransactionRollback):   # a deadlock: not an outage
                log.info("a batch of %d outcomes met another writer (%s); each is recorded alone", len(batch),
                         type(exc.orig).__name__)
                for _, future in batch:
                    future.set_exception(BatchRefused())
                return
            for _, future in batch:
                future.set_exception(exc)
            return
        except sa.exc.DBAPIError as exc:
            log.info("a batch of %d outcomes was refused (%s); each is recorded alone", len(batch),
                     type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__)
            for _, future in batch:
                future.set_exception(BatchRefused())
            return
        except BaseException as exc:   # never leave a sender waiting for ever
            for _, future in batch:
                future.set_exception(exc)
            raise
        metrics.OUTCOME_COMMIT_SECONDS.observe(time.perf_counter() - began)
        metrics.OUTCOME_BATCH_SIZE.observe(len(batch))
        for outcome, future in batch:
            future.set_result(outcome.message_id in written)


def writer_of(runtime: Runtime) -> OutcomeWriter | None:
    """This process's writer (Postgres), or None: SQLite records each send itself."""
    if runtime.settings.sqlite:
        return None
    return runtime.component("outcome_writer", lambda rt: OutcomeWriter(
        rt.single_statements, max_batch=rt.settings.outcome_batch_max, max_delay_s=rt.settings.outcome_batch_delay_s),
        close=OutcomeWriter.close)
