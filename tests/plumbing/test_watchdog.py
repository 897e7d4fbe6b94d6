"""A worker cut off from its broker for BROKER_STALL_EXIT_S exits (code 70) for its supervisor to
restart, instead of staying alive and deaf (seen with Celery's threads pool after a Redis restart)."""

from __future__ import annotations

import time

import pytest

from tests.chaos_scenario import PrivateRedis
from tests.conftest import stack_env
from worker.watchdog import EXIT_CODE_BROKER_STALL

pytestmark = pytest.mark.slow


def test_a_worker_whose_broker_stays_away_exits_for_its_supervisor(migrated_postgres, sandbox, spawn, tmp_path) -> None:
    # Given a worker on a private Redis broker, with a 3-second stall limit
    broker = PrivateRedis(tmp_path).start()
    env = stack_env(database_url=migrated_postgres, sandbox_url=sandbox[0], broker_url=broker.url, BROKER_STALL_EXIT_S="3")
    worker = spawn(env, "worker", "--processes", "1", "--concurrency", "2")   # the watchdog is per Celery process
    try:
        # When the broker goes away and does not come back
        broker.kill()
        deadline = time.monotonic() + 30
        while worker.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        # Then the worker exits by itself with the watchdog's code, saying why
        assert worker.proc.returncode == EXIT_CODE_BROKER_STALL
        assert "BROKER_STALL_EXIT_S" in worker.log_path.read_text(errors="replace")
    finally:
        broker.kill()


def test_a_broker_that_comes_back_in_time_keeps_the_worker(migrated_postgres, sandbox, spawn, tmp_path) -> None:
    broker = PrivateRedis(tmp_path).start()
    env = stack_env(database_url=migrated_postgres, sandbox_url=sandbox[0], broker_url=broker.url, BROKER_STALL_EXIT_S="20")
    worker = spawn(env, "worker", "--processes", "1", "--concurrency", "2")   # the watchdog is per Celery process
    try:
        broker.kill()
        time.sleep(1.0)
        broker.start()
        worker.wait_for("back on the broker", timeout_s=30)
        assert worker.proc.poll() is None
    finally:
        broker.kill()
