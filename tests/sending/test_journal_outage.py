"""Issue 12 item 13 end to end: the database goes away mid-campaign and nothing the vendor accepted
ends `unknown`.

Real `buttoncast worker` and `beat` processes, the real Redis (broker and outcome journal), the
sandbox, and Postgres reached through a TCP proxy this test cuts (the shared Postgres server keeps
running): every open connection is closed and new ones are refused for OUTAGE_S while requests are
in flight. Workers give up retrying (RECORD_RETRY_MAX_S=2) long before the database is back, and
SENDING_TIMEOUT_S is short, so only the journal can turn those sends into `sent`.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import sqlalchemy as sa

from scheduler.campaigns import create_with_recipients
from tests.conftest import make_runtime, stack_env, wait_until
from tests.system.test_campaign_e2e import TEMPLATE, write_csv
from tests.tcp_proxy import CuttableProxy
from worker.models import Campaign, Message

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
OUTAGE_S = 20.0      # the bench (bench/chaos.py --db-outage-s) runs it for 90 s
RECIPIENTS = 120


@pytest.fixture()
def proxy(clean_postgres):  # noqa: ANN001
    server = CuttableProxy("127.0.0.1", 5432)
    yield server
    server.stop()


def test_issue12_item13_a_database_outage_mid_campaign_leaves_every_accepted_message_sent(
        clean_postgres, redis_url, sandbox, spawn, proxy, tmp_path) -> None:
    """Issue 12 item 13: cut Postgres for OUTAGE_S mid-campaign; afterwards every message in the
    sandbox's log of accepted sends is `sent` with its messageId, none is `unknown`, none twice."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    base_url, vendor = sandbox
    vendor.configure(latency_ms=300)   # requests in flight when the database goes
    env = stack_env(database_url=proxy.url_for(clean_postgres), sandbox_url=base_url, broker_url=redis_url,
                    AWAL_RATE_LIMIT="20/s", AWAL_RATE_BURST="4", DISPATCH_INTERVAL_S="0.5", SWEEP_INTERVAL_S="1",
                    DISPATCH_LOOKAHEAD_TICKS="2", RECORD_RETRY_MAX_S="2", SENDING_TIMEOUT_S="6",
                    QUEUED_TASK_TIMEOUT_S="5")
    rt = make_runtime({**env, "DATABASE_URL": clean_postgres})   # the test reads past the proxy
    try:
        spawn(env, "worker", "--concurrency", "8")
        spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")
        path, phones = write_csv(tmp_path, RECIPIENTS)
        cid, _ = create_with_recipients(rt.session_factory, path, name="outage", phone_number_id="123456", template=TEMPLATE)
        wait_until(lambda: len(vendor.received()) >= 20, 60, interval_s=0.05, what="20 accepted")

        proxy.cut()
        accepted_at_cut = len(vendor.received())
        time.sleep(OUTAGE_S)
        proxy.restore()

        def done() -> bool:
            with rt.session_factory() as s:
                return s.scalar(sa.select(Campaign.status).where(Campaign.id == cid)) == "completed"
        wait_until(done, 120, interval_s=0.5, what="campaign completed after the outage")

        with rt.session_factory() as s:
            rows = {r.phone: r for r in s.execute(sa.select(Message.phone, Message.status, Message.vendor_message_id,
                                                             Message.last_error_code).where(Message.campaign_id == cid))}
        accepted = [r for r in vendor.received() if r["outcome"] == "sent"]
        per_phone = Counter(r["phone"] for r in vendor.received())
        wrong = [(r["phone"], rows[r["phone"]].status, rows[r["phone"]].vendor_message_id == r["message_id"])
                 for r in accepted if rows[r["phone"]].status != "sent" or rows[r["phone"]].vendor_message_id != r["message_id"]]
        statuses = Counter(r.status for r in rows.values())
        print(f"outage {OUTAGE_S:g}s after {accepted_at_cut} accepted: statuses {dict(statuses)}, "
              f"vendor accepted {len(accepted)}, duplicates {sum(1 for n in per_phone.values() if n > 1)}")
        assert wrong == []
        assert [p for p, n in per_phone.items() if n > 1] == []
        assert statuses == Counter({"sent": RECIPIENTS})
        assert sorted(per_phone) == sorted(phones)
    finally:
        rt.close()
