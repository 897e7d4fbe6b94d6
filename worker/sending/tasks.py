"""Celery tasks of the send side. Each is a thin shell around a plain function."""

from __future__ import annotations

from typing import Any

from worker.celery_app import app
from worker.queues import TASK_ENQUEUE, TASK_SEND
from worker.runtime import get_runtime
from worker.sending.enqueue import enqueue_payload, task_idempotency_key
from worker.sending.send import send_deps, send_message


@app.task(name=TASK_SEND, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def send_message_task(message_id: int) -> str:
    """Send one stored message. The payload is the message id only; the row holds everything."""
    return send_message(int(message_id), send_deps(get_runtime())).value


@app.task(name=TASK_ENQUEUE, acks_late=True, ignore_result=False, bind=True)
def enqueue_message_task(self, payload: dict[str, Any]) -> dict[str, Any]:  # noqa: ANN001 - the bound task
    """For apps that share only the broker: `send_task("buttoncast.enqueue_message", args=[{...}])`.

    Without an `idempotency_key` the task id is the key: a redelivery (acks_late) inserts nothing."""
    return enqueue_payload(payload, get_runtime(), default_key=task_idempotency_key(self.request.id))


import worker.hooks.tasks  # noqa: E402,F401 - registers buttoncast.deliver_hooks wherever the send tasks are
