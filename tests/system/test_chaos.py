"""Chaos, reduced for CI: a 300-recipient campaign against a sandbox answering 10% 503s, 5% dropped
connections, 2% read timeouts and periodic 429 bursts, while worker processes are SIGKILLed and
restarted, the broker's (private) Redis is restarted empty, its db is flushed once more (issue 12 item 12), and beat is restarted.

Then: every recipient is sent, failed or unknown; the sandbox never received a phone twice; every
unknown is one the vendor may have acted on; the database's counts match the sandbox's records.
The same scenario at 20,000 recipients: `python bench/chaos.py --recipients 20000`.
"""

from __future__ import annotations

import shutil

import pytest

from tests.chaos_scenario import ChaosConfig, run_chaos
from tests.conftest import PG_ADMIN_URL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_a_campaign_through_crashes_outages_and_vendor_faults_sends_nobody_twice_and_loses_nobody(postgres_url, tmp_path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed to run a private broker for this test", pytrace=False)
    config = ChaosConfig(recipients=300, rate_per_s=15, workers=3, worker_kills=4, deadline_s=170, broker_flush=True,
                         pg_admin_url=PG_ADMIN_URL, workdir=tmp_path)

    report = run_chaos(config)

    print("\n".join(report.lines()))
    assert report.finished, "the campaign did not finish before the deadline"
    assert report.worker_kills >= 2 and report.redis_restarts == 1 and report.beat_restarts == 1
    assert report.duplicates == []
    assert report.problems == []
    assert set(report.db_counts) <= {"sent", "failed", "unknown"}
