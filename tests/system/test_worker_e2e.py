"""The whole send path with real processes: a `buttoncast worker` consuming the real Redis broker,
the real Postgres, and the sandbox. Scenarios from the send-path issue's "Must show"."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env, wait_until
from worker.models import Attempt, Message
from worker.queues import QUEUE_ADHOC, QUEUE_CAMPAIGN, TASK_ENQUEUE
from worker.sending.enqueue import enqueue_message
from worker.sending.publish import publish_send_tasks

pytestmark = pytest.mark.slow
BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]


@pytest.fixture()
def stack(clean_postgres, redis_url, sandbox, spawn):  # noqa: ANN001
    base_url, vendor = sandbox
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # a clean broker and limiter for this test
    env = stack_env(database_url=clean_postgres, sandbox_url=base_url, broker_url=redis_url,
                    SEND_READ_TIMEOUT_S="1", SEND_RETRY_MAX_WAIT_S="0.05", AWAL_RATE_LIMIT="100/s", AWAL_RATE_BURST="20")
    spawn(env, "worker", "--concurrency", "4")
    rt = make_runtime(env)
    yield rt, vendor
    rt.close()


def final(rt, mid: int, statuses=("sent", "failed", "unknown", "rejected")) -> Message:  # noqa: ANN001
    def done() -> Message | None:
        with rt.session_factory() as s:
            msg = s.get(Message, mid)
            return msg if msg.status in statuses else None

    return wait_until(done, 30, what=f"message {mid} to reach {statuses}")


def attempt_statuses(rt, mid: int) -> list[int | None]:  # noqa: ANN001
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(Attempt.http_status).where(Attempt.message_id == mid).order_by(Attempt.id)))


def test_enqueued_message_goes_queued_sending_sent_with_the_sandbox_ids(stack) -> None:
    rt, vendor = stack
    mid = enqueue_message(phone="+966 50000-0001", body_text="Your order shipped 🎉", buttons=BUTTONS, runtime=rt)

    msg = final(rt, mid)

    assert msg.status == "sent", (msg.status, msg.last_error_code, msg.last_error_message)
    [received] = vendor.received(phone="966500000001")  # "+966 50000-0001" normalised
    assert msg.status == "sent"
    assert (msg.vendor_id, msg.vendor_message_id) == (received["id"], received["message_id"])
    assert msg.queued_at <= msg.sent_at and attempt_statuses(rt, mid) == [200]


def test_vendor_400_ends_failed_with_the_vendor_code(stack) -> None:
    rt, vendor = stack
    vendor.script("966500000002", ["400"])
    msg = final(rt, enqueue_message(phone="966500000002", body_text="x", buttons=BUTTONS, runtime=rt))
    assert msg.status == "failed" and msg.last_error_code not in (None, "permanent")


def test_two_503s_then_200_ends_sent_with_three_attempt_rows(stack) -> None:
    rt, vendor = stack
    vendor.script("966500000003", ["503", "503"])
    mid = enqueue_message(phone="966500000003", body_text="x", buttons=BUTTONS, runtime=rt)
    assert final(rt, mid).status == "sent"
    assert attempt_statuses(rt, mid) == [503, 503, 200]


def test_read_timeout_ends_unknown_and_the_sandbox_received_it_once(stack) -> None:
    rt, vendor = stack
    vendor.script("966500000004", ["timeout"])
    mid = enqueue_message(phone="966500000004", body_text="x", buttons=BUTTONS, runtime=rt)
    assert final(rt, mid).status == "unknown"
    assert len(vendor.received(phone="966500000004")) == 1


def test_the_same_task_delivered_twice_sends_once(stack) -> None:
    rt, vendor = stack
    mid = enqueue_message(phone="966500000005", body_text="x", buttons=BUTTONS, runtime=rt)
    publish_send_tasks(rt.celery, [mid, mid, mid], queue=QUEUE_ADHOC)  # the broker delivers it again
    assert final(rt, mid).status == "sent"
    wait_until(lambda: rt.celery.connection().default_channel.client.llen(QUEUE_ADHOC) == 0, 10, what="queue drained")
    assert len(vendor.received(phone="966500000005")) == 1


def test_an_app_sharing_only_the_broker_enqueues_with_an_idempotency_key_once(stack) -> None:
    rt, vendor = stack
    payload = {"phone": "966500000006", "body_text": "Hi", "buttons": BUTTONS, "idempotency_key": "invoice-7"}
    first = rt.celery.send_task(TASK_ENQUEUE, args=[payload]).get(timeout=30)
    second = rt.celery.send_task(TASK_ENQUEUE, args=[payload]).get(timeout=30)

    assert first["status"] == second["status"] == "queued"
    assert first["message_id"] == second["message_id"]
    assert final(rt, first["message_id"]).status == "sent"
    assert len(vendor.received(phone="966500000006")) == 1


def test_an_invalid_payload_from_the_broker_is_rejected_and_the_result_says_so(stack) -> None:
    rt, vendor = stack
    result = rt.celery.send_task(TASK_ENQUEUE, args=[{"phone": "966500000007", "body_text": "x" * 1025, "buttons": BUTTONS}]).get(timeout=30)
    assert result["status"] == "rejected"
    assert result["errors"][0]["field"] == "body_text" and "1024" in result["errors"][0]["problem"]
    assert final(rt, result["message_id"]).status == "rejected"
    assert vendor.received(phone="966500000007") == []


def test_a_broker_enqueue_redelivered_with_the_same_task_id_stores_and_sends_one_message(stack) -> None:
    """Issue 12 item 6: a real worker gets `buttoncast.enqueue_message` twice with the same task id
    and no idempotency_key (what acks_late redelivers after a worker died between commit and ack):
    one message row (keyed by the task id), one send."""
    rt, vendor = stack
    payload = {"phone": "966500000008", "body_text": "Hi", "buttons": BUTTONS}
    first = rt.celery.send_task(TASK_ENQUEUE, args=[payload], task_id="redelivered-enqueue-1").get(timeout=30)
    assert first["status"] == "queued" and final(rt, first["message_id"]).status == "sent"

    rt.celery.send_task(TASK_ENQUEUE, args=[payload], task_id="redelivered-enqueue-1")   # the redelivery
    broker = rt.celery.connection().default_channel.client
    # acks_late: a task stays in the transport's `unacked` hash until it has finished
    wait_until(lambda: broker.llen(QUEUE_CAMPAIGN) == 0 and broker.hlen("unacked") == 0, 30,
               what="the redelivered task to run and be acked")

    with rt.session_factory() as s:
        keys = s.scalars(sa.select(Message.idempotency_key).where(Message.phone == "966500000008")).all()
    assert keys == ["celery-task:redelivered-enqueue-1"]
    assert len(vendor.received(phone="966500000008")) == 1
