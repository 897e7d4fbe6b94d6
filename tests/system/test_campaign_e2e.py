"""Campaigns end to end: real `buttoncast worker` and `beat` processes, the real Postgres and Redis
broker, and the sandbox. Scenarios from the campaigns issue's "Must show"."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler import campaigns
from scheduler.campaigns import create_with_recipients
from scheduler.dispatcher import dispatch_tick
from tests.conftest import make_runtime, stack_env, wait_until
from worker.models import Campaign, Message, utcnow
from worker.window import Window

pytestmark = pytest.mark.slow
TEMPLATE = {"body_text": "Hello {{name}}, our spring offer is here", "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]}
_prefix = iter(range(100, 999))


def write_csv(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    prefix = next(_prefix)
    phones = [f"96650{prefix}{i:04d}" for i in range(n)]  # valid Saudi mobile numbers (n < 10,000)
    path = tmp_path / f"recipients-{prefix}.csv"
    path.write_text("phone,name\n" + "".join(f"{p},Name {i}\n" for i, p in enumerate(phones)), encoding="utf-8")
    return path, phones


@pytest.fixture()
def env(clean_postgres, redis_url, sandbox):  # noqa: ANN001
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return stack_env(database_url=clean_postgres, sandbox_url=sandbox[0], broker_url=redis_url,
                     AWAL_RATE_LIMIT="100/s", AWAL_RATE_BURST="5", DISPATCH_INTERVAL_S="0.5", SWEEP_INTERVAL_S="2",
                     DISPATCH_LOOKAHEAD_TICKS="2")


@pytest.fixture()
def rt(env):  # noqa: ANN001
    runtime = make_runtime(env)
    yield runtime
    runtime.close()


def start_stack(spawn, env, workers: int = 2) -> None:  # noqa: ANN001
    for _ in range(workers):
        spawn(env, "worker", "--concurrency", "8")
    spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")


def counts(rt, cid: int) -> dict[str, int]:  # noqa: ANN001
    with rt.session_factory() as s:
        return campaigns.status_counts(s, cid)


def campaign(rt, cid: int) -> Campaign:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.get(Campaign, cid)


def create(rt, tmp_path: Path, n: int, **fields) -> tuple[int, list[str]]:  # noqa: ANN001, ANN003
    path, phones = write_csv(tmp_path, n)
    cid, result = create_with_recipients(rt.session_factory, path, name="spring", phone_number_id="123456",
                                         template=TEMPLATE, **fields)
    assert result.imported == n
    return cid, phones


def assert_each_sent_once(vendor, phones: list[str]) -> None:  # noqa: ANN001
    per_phone = vendor.counts_per_phone()
    assert [p for p in phones if per_phone.get(p, 0) != 1] == []


def test_a_500_recipient_campaign_starts_on_time_and_sends_each_recipient_exactly_once(rt, env, sandbox, spawn, tmp_path) -> None:
    # Given a worker pair and beat, and a 500-recipient campaign scheduled 3 seconds ahead
    _, vendor = sandbox
    start_stack(spawn, env)
    at = utcnow() + timedelta(seconds=3)
    cid, phones = create(rt, tmp_path, 500, scheduled_at=at)
    # Then it completes with every recipient sent once,
    wait_until(lambda: campaign(rt, cid).status == "completed", 90, what="campaign completed")
    assert counts(rt, cid)["sent"] == 500
    assert_each_sent_once(vendor, phones)
    # and nothing went before its time: by the vendor's own clock, not a sleep that a busy machine
    # could stretch past the start (how soon after it: a dispatcher tick, a speed, not asserted here)
    assert campaign(rt, cid).started_at >= at
    assert min(r["received_at"] for r in vendor.received()) >= at.timestamp()


def test_pause_stops_within_a_tick_and_resume_finishes_with_no_duplicate_and_no_gap(rt, env, sandbox, spawn, tmp_path) -> None:
    _, vendor = sandbox
    env = {**env, "AWAL_RATE_LIMIT": "40/s"}
    start_stack(spawn, env)
    rt = make_runtime(env)
    cid, phones = create(rt, tmp_path, 300)
    wait_until(lambda: counts(rt, cid)["sent"] >= 60, 180, what="60 sent")
    # When the operator pauses it mid-way
    with rt.session_factory.begin() as s:
        campaigns.pause(s, cid)
    # Then once the tasks already out have come back (queued sends back to pending), nothing moves
    frozen = wait_until(lambda: (c := counts(rt, cid))["queued"] == c["sending"] == 0 and c, 120,
                        what="no message queued or sending after the pause")
    time.sleep(2.0)   # a few dispatcher ticks: none may send or queue anything while paused
    assert counts(rt, cid) == frozen and frozen["sent"] < 300
    # When it is resumed, it finishes: everyone exactly once
    with rt.session_factory.begin() as s:
        campaigns.resume(s, cid)
    wait_until(lambda: campaign(rt, cid).status == "completed", 90, what="completed after resume")
    assert counts(rt, cid)["sent"] == 300
    assert_each_sent_once(vendor, phones)
    rt.close()


def test_cancel_leaves_no_message_sending_after_the_tick(rt, env, sandbox, spawn, tmp_path) -> None:
    _, vendor = sandbox
    env = {**env, "AWAL_RATE_LIMIT": "30/s"}
    start_stack(spawn, env)
    rt = make_runtime(env)
    cid, phones = create(rt, tmp_path, 300)
    wait_until(lambda: counts(rt, cid)["sent"] >= 30, 180, what="30 sent")
    with rt.session_factory.begin() as s:
        campaigns.cancel(s, cid)
    # Once the tasks already out have come back, nothing is pending, queued or sending
    after = wait_until(lambda: (c := counts(rt, cid))["pending"] == c["queued"] == c["sending"] == 0 and c, 120,
                       what="nothing pending, queued or sending after the cancel")
    assert after["sent"] + after["cancelled"] == 300
    time.sleep(1.5)
    assert counts(rt, cid) == after and len(vendor.received()) == after["sent"]
    assert_each_sent_once(vendor, [p for p in phones if vendor.counts_per_phone().get(p)])


def test_two_dispatch_ticks_at_once_queue_each_recipient_once(rt, tmp_path) -> None:
    # Given a running campaign of 2,000 recipients and a budget big enough for all of them
    big = make_runtime({**_env_of(rt), "AWAL_RATE_LIMIT": "100000/s"})
    cid, _ = create(big, tmp_path, 2000)
    published: list[int] = []
    lock = threading.Lock()

    def capture(celery, ids, *, queue):  # noqa: ANN001
        with lock:
            published.extend(ids)

    import scheduler.dispatcher as dispatcher

    original = dispatcher.publish_send_tasks
    dispatcher.publish_send_tasks = capture
    try:
        # When two dispatcher ticks run at the same moment (two beats, or a slow tick overlapping)
        barrier = threading.Barrier(4)

        def tick() -> None:
            barrier.wait()
            dispatch_tick(big)

        threads = [threading.Thread(target=tick) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        dispatcher.publish_send_tasks = original
    # Then every recipient was queued and published exactly once
    with big.session_factory() as s:
        ids = s.scalars(sa.select(Message.id).where(Message.campaign_id == cid)).all()
    assert sorted(published) == sorted(ids)
    assert counts(big, cid)["queued"] == 2000
    with big.session_factory.begin() as s:  # nothing consumes those tasks: leave no in-flight rows behind
        campaigns.cancel(s, cid)
    big.close()


def test_a_campaign_outside_its_window_dispatches_nothing(rt, tmp_path) -> None:
    # Given a campaign whose daily window is the 12 hours that do not contain now (in UTC)
    now = datetime.now(timezone.utc)
    start = (now + timedelta(hours=1)).strftime("%H:00")
    end = (now + timedelta(hours=13)).strftime("%H:00")
    cid, _ = create(rt, tmp_path, 20, window=Window(start=start, end=end, tz="UTC"))
    # When the dispatcher ticks
    report = dispatch_tick(rt)
    # Then it started (its time has come) but nothing of it was queued
    assert cid in report.started and str(cid) not in report.published
    assert counts(rt, cid)["pending"] == 20
    # And the same campaign inside its window would be dispatched
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Campaign).where(Campaign.id == cid).values(window_start=(now - timedelta(hours=1)).strftime("%H:00"),
                                                                       window_end=(now + timedelta(hours=2)).strftime("%H:00")))
    import scheduler.dispatcher as dispatcher

    original, dispatcher.publish_send_tasks = dispatcher.publish_send_tasks, lambda *a, **k: None
    try:
        assert dispatch_tick(rt).published.get(str(cid))
    finally:
        dispatcher.publish_send_tasks = original


def test_an_authentication_failure_pauses_the_campaign_with_the_reason(rt, env, sandbox, spawn, tmp_path) -> None:
    # Given the vendor rejects our credentials (a wrong secret)
    _, vendor = sandbox
    env = {**env, "AWAL_HMAC_SECRET": "not-the-secret"}
    start_stack(spawn, env, workers=1)
    rt = make_runtime(env)
    cid, _ = create(rt, tmp_path, 50)
    # Then the campaign pauses with the reason, and the message that met the 401 is back to pending
    wait_until(lambda: campaign(rt, cid).status == "paused", 30, what="campaign paused")
    paused = campaign(rt, cid)
    assert "401" in paused.pause_reason and "authentication" in paused.pause_reason
    c = wait_until(lambda: (c := counts(rt, cid))["pending"] == 50 and c, 120, what="every message back to pending")
    assert c["failed"] == 0 and c["sent"] == 0
    assert vendor.received() == []
    rt.close()


def _env_of(rt) -> dict[str, str]:  # noqa: ANN001
    s = rt.settings
    return {"DATABASE_URL": s.database_url, "AWAL_BASE_URL": s.awal_base_url, "AWAL_CLIENT_ID": s.awal_client_id,
            "AWAL_DOMAIN": s.awal_domain, "AWAL_HMAC_SECRET": s.awal_hmac_secret.reveal(),
            "AWAL_PHONE_NUMBER_ID": s.awal_phone_number_id or "", "CELERY_BROKER_URL": s.broker_url}
