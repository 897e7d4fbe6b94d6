"""What the broker still holds (issue 12 item 12): its epoch, and the send tasks waiting on it.

The epoch is a key kept in the broker's own Redis db: it vanishes with the queues when that db is
flushed or Redis restarts without persistence. Each dispatcher tick and sweep reads it; when it is
missing (or differs from the one this process last saw) the tasks published before its start are
gone, and the rows still marked `queued` with an older `enqueued_at` are handed back at once, not
after QUEUED_TASK_TIMEOUT_S. The inventory (`task_ids_on_broker`) lets the sweep republish only the
ids whose task is really missing, so a broker nobody consumes does not pile up copies.

Only a Redis broker is inspected; any other (`memory://`, amqp) returns None and the callers keep
the timeout-based republishing.
"""

from __future__ import annotations

import re
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterable, Iterator

from celery import Celery

EPOCH_KEY = "buttoncast:broker-epoch"
_ARG_RE = re.compile(rb'"argsrepr": "\[(\d+)\]"')
_SCAN_CHUNK = 1000


@contextmanager
def redis_channel(celery: Celery) -> Iterator[object | None]:
    """The broker's kombu Redis channel (its client carries auth, TLS and global_keyprefix), or None."""
    with celery.producer_or_acquire() as producer:
        channel = producer.channel
        from worker.sending.publish import _is_redis

        yield channel if _is_redis(channel) else None


def current_epoch(celery: Celery, now: datetime) -> tuple[str, datetime] | None:
    """(epoch id, its start) of the broker; a missing epoch is created (SET NX). None if not Redis.

    A new epoch starts when the key was seen missing, never earlier than `now` (issue 25): the
    caller's `now` was read before it reached the broker, and under load another process's tick
    can claim rows (enqueued_at = its own, later, clock) and publish them in between, to a broker
    flushed just after. Those rows must fall before the new epoch's start to be handed back; with
    the caller's clock they did not, and waited QUEUED_TASK_TIMEOUT_S (10 minutes by default)."""
    with redis_channel(celery) as channel:
        if channel is None:
            return None
        client = channel.client
        raw = client.get(EPOCH_KEY)
        if raw is None:
            started = max(now, datetime.now(timezone.utc))   # every task lost was published before this
            client.set(EPOCH_KEY, f"{uuid.uuid4().hex} {started.astimezone(timezone.utc).isoformat()}", nx=True)
            raw = client.get(EPOCH_KEY)
    epoch_id, _, started = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(" ")
    return epoch_id, datetime.fromisoformat(started)


def task_ids_on_broker(celery: Celery, queues: Iterable[str]) -> set[int] | None:
    """Message ids of every send task waiting on `queues`; None if the broker is not Redis. Bounded
    by flow control: the dispatcher never has more than its look-ahead window out. Tasks reserved
    (unacked) by a worker are not counted: a SIGKILLed worker's reservations stay in kombu's
    `unacked` hash until the visibility timeout (an hour), so the timeout path republishes them
    (a duplicate of a live worker's reservation is harmless: the claim lets one through)."""
    with redis_channel(celery) as channel:
        if channel is None:
            return None
        client = channel.client
        ids: set[int] = set()
        for queue in queues:
            for priority in channel.priority_steps:
                key = channel._q_for_pri(queue, priority)
                length = client.llen(key)
                for start in range(0, length, _SCAN_CHUNK):
                    ids.update(_ids(client.lrange(key, start, start + _SCAN_CHUNK - 1)))
        return ids


def _ids(raw_items: Iterable[bytes]) -> Iterator[int]:
    for raw in raw_items:
        match = _ARG_RE.search(raw if isinstance(raw, bytes) else str(raw).encode())
        if match:
            yield int(match.group(1))
