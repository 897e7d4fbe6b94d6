"""Putting send tasks on the broker. The broker carries only the message id.

Publishing happens after the rows are committed as `queued`; if it fails, the rows are handed
back to the dispatcher (enqueued_at = NULL), which publishes them again on its next tick.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from worker.models import Message
from worker.queues import TASK_SEND
from worker.status import MessageStatus

log = logging.getLogger("buttoncast.publish")


def publish_send_tasks(celery: Celery, message_ids: Sequence[int], *, queue: str) -> None:
    """Publish one standard Celery task per id, over one producer connection."""
    if not message_ids:
        return
    with celery.producer_or_acquire() as producer:
        for message_id in message_ids:
            celery.send_task(TASK_SEND, args=[message_id], queue=queue, producer=producer, ignore_result=True)


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
