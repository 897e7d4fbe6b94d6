"""The baseline of bench/throughput.py: what one would write instead of buttoncast. A Celery task per
recipient that signs the request, POSTs it with `requests` and inserts a result row with the ORM;
no claim, no rate limiter, no retry, no journal, no consent check. Run it the way its author would:

    NAIVE_BROKER_URL=redis://... NAIVE_DATABASE_URL=postgresql+psycopg://... NAIVE_VENDOR_URL=http://... \\
        celery -A naive_sender worker --pool threads -c 16
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import requests
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

TASK = "naive.send"
QUEUE = "naive.send"
SECRET = b"sandbox-secret"
PATH = "/w/message/button"


class Base(DeclarativeBase):
    pass


class Result(Base):
    __tablename__ = "naive_results"
    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str] = mapped_column(sa.String(20))
    message_id: Mapped[str | None] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(16))


app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "memory://"))
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True, task_acks_late=True,
                worker_hijack_root_logger=False, task_default_queue=QUEUE)
engine = sa.create_engine(os.environ.get("NAIVE_DATABASE_URL", "sqlite://"), pool_size=16)
http = requests.Session()


@app.task(name=TASK)
def send(recipient: int) -> None:
    phone = f"9665{recipient:08d}"
    body = json.dumps({"to": phone, "type": "button", "body": {"text": "Hello! 20% off this weekend."},
                       "buttons": [{"id": "reserve", "title": "Reserve a slot"}]}).encode()
    timestamp = str(int(time.time()))
    signature = hmac.new(SECRET, b"POST" + PATH.encode() + timestamp.encode() + body, hashlib.sha256).hexdigest()
    response = http.post(os.environ["NAIVE_VENDOR_URL"] + PATH, data=body, timeout=30, headers={
        "Content-Type": "application/json", "X-Awal-Timestamp": timestamp, "X-Awal-Signature-256": "sha256=" + signature})
    reply = response.json()
    with Session(engine) as session, session.begin():
        session.add(Result(phone=phone, message_id=reply["message"]["messageId"], status="sent" if reply["status"] else "failed"))
