"""Embedded mode: `buttoncast run` as its own process (SQLite, in-memory broker, worker + beat +
in-memory limiter together) sending to the sandbox, and the metrics a running worker serves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.conftest import free_port, make_runtime, stack_env, wait_until
from worker.models import Message

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 60
TEMPLATE = {"header_text": "Hi {{name}}", "body_text": "Your table for {{name}} is ready. Keep it?",
            "buttons": [{"id": "keep", "title": "Keep it"}, {"id": "drop", "title": "Cancel"}]}
FAST = {"DISPATCH_INTERVAL_S": "0.2", "SWEEP_INTERVAL_S": "1", "AWAL_RATE_LIMIT": "100/s", "AWAL_RATE_BURST": "10"}


def campaign_phones(count: int) -> list[str]:
    return [f"96655{index:07d}" for index in range(count)]


def create_campaign(env: dict[str, str], tmp_path: Path, phones: list[str]) -> int:
    """A scheduled campaign (due now) in the database `env` points at."""
    from scheduler.campaigns import create_with_recipients

    csv_path = tmp_path / "recipients.csv"
    csv_path.write_text("phone,name\n" + "".join(f"{p},Guest {i}\n" for i, p in enumerate(phones)), encoding="utf-8")
    runtime = make_runtime(env)
    try:
        campaign_id, result = create_with_recipients(runtime.session_factory, csv_path, name="embedded",
                                                     phone_number_id=env["AWAL_PHONE_NUMBER_ID"], template=TEMPLATE)
    finally:
        runtime.close()
    assert result.imported == len(phones)
    return campaign_id


def buttoncast(env: dict[str, str], cwd: Path, *args: str, timeout_s: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s)


def statuses(env: dict[str, str]) -> dict[str, str]:
    runtime = make_runtime(env)
    try:
        with runtime.session_factory() as session:
            return dict(session.execute(sa.select(Message.phone, Message.status)).all())
    finally:
        runtime.close()


def test_run_until_idle_sends_a_campaign_and_an_adhoc_message_once_each_then_exits(
    sqlite_url: str, sandbox, tmp_path: Path,  # noqa: ANN001
) -> None:
    # Given: a 25-recipient campaign and one ad-hoc `buttoncast send`, stored while nothing runs
    base_url, vendor = sandbox
    env = stack_env(database_url=sqlite_url, sandbox_url=base_url, **FAST)
    phones = campaign_phones(25)
    campaign_id = create_campaign(env, tmp_path, phones)
    sent = buttoncast(env, tmp_path, "send", "--phone", "+966 59 000 0001", "--body", "Your order shipped",
                      "--button", "ok:OK")
    assert sent.returncode == 0, sent.stderr

    # When: the embedded mode runs until there is nothing left to do
    run = buttoncast(env, tmp_path, "run", "--until-idle", "--concurrency", "4")

    # Then: it exits 0, every message is sent, and the vendor saw each phone exactly once
    assert run.returncode == 0, run.stderr[-4000:]
    assert statuses(env) == {**{p: "sent" for p in phones}, "966590000001": "sent"}
    assert vendor.counts_per_phone() == {**{p: 1 for p in phones}, "966590000001": 1}
    runtime = make_runtime(env)
    try:
        with runtime.session_factory() as session:
            from scheduler.campaigns import get_campaign

            assert get_campaign(session, campaign_id).status == "completed"
    finally:
        runtime.close()


def test_run_with_default_database_puts_sqlite_in_the_working_directory(sandbox, tmp_path: Path) -> None:  # noqa: ANN001
    # Given: no DATABASE_URL and no broker at all: the embedded defaults
    base_url, vendor = sandbox
    env = stack_env(database_url="", sandbox_url=base_url, **FAST)
    del env["DATABASE_URL"]
    sent = buttoncast(env, tmp_path, "send", "--phone", "966590000002", "--body", "Hello", "--button", "ok:OK")
    assert sent.returncode == 0, sent.stderr

    # When
    run = buttoncast(env, tmp_path, "run", "--until-idle")

    # Then: buttoncast.db was created here, and the message went out once
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "buttoncast.db").exists()
    assert statuses({**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'buttoncast.db'}"}) == {"966590000002": "sent"}
    assert vendor.counts_per_phone() == {"966590000002": 1}


def metric_value(text: str, name: str, labels: str) -> float | None:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_running_worker_serves_prometheus_metrics_on_metrics_port(sqlite_url: str, sandbox, spawn, tmp_path: Path) -> None:  # noqa: ANN001
    # Given: `buttoncast run` with METRICS_PORT set, sending a small campaign
    base_url, _ = sandbox
    port = free_port()
    env = stack_env(database_url=sqlite_url, sandbox_url=base_url, **{**FAST, "METRICS_PORT": str(port)})
    phones = campaign_phones(5)
    create_campaign(env, tmp_path, phones)
    spawn(env, "run", "--concurrency", "2")
    wait_until(lambda: set(statuses(env).values()) == {"sent"}, 30, what="the campaign to be sent")

    # When: Prometheus scrapes the worker
    def scrape() -> str | None:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return text if (metric_value(text, "buttoncast_messages_total", 'outcome="sent"') or 0) >= len(phones) else None

    text = wait_until(scrape, 10, what="the sent counter to reach the campaign size")

    # Then: the documented metrics are there
    assert metric_value(text, "buttoncast_messages_total", 'outcome="sent"') == len(phones)
    for name in ("buttoncast_rate_limited_total", "buttoncast_send_seconds_count", "buttoncast_rate_wait_seconds_count"):
        assert re.search(rf"^{name} ", text, re.M), f"{name} missing from /metrics"
    assert "# TYPE buttoncast_queue_depth gauge" in text
