"""Console page times on a 1,000,000-recipient campaign: the campaign page (counts, funnel, its
message and first recipient's, and the recipients' first page), its live fragment, the recipients
table's page 1 and page 500 (keyset, id order) and the rows it polls, a filtered page, the recipient
picker's search by phone, a message's page, the failures reported later filtered by code and by
reason, the retry page, the opt-outs the campaign caused, the audit page (the session is an
admin's), and the campaigns list; cold and warm.

    .venv/bin/python bench/console_pages.py [--recipients 1000000] [--requests 20] [--cold-runs 7]

A real `buttoncast api` process on a scratch Postgres database (dropped after) and a private
redis-server; a logged-in console session drives it over HTTP from this process, one request at a
time. Before the api starts, beat's sweep function (`snapshots.refresh_due`) stores the campaign's
tally snapshot, as a running beat would have.

- cold: the api is started `--cold-runs` times; each time, after the login, each page's FIRST
  request is timed (in the order listed), then the api is stopped;
- warm: one api, each page requested once untimed, then `--requests` times timed;
- baselines in the same run: the one scan the snapshot replaces (`report.tally`, what an uncached
  page would wait for) and /healthz (an HTTP round trip doing nothing).

Goal: each page under 200 ms, cold and warm. Prints the median and the 95th percentile per page.
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
    REPO_ROOT,
    Processes,
    add_messages,
    free_port,
    insert_campaign,
    load_line,
    private_redis,
    scratch_postgres,
    stack_env,
)

from scheduler import report, snapshots  # noqa: E402
from worker.runtime import Runtime  # noqa: E402
from worker.settings import Settings  # noqa: E402

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
            # 2 % of the sent ones reported failed later (131047: the 24-hour window was closed)
            conn.execute(sa.text("UPDATE messages SET delivery_status = 'failed', delivered_at = NULL, failure_code = '131047',"
                                 " failure_class = 'window_closed', delivery_error = '131047: Re-engagement message'"
                                 " WHERE campaign_id = :c AND status = 'sent' AND id % 50 = 3"), {"c": campaign_id})
            conn.execute(sa.text("UPDATE campaigns SET recipients_imported = :n WHERE id = :c"), {"n": recipients, "c": campaign_id})
            conn.execute(sa.text("ANALYZE messages"))
    finally:
        engine.dispose()
    return campaign_id


def page_500_cursor(database_url: str, campaign_id: int) -> tuple[int, int]:
    """What "Next 50 recipients" links to after 499 pages (the id below the first row of page 500,
    the table lists them in id order), and a message in the middle of the campaign."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            after = conn.execute(sa.text("SELECT id FROM messages WHERE campaign_id = :c ORDER BY id OFFSET :o LIMIT 1"),
                                 {"c": campaign_id, "o": PAGE_SIZE * 499 - 1}).scalar_one()
            middle = conn.execute(sa.text("SELECT id FROM messages WHERE campaign_id = :c ORDER BY id OFFSET :o LIMIT 1"),
                                  {"c": campaign_id, "o": PAGE_SIZE * 600}).scalar_one_or_none()
            return after, middle or after
    finally:
        engine.dispose()


def log_in(client: httpx.Client, email: str) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    done = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/"})
    assert done.status_code == 303, done.text[:500]


def timed_get(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return elapsed, response


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[round(0.95 * (len(times) - 1))]


def start_api(procs: Processes, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = procs.start([sys.executable, "-m", "worker.cli", "api", "--port", str(port)], env)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base_url + "/healthz", timeout=5).status_code == 200:
                return proc, base_url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the api never answered:\n" + procs.tail())
        time.sleep(0.2)


def stop_api(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def scan_baseline(database_url: str, campaign_id: int, runs: int = 3) -> float:
    """The one grouped scan a page without a snapshot would wait for (median of `runs`)."""
    engine = sa.create_engine(database_url)
    try:
        times = []
        with engine.connect() as conn:
            for _ in range(runs):
                started = time.perf_counter()
                with sa.orm.Session(bind=conn) as session:
                    report.tally(session, campaign_id)
                times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        engine.dispose()


def sweep_snapshot(env: dict[str, str]) -> tuple[int, float]:
    """What beat's sweep does for this campaign: returns (snapshots refreshed, seconds)."""
    runtime = Runtime(Settings.from_env(env))
    try:
        started = time.perf_counter()
        refreshed = snapshots.refresh_due(runtime, budget_s=60.0)
        return refreshed, time.perf_counter() - started
    finally:
        runtime.close()


def never_counted(procs: Processes, env: dict[str, str], database_url: str, campaign_id: int,
                  path: str) -> tuple[float, bool, float]:
    """The worst case: a campaign no one (and no sweep) has counted yet. Returns the first view's
    time, whether it said "counting", and how long until the live fragment had counts."""
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM campaign_tallies WHERE campaign_id = :c"), {"c": campaign_id})
    engine.dispose()
    proc, base_url = start_api(procs, env)
    try:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            log_in(client, "bench@example.com")
            elapsed, response = timed_get(client, path)
            counting = "Counting" in response.text
            started = time.perf_counter()
            while "Counting" in timed_get(client, path + "/live")[1].text:
                time.sleep(0.05)
            return elapsed, counting, time.perf_counter() - started
    finally:
        stop_api(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--cold-runs", type=int, default=7)
    args = parser.parse_args()
    procs = Processes()
    with scratch_postgres("console") as database_url, private_redis() as redis_url:
        started = time.perf_counter()
        campaign_id = build_campaign(database_url, args.recipients)
        print(f"campaign {campaign_id}: {args.recipients:,} recipients stored in {time.perf_counter() - started:.0f} s", flush=True)
        env = stack_env(database_url=database_url, broker_url=redis_url, sandbox_url="http://127.0.0.1:9")
        user = subprocess.run([sys.executable, "-m", "worker.cli", "user", "create", "--email", "bench@example.com",
                               "--role", "admin", "--password-stdin"], input=PASSWORD + "\n", env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
        assert user.returncode == 0, user.stderr
        after, message_id = page_500_cursor(database_url, campaign_id)
        pages = [
            ("campaign page (counts, funnel, recipients page 1)", f"/campaigns/{campaign_id}"),
            ("live fragment (polled every second)", f"/campaigns/{campaign_id}/live"),
            ("recipients page 1", f"/campaigns/{campaign_id}/recipients"),
            ("recipients page 500", f"/campaigns/{campaign_id}/recipients?after={after}"),
            ("recipients, status failed, page 1", f"/campaigns/{campaign_id}/recipients?status=failed"),
            ("recipients, error 131047 (reported later), page 1", f"/campaigns/{campaign_id}/recipients?error_code=131047"),
            ("recipients, reason window_closed, page 1", f"/campaigns/{campaign_id}/recipients?error_code=window_closed"),
            ("retry page (every reason with its count)", f"/campaigns/{campaign_id}/retry"),
            ("opt-outs the campaign caused", f"/campaigns/{campaign_id}/opt-outs"),
            ("audit page (admins)", "/audit"),
            ("recipients' rows, page 500 (polled while sending)", f"/campaigns/{campaign_id}/recipients/rows?after={after}"),
            ("recipient picker: phones starting 96650001", f"/campaigns/{campaign_id}/preview?phone=96650001&fragment=1"),
            ("a message's page (its filled message)", f"/messages/{message_id}"),
            ("campaigns list", "/"),
        ]
        scan_ms = scan_baseline(database_url, campaign_id)
        refreshed, sweep_s = sweep_snapshot(env)
        print(f"baseline: one tally scan of the campaign (what an uncached page waits for) {scan_ms:.0f} ms; "
              f"beat's sweep stored {refreshed} snapshot(s) in {sweep_s * 1000:.0f} ms", flush=True)
        print(load_line(), flush=True)
        worst = 0.0
        try:
            cold: dict[str, list[float]] = {label: [] for label, _ in pages}
            labelled = 0
            for _ in range(args.cold_runs):
                proc, base_url = start_api(procs, env)
                with httpx.Client(base_url=base_url, timeout=60) as client:
                    log_in(client, "bench@example.com")
                    for label, path in pages:
                        elapsed, response = timed_get(client, path)
                        cold[label].append(elapsed)
                        labelled += label.startswith("campaign page") and "Counts as of" in response.text
                stop_api(proc)
            print(f"cold: first request of each page after the api started and a login, {args.cold_runs} restarts "
                  f"(campaign page labelled 'counts as of' in {labelled} of them)")
            for label, _ in pages:
                median, p95 = percentiles(cold[label])
                worst = max(worst, p95)
                print(f"  {label:<52} median {median:7.1f} ms  p95 {p95:7.1f} ms", flush=True)
            print(load_line(), flush=True)
            never = never_counted(procs, env, database_url, campaign_id, pages[0][1])
            print(f"  {'campaign page, never counted (no snapshot at all)':<52} {never[0]:7.1f} ms, "
                  f"shows {'counting' if never[1] else 'counts'}; its live fragment shows the counts after {never[2]:.1f} s")
            proc, base_url = start_api(procs, env)
            with httpx.Client(base_url=base_url, timeout=60) as client:
                log_in(client, "bench@example.com")
                health = percentiles([timed_get(client, "/healthz")[0] for _ in range(args.requests)])
                print(f"warm: {args.requests} requests per page after one untimed; baseline /healthz median "
                      f"{health[0]:.1f} ms p95 {health[1]:.1f} ms")
                for label, path in pages:
                    timed_get(client, path)
                    times, size = [], 0
                    for _ in range(args.requests):
                        elapsed, response = timed_get(client, path)
                        times.append(elapsed)
                        size = len(response.content)
                    median, p95 = percentiles(times)
                    worst = max(worst, p95)
                    print(f"  {label:<52} median {median:7.1f} ms  p95 {p95:7.1f} ms  ({size:,} bytes)", flush=True)
            stop_api(proc)
            print(load_line())
            print(f"slowest p95 {worst:.1f} ms (goal < {GOAL_MS:.0f} ms): {'met' if worst < GOAL_MS else 'NOT met'}")
        finally:
            procs.cleanup()


if __name__ == "__main__":
    main()
