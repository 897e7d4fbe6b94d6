"""The baseline for bench/ratelimit.py: the same sending work with Celery's own `rate_limit`.

Celery's rate_limit is a token bucket per worker instance (its docs say so), so N workers send at
N times the limit. Run: `celery -A bench.ratelimit_baseline worker --pool threads -c 4`, with
BENCH_RATE (e.g. "50/s") and the AWAL_* settings of the sandbox in the environment.
"""

from __future__ import annotations

import os

from celery import Celery

from worker.errors import AwalError
from worker.message import ButtonMessage
from worker.sending.client import build_client
from worker.settings import Settings

QUEUE = "bench.baseline"
settings = Settings.from_env()
app = Celery("bench_baseline", broker=settings.broker_url)
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
_client = None


@app.task(name="bench.send_direct", rate_limit=os.environ.get("BENCH_RATE", "50/s"))
def send_direct(phone: str) -> str:
    """Sign and send one message; what the vendor answered is all the bench looks at."""
    global _client
    if _client is None:
        _client = build_client(settings)
    message = ButtonMessage.build(phone=phone, body_text="Rate limit bench", buttons=[{"id": "ok", "title": "OK"}])
    try:
        _client.send_once(message.body_bytes(), settings.awal_phone_number_id or "123456")
    except AwalError as exc:
        return exc.code
    return "sent"
