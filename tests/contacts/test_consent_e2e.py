"""Consent with real processes: a `buttoncast worker` on the real Redis broker, a `buttoncast webhooks`
receiver, the real Postgres and the sandbox (issue 13 "Must show": a STOP reply holds the next send)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import requests

from scheduler.campaigns import create_with_recipients, status_counts
from tests.conftest import free_port, make_runtime, stack_env, wait_until
from worker.models import Message, utcnow
from worker.sending.enqueue import enqueue_message

pytestmark = pytest.mark.slow
BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "stop", "title": "Stop offers"}]
SECRET = "consent-webhook-secret"


@pytest.fixture()
def stack(clean_postgres, redis_url, sandbox, spawn):  # noqa: ANN001
    base_url, vendor = sandbox
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(database_url=clean_postgres, sandbox_url=base_url, broker_url=redis_url, AWAL_WEBHOOK_SECRET=SECRET,
                    AWAL_RATE_LIMIT="100/s", AWAL_RATE_BURST="20", SEND_RETRY_MAX_WAIT_S="0.05",
                    DISPATCH_INTERVAL_S="0.5", SWEEP_INTERVAL_S="2")
    spawn(env, "worker", "--concurrency", "2")
    spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")
    port = free_port()
    spawn(env, "webhooks", "--port", str(port), ready="webhook receiver on")
    rt = make_runtime(env)
    yield rt, vendor, f"http://127.0.0.1:{port}/webhooks/awal"
    rt.close()


def reply(url: str, phone: str, text: str, n: int) -> requests.Response:
    """The vendor's signed message.received webhook carrying the person's text."""
    body = json.dumps({"event": "message.received", "data": {
        "message_id": f"wamid.in.{phone}.{n}", "from": phone, "to": "123456", "type": "text", "body": text,
        "timestamp": utcnow().isoformat()}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return requests.post(url, data=body, headers={"Content-Type": "application/json", "X-Awal-Signature-256": signature},
                         timeout=10)


def final(rt, mid: int) -> Message:  # noqa: ANN001
    def done() -> Message | None:
        with rt.session_factory() as s:
            msg = s.get(Message, mid)
            return msg if msg.status in ("sent", "failed", "unknown", "suppressed", "expired") else None

    return wait_until(done, 30, what=f"message {mid} to end")


def test_a_stop_reply_to_the_running_receiver_holds_the_next_message_and_start_releases_it(stack) -> None:
    """Issue 13 items 2 and 3: once the receiver answered 200 to STOP, the worker holds that phone's
    next message as suppressed (the vendor never sees it); after START the next one is sent."""
    rt, vendor, url = stack
    phone = "966501234567"
    first = enqueue_message(phone=phone, body_text="Offer 1", buttons=BUTTONS, runtime=rt)
    assert final(rt, first).status == "sent"

    answer = reply(url, phone, "STOP", 1)
    assert answer.status_code == 200, answer.text
    held = enqueue_message(phone=phone, body_text="Offer 2", buttons=BUTTONS, runtime=rt)
    msg = final(rt, held)
    assert (msg.status, msg.last_error_code) == ("suppressed", "opted_out")

    assert reply(url, phone, "start", 2).status_code == 200
    again = enqueue_message(phone=phone, body_text="Offer 3", buttons=BUTTONS, runtime=rt)
    assert final(rt, again).status == "sent"
    assert [r["body"]["body_text"] for r in vendor.received(phone=phone)] == ["Offer 1", "Offer 3"]


def test_a_stop_between_campaigns_holds_that_phone_in_the_next_campaign_and_only_that_phone(stack, tmp_path) -> None:
    """Issue 13 item 2: the dispatcher and the worker hold a campaign recipient who replied STOP to
    an earlier campaign; the other recipients are sent; the campaign still completes."""
    rt, vendor, url = stack
    phones = [f"96650777{i:04d}" for i in range(6)]
    recipients = tmp_path / "r.csv"
    recipients.write_text("phone\n" + "\n".join(phones) + "\n")
    template = {"body_text": "Weekend offer", "buttons": BUTTONS}
    first, _ = create_with_recipients(rt.session_factory, recipients, name="one", phone_number_id="123456", template=template)
    wait_until(lambda: _counts(rt, first)["sent"] == 6, 30, what="the first campaign sent")
    assert reply(url, phones[2], "إيقاف", 1).status_code == 200
    second, result = create_with_recipients(rt.session_factory, recipients, name="two", phone_number_id="123456",
                                            template=template)
    assert result.opted_out == 1
    wait_until(lambda: _campaign_status(rt, second) == "completed", 30, what="the second campaign to complete")
    counts = _counts(rt, second)
    assert (counts["sent"], counts["suppressed"]) == (5, 1)
    assert len(vendor.received(phone=phones[2])) == 1 and len(vendor.received(phone=phones[3])) == 2


def _counts(rt, campaign_id: int) -> dict[str, int]:  # noqa: ANN001
    with rt.session_factory() as s:
        return status_counts(s, campaign_id)


def _campaign_status(rt, campaign_id: int) -> str:  # noqa: ANN001
    from worker.models import Campaign

    with rt.session_factory() as s:
        return s.get(Campaign, campaign_id).status
