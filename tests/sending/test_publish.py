"""Publishing send tasks: the pipelined Redis path writes standard Celery messages that a stock
worker runs, and other brokers (the embedded memory://) still go through send_task."""

from __future__ import annotations

import base64
import json

import pytest
import redis
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env, wait_until
from worker.celery_app import create_celery
from worker.models import Campaign, Message
from worker.queues import QUEUE_ADHOC, QUEUE_CAMPAIGN, TASK_SEND
from worker.sending.publish import publish_send_tasks
from worker.settings import Settings

BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
PER_MESSAGE = ("id", "root_id", "origin", "argsrepr", "correlation_id", "delivery_tag", "reply_to")


def _strip(envelope: dict) -> dict:
    """The envelope without what differs per message or per publisher."""
    headers = {k: v for k, v in envelope["headers"].items() if k not in PER_MESSAGE}
    properties = {k: v for k, v in envelope["properties"].items() if k not in PER_MESSAGE}
    return {**envelope, "headers": headers, "properties": properties, "body": None}


def test_fast_path_writes_the_same_message_send_task_writes(redis_url: str) -> None:
    # Given a Redis broker, when one id goes out through send_task and another through the fast path
    app = create_celery(Settings.from_env({"CELERY_BROKER_URL": redis_url}))
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE_CAMPAIGN)
    app.send_task(TASK_SEND, args=[41], queue=QUEUE_CAMPAIGN, ignore_result=True)
    publish_send_tasks(app, [42, 43], queue=QUEUE_CAMPAIGN)

    # then the list holds three messages, oldest at the tail, laid out alike
    stock, fast, fast_next = (json.loads(raw) for raw in reversed(client.lrange(QUEUE_CAMPAIGN, 0, -1)))
    client.delete(QUEUE_CAMPAIGN)
    assert _strip(fast) == _strip(stock)
    for envelope, message_id in ((stock, 41), (fast, 42), (fast_next, 43)):
        args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
        assert (args, kwargs) == ([message_id], {})
        assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        assert envelope["headers"]["argsrepr"] == f"[{message_id}]"
        assert envelope["headers"]["id"] == envelope["headers"]["root_id"] == envelope["properties"]["correlation_id"]
    assert fast["headers"]["id"] != fast_next["headers"]["id"]
    assert fast["properties"]["delivery_tag"] != fast_next["properties"]["delivery_tag"]


@pytest.mark.slow
def test_a_stock_worker_runs_fast_path_tasks_and_sends_each_message_once(
    migrated_postgres, redis_url, sandbox, spawn  # noqa: ANN001
) -> None:
    # Given 60 queued campaign messages and a real `buttoncast worker` on the Redis broker
    base_url, vendor = sandbox
    redis.Redis.from_url(redis_url).flushdb()  # no limiter state or stray tasks left by earlier tests
    env = stack_env(database_url=migrated_postgres, sandbox_url=base_url, broker_url=redis_url,
                    AWAL_RATE_LIMIT="1000/s", AWAL_RATE_BURST="50")
    spawn(env, "worker", "--concurrency", "8")
    rt = make_runtime(env)
    phones = [f"9665100{i:05d}" for i in range(60)]
    with rt.session_factory.begin() as s:
        campaign = Campaign(name="publish", phone_number_id="123456", template={"body_text": "x", "buttons": BUTTONS},
                            status="running")
        s.add(campaign)
        s.flush()
        rows = [Message(campaign_id=campaign.id, phone_number_id="123456", phone=p, status="queued",
                        content={"body_text": "Hi", "buttons": BUTTONS}) for p in phones]
        s.add_all(rows)
        s.flush()
        ids = [m.id for m in rows]

    # when the fast path publishes them (the first ten twice: a duplicate delivery)
    publish_send_tasks(rt.celery, ids, queue=QUEUE_CAMPAIGN)
    publish_send_tasks(rt.celery, ids[:10], queue=QUEUE_CAMPAIGN)

    # then every message ends sent, and the vendor got each phone exactly once
    def all_sent() -> bool:
        with rt.session_factory() as s:
            return s.scalar(sa.select(sa.func.count()).where(Message.id.in_(ids), Message.status == "sent")) == len(ids)

    try:
        wait_until(all_sent, 60, what="all fast-path messages sent")
    except AssertionError:
        with rt.session_factory() as s:
            statuses = s.execute(sa.select(Message.status, Message.last_error_code, sa.func.count())
                                 .where(Message.id.in_(ids)).group_by(Message.status, Message.last_error_code)).all()
        raise AssertionError(f"not all sent: {statuses}") from None
    counts = vendor.counts_per_phone()
    assert {p: counts.get(p) for p in phones} == {p: 1 for p in phones}
    rt.close()


def test_memory_broker_falls_back_to_send_task() -> None:
    # Given the embedded in-process broker, when ids are published
    app = create_celery(Settings.from_env({}))
    assert app.conf.broker_url.startswith("memory://")
    publish_send_tasks(app, [7, 8, 9], queue=QUEUE_ADHOC)

    # then a consumer of the ad-hoc queue receives three standard send tasks, in order
    received: list[tuple[str, list]] = []

    def on_message(body, message) -> None:  # noqa: ANN001
        received.append((message.headers["task"], body[0]))
        message.ack()

    with app.connection_for_read() as conn:
        with conn.Consumer(app.amqp.queues[QUEUE_ADHOC], callbacks=[on_message], accept=["json"]):
            while len(received) < 3:
                conn.drain_events(timeout=5)
    assert received == [(TASK_SEND, [7]), (TASK_SEND, [8]), (TASK_SEND, [9])]
