"""Idempotent enqueue (issue 12 items 5 and 6), on SQLite and Postgres: a rejected request saves no
idempotent result, and a broker enqueue redelivered after a lost ack inserts no second row."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env
from worker.models import Message
from worker.runtime import install_runtime
from worker.sending.enqueue import IDEMPOTENCY_KEY_MAX_CHARS, enqueue_payload, task_idempotency_key
from worker.sending.tasks import enqueue_message_task

BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]


@pytest.fixture()
def rt(empty_database):  # noqa: ANN001, ANN201
    # No broker and no sandbox needed: the embedded runtime hands publishing to the dispatcher.
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9"))
    install_runtime(runtime)
    yield runtime
    install_runtime(None)
    runtime.close()


def rows(rt) -> list[Message]:  # noqa: ANN001
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(Message).order_by(Message.id)))


def test_a_rejected_enqueue_does_not_take_its_key_and_the_corrected_payload_is_queued(rt) -> None:
    """Issue 12 item 5: given a payload rejected for a 21-character button title with key K, when the
    corrected payload is sent with the same K, then it is stored `queued` (a new row) and the
    rejected row stays as an audit record without the key."""
    bad = {"phone": "966500000001", "body_text": "Hi", "buttons": [{"id": "a", "title": "x" * 21}], "idempotency_key": "order-7"}
    rejected = enqueue_payload(bad, rt)
    assert rejected["status"] == "rejected"

    good = dict(bad, buttons=BUTTONS)
    accepted = enqueue_payload(good, rt)
    assert accepted["status"] == "queued" and accepted["message_id"] != rejected["message_id"]
    again = enqueue_payload(good, rt)   # the key now belongs to the accepted request
    assert again == accepted

    by_id = {m.id: m for m in rows(rt)}
    assert len(by_id) == 2
    assert by_id[rejected["message_id"]].status == "rejected" and by_id[rejected["message_id"]].idempotency_key is None
    assert by_id[accepted["message_id"]].status == "queued" and by_id[accepted["message_id"]].idempotency_key == "order-7"


def test_an_invalid_payload_after_an_accepted_one_with_the_same_key_is_rejected_without_touching_it(rt) -> None:
    """Issue 12 item 5: a rejected request neither returns nor changes the accepted message of its key."""
    good = {"phone": "966500000002", "body_text": "Hi", "buttons": BUTTONS, "idempotency_key": "order-8"}
    accepted = enqueue_payload(good, rt)
    rejected = enqueue_payload(dict(good, body_text=" "), rt)
    assert rejected["status"] == "rejected" and rejected["message_id"] != accepted["message_id"]
    statuses = {m.id: (m.status, m.idempotency_key) for m in rows(rt)}
    assert statuses == {accepted["message_id"]: ("queued", "order-8"), rejected["message_id"]: ("rejected", None)}


def test_a_redelivered_broker_enqueue_without_a_key_returns_the_first_result(rt) -> None:
    """Issue 12 item 6: the Celery task run twice with the same task id (a worker died between commit
    and ack, acks_late redelivered it) stores one message and returns the same result both times."""
    payload = {"phone": "966500000003", "body_text": "Hi", "buttons": BUTTONS}
    first = enqueue_message_task.apply(args=[payload], task_id="5b0c6a52-redelivered").get()
    second = enqueue_message_task.apply(args=[payload], task_id="5b0c6a52-redelivered").get()
    other = enqueue_message_task.apply(args=[payload], task_id="another-task").get()

    assert first["status"] == "queued" and second == first
    assert other["status"] == "queued" and other["message_id"] != first["message_id"]  # a new task is a new request
    assert [(m.id, m.idempotency_key) for m in rows(rt)] == [
        (first["message_id"], "celery-task:5b0c6a52-redelivered"), (other["message_id"], "celery-task:another-task")]


def test_a_broker_enqueue_with_its_own_key_keeps_it_across_task_ids(rt) -> None:
    """Issue 12 item 6: an app's own idempotency_key wins over the task id (two tasks, one message)."""
    payload = {"phone": "966500000004", "body_text": "Hi", "buttons": BUTTONS, "idempotency_key": "invoice-9"}
    first = enqueue_message_task.apply(args=[payload], task_id="t-1").get()
    second = enqueue_message_task.apply(args=[payload], task_id="t-2").get()
    assert first == second and [m.idempotency_key for m in rows(rt)] == ["invoice-9"]


def test_a_caller_chosen_task_id_too_long_for_the_column_is_hashed_to_a_stable_key() -> None:
    """Issue 12 item 6: the default key always fits the column and is the same on every redelivery."""
    long_id = "x" * 500
    key = task_idempotency_key(long_id)
    assert key == task_idempotency_key(long_id) and len(key) <= IDEMPOTENCY_KEY_MAX_CHARS
    assert key != task_idempotency_key("x" * 499) and task_idempotency_key(None) is None
