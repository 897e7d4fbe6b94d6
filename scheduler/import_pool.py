"""The import's checks spread over the machine's cores: chunks of records judged by a process pool.

The main process reads the CSV (cheap: csv.reader runs at over a million rows a second) and hands
chunks of CHUNK_RECORDS records to a pool of processes, each with its own RowJudge; results come
back in file order, at most IN_FLIGHT_PER_PROCESS chunks per process ahead of the consumer, so
memory stays bounded whatever the file's size. A small file (under PARALLEL_MIN_BYTES) is judged
in this process: a pool costs more to start than it saves there. Both paths run the same
RowJudge.judge on the same chunks, so their rows and problems are identical.

Processes come from a forkserver with this module preloaded: forking the caller directly is
unsafe in a threaded process (the API server runs imports on its thread pool), and a spawned
process would re-import everything per import. A pool process that dies (killed, out of memory)
fails the import with ImportInterrupted; the caller rolls back, so no partial rows are left.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any, Iterator

from scheduler.recipients_csv import JudgedChunk, RecipientsFile, RowJudge
from scheduler.template import MessageTemplate
from worker.errors import ButtoncastError

CHUNK_RECORDS = 2_000
PARALLEL_MIN_BYTES = 2 * 1024 * 1024   # ~50,000 rows of a typical file
IN_FLIGHT_PER_PROCESS = 2

_judge: RowJudge | None = None   # a pool process's judge, built once by _start


class ImportInterrupted(ButtoncastError):
    """The import stopped part way for a reason outside the file (a checking process died)."""


def default_processes() -> int:
    """The cores this process may run on (its CPU affinity, not merely the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _start(template_data: dict[str, Any], layout: Any, default_region: str | None, zones: bool) -> None:
    global _judge
    _judge = RowJudge(template_data, layout, default_region, zones)


def _judge_chunk(records: list) -> JudgedChunk:
    assert _judge is not None, "pool process not initialised"
    return _judge.judge(records)


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # takes effect when the server first starts
    return context


def judged_chunks(path: str | os.PathLike[str], template: MessageTemplate, *, default_region: str | None = None,
                  processes: int | None = None, zones: bool = False) -> Iterator[JudgedChunk]:
    """The file's records judged, chunk by chunk in file order; raises RecipientsFileError for the
    file as a whole (header, encoding). `processes`: None chooses (the cores, for a big file);
    1 judges in this process. `zones`: each row's zone group too (a `--tz recipient` campaign)."""
    with RecipientsFile(path, template) as recipients:
        if processes is None:
            big = os.path.getsize(recipients.name) >= PARALLEL_MIN_BYTES
            processes = default_processes() if big else 1
        chunks = _chunks(iter(recipients))
        if processes <= 1:
            judge = RowJudge(template.data, recipients.layout, default_region, zones)
            yield from map(judge.judge, chunks)
        else:
            yield from _in_pool(chunks, processes, (template.data, recipients.layout, default_region, zones))


def _chunks(records: Iterator) -> Iterator[list]:
    while chunk := list(islice(records, CHUNK_RECORDS)):
        yield chunk


def _in_pool(chunks: Iterator[list], processes: int, judge_args: tuple) -> Iterator[JudgedChunk]:
    pool = ProcessPoolExecutor(processes, mp_context=_context(), initializer=_start, initargs=judge_args)
    pending: deque[Future[JudgedChunk]] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_judge_chunk, chunk))
            if len(pending) >= processes * IN_FLIGHT_PER_PROCESS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:   # from a result or from the next submit, whichever comes first
        raise ImportInterrupted("a process checking the recipients stopped unexpectedly (killed, or out of memory); "
                                "nothing was imported") from None
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
