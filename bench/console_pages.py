"""Console page times on a 1,000,000-recipient campaign: the campaign page (counts, funnel and the
recipients' first page), its live fragment, the recipients table's page 1 and page 500 (keyset),
a filtered page, and the campaigns list.

    .venv/bin/python bench/console_pages.py [--recipients 1000000] [--requests 20]

A real `buttoncast api` process on a scratch Postgres database (dropped after) and a private
redis-server; a logged-in console session drives it over HTTP from this process, one request at a
time. Goal: each page under 200 ms. Prints the median and the 95th percentile per page.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO_ROOT, Processes, add_messages, free_port, insert_campaign, load_line, private_redis, scratch_postgres, stack_env,
)

GOAL_MS = 200.0
PAGE_SIZE = 50          # worker/console/routes_campaigns.py RECIPIENTS_PAGE_SIZE
PASSWORD = "bench console password"
#: the million recipients: most sent, some failed, a tail still pending (the campaign is running)
MIX = (("sent", 0.80), ("failed", 0.05), ("pending", 0.15))


def build_campaign(database_url: str, recipients: int) -> int:
    counts = [int(recipients * share) for _, share in MIX]
    counts[0] += recipients - sum(counts)
    campaign_id = insert_campaign(database_url, counts[0], status="running", message_status="sent")
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            first = counts[0]
            for (status, _), count in zip(MIX[1:], counts[1:]):
                add_messages(conn, campaign_id, count, status=status, enqueued=False, first_phone=first)
                first += count
            conn.execute(sa.text("UPDATE messages SET sent_at = created_at, delivered_at = created_at, vendor_message_id = id::text"
                                 " WHERE campaign_id = :c AND status = 'sent'"), {"c": campaign_id})
            conn.execute(sa.text("UPDATE messages SET replied_at = created_at, reply_button_id = 'reserve', reply_button_title = 'Reserve a slot'"
                                 " WHERE campaign_id = :c AND status = 'sent' AND id % 7 = 0"), {"c": campaign_id})
            conn.execute(sa.text("UPDATE messages SET last_error_code = 'invalid_phone_number' WHERE campaign_id = :c AND status = 'failed'"),
                         {"c": campaign_id})
            conn.execute(sa.text("UPDATE campaigns SET recipients_imported = :n WHERE id = :c"), {"n": recipients, "c": campaign_id})
            conn.execute(sa.text("ANALYZE messages"))
    finally:
        engine.dispose()
    return campaign_id


def page_500_cursor(database_url: str, campaign_id: int) -> int:
    """What "Older recipients" links to after 499 pages: the id above the first row of page 500."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT id FROM messages WHERE campaign_id = :c ORDER BY id DESC OFFSET :o LIMIT 1"),
                                {"c": campaign_id, "o": PAGE_SIZE * 499 - 1}).scalar_one()
    finally:
        engine.dispose()


def log_in(client: httpx.Client, email: str) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    done = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/"})
    assert done.status_code == 303, done.text[:500]


def time_page(client: httpx.Client, path: str, requests: int) -> tuple[float, float, int]:
    client.get(path)  # warm: the first request pays for imports and the plan cache
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    procs = Processes()
    with scratch_postgres("console") as database_url, private_redis() as redis_url:
        started = time.perf_counter()
        campaign_id = build_campaign(database_url, args.recipients)
        print(f"campaign {campaign_id}: {args.recipients:,} recipients stored in {time.perf_counter() - started:.0f} s", flush=True)
        env = stack_env(database_url=database_url, broker_url=redis_url, sandbox_url="http://127.0.0.1:9")
        user = subprocess.run([sys.executable, "-m", "worker.cli", "user", "create", "--email", "bench@example.com",
                               "--role", "viewer", "--password-stdin"], input=PASSWORD + "\n", env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
        assert user.returncode == 0, user.stderr
        port = free_port()
        try:
            procs.start([sys.executable, "-m", "worker.cli", "api", "--port", str(port)], env)
            base_url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base_url, timeout=60) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("the api never answered:\n" + procs.tail())
                    time.sleep(0.2)
                log_in(client, "bench@example.com")
                before = page_500_cursor(database_url, campaign_id)
                pages = [
                    ("campaign page (counts, funnel, recipients page 1)", f"/campaigns/{campaign_id}"),
                    ("live fragment (polled every second)", f"/campaigns/{campaign_id}/live"),
                    ("recipients page 1", f"/campaigns/{campaign_id}/recipients"),
                    ("recipients page 500", f"/campaigns/{campaign_id}/recipients?before={before}"),
                    ("recipients, status failed, page 1", f"/campaigns/{campaign_id}/recipients?status=failed"),
                    ("campaigns list", "/"),
                ]
                print(load_line())
                worst = 0.0
                for label, path in pages:
                    median, p95, size = time_page(client, path, args.requests)
                    worst = max(worst, median)
                    print(f"{label:<52} median {median:7.1f} ms  p95 {p95:7.1f} ms  ({size:,} bytes)", flush=True)
                print(f"slowest median {worst:.1f} ms (goal < {GOAL_MS:.0f} ms): {'met' if worst < GOAL_MS else 'NOT met'}")
        finally:
            procs.cleanup()


if __name__ == "__main__":
    main()
