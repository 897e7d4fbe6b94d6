"""Issue 14 item 4 with real processes: a `buttoncast worker` and a `buttoncast beat` on the real
Redis broker and Postgres, the sandbox as the vendor, and a local HTTP receiver (a thread of this
test) that checks every request with the reference verifier."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env, wait_until
from tests.hooks_receiver import HookReceiver
from worker.hooks import service
from worker.hooks.models import HookOutbox
from worker.sending.enqueue import enqueue_message

pytestmark = pytest.mark.slow
KEY = "e2e-signing-key-" + "x" * 32


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", "hooks", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_hooks_are_delivered_signed_retried_after_500_dead_lettered_and_redelivered_with_the_same_id(
        clean_postgres: str, redis_url: str, sandbox: Any, spawn: Any) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    receiver = HookReceiver()
    base = receiver.start()
    env = stack_env(database_url=clean_postgres, sandbox_url=sandbox[0], broker_url=redis_url,
                    AWAL_RATE_LIMIT="100/s", AWAL_RATE_BURST="20", DISPATCH_INTERVAL_S="0.2",
                    HOOKS_SIGNING_KEY=KEY, HOOKS_INTERVAL_S="0.2", HOOKS_BACKOFF_BASE_S="0.2", HOOKS_BACKOFF_MAX_S="0.5",
                    HOOKS_RETRY_MAX_S="2", HOOKS_TIMEOUT_S="2", HOOKS_ALLOWED_HOSTS="127.0.0.1")
    rt = make_runtime(env)
    try:
        # Given two endpoints: one answers 500 once, the other 503 until the retry period is over
        endpoint_ids = {}
        for path in ("/flaky", "/down"):
            with rt.session_factory.begin() as s:
                endpoint, secret = service.add_endpoint(s, base + path, "message.sent,message.failed",
                                                        settings=rt.settings)
            receiver.secrets[path], endpoint_ids[path] = secret.reveal(), str(endpoint.id)
        receiver.script = {"/flaky": [500], "/down": [503] * 1000}
        spawn(env, "worker", "--concurrency", "4")
        spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")

        # When a message is sent
        mid = enqueue_message(phone="966500007001", body_text="Your order shipped", buttons=[{"id": "ok", "title": "OK"}],
                              runtime=rt)

        # Then /flaky gets message.sent twice (500, then 200), both verified, with one event id
        flaky = wait_until(lambda: len(receiver.at("/flaky")) >= 2 and receiver.at("/flaky"), 30, what="a retried delivery")
        assert [r.answered for r in flaky] == [500, 200] and all(r.refused is None for r in flaky)
        assert flaky[0].event["id"] == flaky[1].event["id"] == flaky[1].headers["Buttoncast-Event-Id"]
        assert flaky[1].event["type"] == "message.sent" and flaky[1].event["data"]["message_id"] == mid

        # And /down is dead-lettered after HOOKS_RETRY_MAX_S, which `hooks list` shows
        def dead() -> bool:
            with rt.session_factory() as s:
                return s.scalar(sa.select(sa.func.count()).where(HookOutbox.status == "dead")) == 1
        wait_until(dead, 30, what="the dead letter")
        listed = _cli(env, "list").stdout
        assert "dead:       1" in listed and "delivered:  1" in listed and "last error: HTTP 503" in listed
        down_attempts = len(receiver.at("/down"))
        assert down_attempts >= 3

        # When the operator redelivers it once the receiver is back, it arrives with the same event id
        receiver.script["/down"] = []
        event_id = receiver.at("/down")[0].event["id"]
        redelivered = _cli(env, "redeliver", event_id, "--endpoint", endpoint_ids["/down"])
        assert redelivered.returncode == 0 and "1 delivery due now" in redelivered.stdout, redelivered.stderr
        wait_until(lambda: any(r.answered == 200 for r in receiver.at("/down")), 30, what="the redelivery")
        last = receiver.at("/down")[-1]
        assert last.event["id"] == event_id and last.refused is None
        with rt.session_factory() as s:
            [view_flaky, view_down] = service.list_endpoints(s)
        assert (view_down.delivered, view_down.dead, view_flaky.delivered) == (1, 0, 1)
    finally:
        receiver.stop()
        rt.close()
