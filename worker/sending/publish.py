"""Putting send tasks on the broker. The broker carries only the message id.

Publishing happens after the rows are committed as `queued`; if it fails, the rows are handed
back to the dispatcher (enqueued_at = NULL), which publishes them again on its next tick.

On a Redis broker the tasks are written straight to the queue's list: standard Celery protocol-2
messages in kombu's Redis envelope, built from a template and pushed with one LPUSH per chunk in
one pipeline (one round trip per call). `send_task` costs about a millisecond per task in Celery's
own code (routing, signals, per-call serialisation); this path costs a few microseconds, so the
dispatcher's database UPDATE, not the publish, is what a tick spends its time on. Any other broker
(the embedded `memory://`) goes through `send_task`.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import socket
import uuid
from typing import Iterable, Sequence

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from worker.models import Message
from worker.queues import TASK_SEND
from worker.status import MessageStatus

log = logging.getLogger("buttoncast.publish")

#: values per LPUSH command: large enough to amortise the round trip, small enough that one
#: command never blocks the Redis server noticeably (about 1 KB per message)
LPUSH_CHUNK = 500
#: Celery's protocol-2 "embed" part for a task with no callbacks, errbacks, chain or chord
_EMBED = b'{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'


def publish_send_tasks(celery: Celery, message_ids: Sequence[int], *, queue: str) -> None:
    """Publish one standard Celery send task per id: pipelined on Redis, `send_task` otherwise."""
    if not message_ids:
        return
    with celery.producer_or_acquire() as producer:
        channel = producer.channel
        if _is_redis(channel):
            _push_redis(channel, message_ids, queue, origin=_origin())
            return
        for message_id in message_ids:
            celery.send_task(TASK_SEND, args=[message_id], queue=queue, producer=producer, ignore_result=True)


def _is_redis(channel: object) -> bool:
    try:
        from kombu.transport.redis import Channel as RedisChannel
    except ImportError:  # pragma: no cover - the redis extra is a dependency
        return False
    return isinstance(channel, RedisChannel)


def _origin() -> str:
    return f"gen{os.getpid()}@{socket.gethostname()}"


def task_message(message_id: int, queue: str, *, origin: str, task: str = TASK_SEND) -> bytes:
    """One task exactly as `send_task(task, args=[message_id], queue=queue, ignore_result=True)`
    lays it out in a Redis list: kombu's envelope around Celery's protocol-2 headers and body."""
    return _template(queue, origin, task).render(message_id)


class _Template:
    """The envelope rendered once by json.dumps with placeholders; per message only the id, the
    body and two fresh uuids are put in (a few microseconds instead of a full json.dumps)."""

    def __init__(self, queue: str, origin: str, task: str) -> None:
        envelope = {
            "body": "@@BODY@@",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py", "task": task, "id": "@@TASK_ID@@", "shadow": None, "eta": None, "expires": None,
                "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
                "root_id": "@@TASK_ID@@", "parent_id": None, "argsrepr": "[@@ARG@@]", "kwargsrepr": "{}",
                "origin": origin, "ignore_result": True, "replaced_task_nesting": 0,
                "stamped_headers": None, "stamps": {},
            },
            "properties": {
                "correlation_id": "@@TASK_ID@@",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": "@@TAG@@",
            },
        }
        text = json.dumps(envelope).replace("%", "%%")
        for placeholder, slot in (("@@BODY@@", "%(body)s"), ("@@TASK_ID@@", "%(task_id)s"), ("@@ARG@@", "%(arg)d"),
                                  ("@@TAG@@", "%(tag)s")):
            text = text.replace(placeholder, slot)
        self._format = text

    def render(self, message_id: int) -> bytes:
        message_id = int(message_id)
        body = base64.b64encode(b"[[%d], {}, %s]" % (message_id, _EMBED)).decode("ascii")
        return (self._format % {"body": body, "task_id": uuid.uuid4(), "arg": message_id, "tag": uuid.uuid4()}).encode()


@functools.lru_cache(maxsize=64)
def _template(queue: str, origin: str, task: str) -> _Template:
    return _Template(queue, origin, task)


def _push_redis(channel, message_ids: Sequence[int], queue: str, *, origin: str) -> None:  # noqa: ANN001
    """LPUSH to the queue's list (priority 0 is the queue name itself), in id order: the consumer
    pops from the other end, so the first id pushed is the first one sent."""
    key = channel._q_for_pri(queue, 0)
    template = _template(queue, origin, TASK_SEND)
    client = channel.client  # kombu's client: carries the broker URL's auth, TLS and global_keyprefix
    with client.pipeline(transaction=False) as pipe:
        for start in range(0, len(message_ids), LPUSH_CHUNK):
            chunk = message_ids[start:start + LPUSH_CHUNK]
            pipe.lpush(key, *(template.render(mid) for mid in chunk))
        pipe.execute()


def hand_back_to_dispatcher(session_factory: sessionmaker[Session], message_ids: Iterable[int]) -> None:
    """Publishing failed: let the dispatcher publish these queued messages on its next tick."""
    ids = list(message_ids)
    if not ids:
        return
    with session_factory.begin() as session:
        session.execute(
            sa.update(Message)
            .where(Message.id.in_(ids), Message.status == MessageStatus.QUEUED.value)
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
