"""Late failures end to end (issue 13 items 6 and 9): real `buttoncast webhooks`, `worker` and `beat`
processes on Postgres and Redis, and a sandbox that fails some phones late (131047, 131026, 131050,
131048) and has others reply STOP. Shows the classes in `campaign show` and `campaign report`,
`retry --reason` resending with both sends on record, a 131050 and a STOP opting people out (their
next message held), and the breaker pausing a campaign on a 131048."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from scheduler import campaigns
from scheduler.campaigns import create_with_recipients
from tests.conftest import free_port, make_runtime, stack_env, wait_until
from worker.contacts.service import get_contact
from worker.models import Attempt, Campaign, Message
from worker.sandbox import SandboxClient, SandboxConfig, SandboxServer
from worker.sending.enqueue import enqueue_message

pytestmark = pytest.mark.slow
HOOK_SECRET = "e2e-hook-secret"
TEMPLATE = {"body_text": "Hello {{name}}", "buttons": [{"id": "yes", "title": "Yes"}]}
LATE = {"96650011": "131047", "96650012": "131026", "96650013": "131050", "96650015": "131048"}
STOP_PREFIX = "96650014"
FINE_PREFIX = "96650019"


@pytest.fixture()
def late_sandbox() -> Iterator[tuple[SandboxServer, SandboxClient]]:
    server = SandboxServer(SandboxConfig(late_fail_prefixes=LATE, stop_reply_prefixes=(STOP_PREFIX,), seed=13,
                                         delivered_after_s=0.1, read_after_s=0.2))
    url = server.start_in_thread()
    try:
        yield server, SandboxClient(url)
    finally:
        server.stop()


@pytest.fixture()
def stack(clean_postgres: str, redis_url: str, late_sandbox: Any, spawn: Any) -> Iterator[Any]:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    server, vendor = late_sandbox
    env = stack_env(database_url=clean_postgres, sandbox_url=server.base_url, broker_url=redis_url,
                    AWAL_WEBHOOK_SECRET=HOOK_SECRET, WEBHOOK_METRICS_PORT="0", AWAL_RATE_LIMIT="20/s",
                    AWAL_RATE_BURST="1", DISPATCH_INTERVAL_S="0.3", SWEEP_INTERVAL_S="1")
    port = free_port()
    spawn(env, "webhooks", "--port", str(port), ready="webhook receiver on")
    server.config.update({"webhook_url": f"http://127.0.0.1:{port}/webhooks/awal", "webhook_secret": HOOK_SECRET})
    spawn(env, "worker", "--concurrency", "4")
    spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")
    runtime = make_runtime(env)
    yield env, runtime, vendor
    runtime.close()


def create(runtime: Any, tmp_path: Path, phones: list[str], name: str) -> int:
    path = tmp_path / f"{name}.csv"
    path.write_text("phone,name\n" + "".join(f"{p},N{i}\n" for i, p in enumerate(phones)), encoding="utf-8")
    cid, result = create_with_recipients(runtime.session_factory, path, name=name, phone_number_id="123456",
                                         template=TEMPLATE)
    assert result.imported == len(phones)
    return cid


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def late_counts(runtime: Any, cid: int) -> dict[str, int]:
    from scheduler.report import late_failures

    with runtime.session_factory() as session:
        return late_failures(session, cid)


def test_late_failures_by_class_in_show_and_report_then_retry_reason_and_opt_outs(stack: Any, tmp_path: Path) -> None:
    env, runtime, vendor = stack
    # Given a campaign: 3 phones each failing late with 131047, 131026 and 131050, 3 replying STOP, 3 fine
    groups = {code: [f"{prefix}{i:04d}" for i in range(3)] for prefix, code in LATE.items() if code != "131048"}
    stop_phones = [f"{STOP_PREFIX}{i:04d}" for i in range(3)]
    fine = [f"{FINE_PREFIX}{i:04d}" for i in range(3)]
    cid = create(runtime, tmp_path, [p for g in groups.values() for p in g] + stop_phones + fine, "late")
    # When it has been sent and the late webhooks have come back
    wait_until(lambda: late_counts(runtime, cid) == {"opted_out": 3, "undeliverable": 3, "window_closed": 3}, 60,
               what="9 late failures by class")
    # 9 late failures of a 200-message window: under the breaker's rate, it completes
    wait_until(lambda: campaign_status(runtime, cid) == "completed", 30, what="campaign completed")

    # Then `campaign show` groups them by class, and the report has the code and class per row
    shown = cli(env, "campaign", "show", str(cid))
    assert shown.returncode == 0, shown.stderr
    assert "late failures: 9 (60.0% of sent) failed after sending, by class:" in shown.stdout, shown.stdout
    for line in ("window_closed: 3", "undeliverable: 3", "opted_out: 3", f"--campaign {cid} --reason window_closed"):
        assert line in shown.stdout, shown.stdout
    reported = cli(env, "campaign", "report", str(cid))
    assert reported.returncode == 0, reported.stderr
    rows = {r["phone"]: r for r in csv.DictReader(io.StringIO(reported.stdout))}
    assert {(rows[p]["failure_code"], rows[p]["failure_class"]) for p in groups["131047"]} == {("131047", "window_closed")}
    assert {rows[p]["failure_class"] for p in fine + stop_phones} == {""}
    assert "late failures by class: " in reported.stderr and "window_closed 3" in reported.stderr

    # And the 131050s and the STOP replies opted those people out; their next message is held
    with runtime.session_factory() as session:
        sources = {p: get_contact(session, p).opt_out_source for p in groups["131050"] + stop_phones}
    assert sources == {**{p: "vendor_code" for p in groups["131050"]}, **{p: "keyword" for p in stop_phones}}
    held = [enqueue_message(phone=p, body_text="Your order shipped", buttons=[{"id": "ok", "title": "OK"}],
                            runtime=runtime) for p in (groups["131050"][0], stop_phones[0])]
    wait_until(lambda: all(status_of(runtime, m) == ("suppressed", "opted_out") for m in held), 30,
               what="follow-ups held as suppressed(opted_out)")

    # When the operator resends the window_closed ones (undeliverable needs --force)
    refused = cli(env, "retry", "--campaign", str(cid), "--reason", "undeliverable")
    assert refused.returncode == 1 and "pass --force" in refused.stderr + refused.stdout
    resend = cli(env, "retry", "--campaign", str(cid), "--reason", "window_closed")
    assert resend.returncode == 0 and "requeued 3 message(s)" in resend.stdout, resend.stdout + resend.stderr
    # Then each is sent a second time (the sandbox fails them late again) and both sends are on record
    per_phone = lambda: vendor.counts_per_phone()  # noqa: E731
    wait_until(lambda: all(per_phone().get(p) == 2 for p in groups["131047"]), 30, what="window_closed resent")
    wait_until(lambda: late_counts(runtime, cid).get("window_closed") == 3, 30, what="resent ones failed late again")
    assert all(per_phone().get(p) == 1 for p in groups["131026"] + groups["131050"] + fine)
    with runtime.session_factory() as session:
        for phone in groups["131047"]:
            msg = session.scalars(sa.select(Message).where(Message.campaign_id == cid, Message.phone == phone)).one()
            wamids = session.scalars(sa.select(Attempt.vendor_message_id).where(Attempt.message_id == msg.id)
                                     .order_by(Attempt.id)).all()
            assert len(set(wamids)) == 2 and wamids[-1] == msg.vendor_message_id
    # And `message show` lists both sends, the resend's reason and the late failure
    shown = cli(env, "message", "show", str(msg.id))
    assert shown.returncode == 0, shown.stderr
    assert all(w in shown.stdout for w in wamids) and "resent after late failure 131047 window_closed" in shown.stdout
    assert "late failure:  131047 window_closed" in shown.stdout, shown.stdout


def status_of(runtime: Any, message_id: int) -> tuple[str, str | None]:
    with runtime.session_factory() as session:
        msg = session.get(Message, message_id)
        return msg.status, msg.last_error_code


def test_a_131048_pauses_the_running_campaign_with_the_reason(stack: Any, tmp_path: Path) -> None:
    env, runtime, vendor = stack
    # Given a campaign whose first recipient's message fails late with 131048, at 20 messages/s
    phones = ["966500150000"] + [f"{FINE_PREFIX}{i:04d}" for i in range(60)]
    cid = create(runtime, tmp_path, phones, "quality")
    # Then the campaign pauses on that webhook, long before the 61 are sent
    wait_until(lambda: campaign_status(runtime, cid) == "paused", 30, what="paused by the breaker")
    with runtime.session_factory() as session:
        reason = session.get(Campaign, cid).pause_reason
        left = session.scalar(sa.select(sa.func.count()).select_from(Message)
                              .where(Message.campaign_id == cid, Message.status == "pending"))
    assert "131048 quality_risk" in reason and left > 20
    shown = cli(env, "campaign", "show", str(cid))
    assert "paused (reason: vendor code 131048 quality_risk" in shown.stdout, shown.stdout
    # And resume starts a fresh window: it finishes
    with runtime.session_factory.begin() as session:
        campaigns.resume(session, cid)
    wait_until(lambda: campaign_status(runtime, cid) == "completed", 60, what="completed after resume")


def campaign_status(runtime: Any, cid: int) -> str:
    with runtime.session_factory() as session:
        return session.get(Campaign, cid).status
