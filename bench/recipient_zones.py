"""Recipients' own hours (`--tz recipient`, issue 22 item 6): what the zone work costs, beside a
same-run baseline of the same work in one fixed zone, on Postgres.

  import    create_with_recipients of a `--rows` CSV (numbers from Saudi Arabia, the US, Idaho,
            the UK and Russia, mixed) with `--tz Asia/Riyadh` (the baseline: no zone work at all)
            and with `--tz recipient` (each row's zone group computed in the checking processes,
            staged, stored, and the campaign's zones counted).
  dispatch  dispatch_tick (publishing stubbed) on a campaign of `--pending` pending messages, half
            in a zone group that is open and half in one that is closed, interleaved: ticks while
            the open half lasts, then ticks with only the closed half left (the claim walks the
            pending index past closed-zone rows: no index has the zone), against the same
            campaign in one fixed open zone.

    .venv/bin/python bench/recipient_zones.py [--rows 200000] [--pending 1000000] [--limit 20000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from common import CONTENT, load_line, scratch_postgres

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEMPLATE = {"body_text": "Hello {{name}}! Reserve a slot?", "buttons": [{"id": "reserve", "title": "Reserve"}]}
#: (prefix, digits after it): Riyadh, New York, Idaho (two zones), the UK (four names), Russia (16 zones)
PREFIXES = (("9665", 8), ("12122", 6), ("12082", 6), ("447911", 6), ("7916", 7))
#: 08:00 UTC on a Monday: 11:00 in Riyadh (open), 04:00 in New York (closed)
AT = datetime(2026, 3, 9, 8, tzinfo=timezone.utc)


def generate(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["phone", "name"])
        for i in range(rows):
            prefix, digits = PREFIXES[i % len(PREFIXES)]
            writer.writerow([f"+{prefix}{i % 10**digits:0{digits}d}", "Lina"])


def bench_import(database_url: str, csv_path: Path) -> None:
    from scheduler.campaigns import create_with_recipients
    from worker.db import make_engine, make_session_factory
    from worker.models import Campaign
    from worker.window import parse_window

    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    rates = {}
    for tz in ("Asia/Riyadh", "recipient", "Asia/Riyadh", "recipient"):
        began = time.perf_counter()
        campaign_id, result = create_with_recipients(factory, csv_path, name=f"bench {tz}", phone_number_id="1",
                                                     template=TEMPLATE, window=parse_window("09:00-21:00", tz))
        seconds = time.perf_counter() - began
        rows = result.imported + result.rejected + result.duplicates
        rates.setdefault(tz, []).append(rows / seconds)
        with factory() as session:
            zones = session.get(Campaign, campaign_id).zones
        print(f"  import --tz {tz:<11}: {rows:,} rows in {seconds:5.1f} s = {rows / seconds:8,.0f} rows/s; "
              f"imported {result.imported:,}, rejected {result.rejected:,}; zones {json.dumps(zones)[:90]}")
    engine.dispose()
    fixed, own = statistics.mean(rates["Asia/Riyadh"]), statistics.mean(rates["recipient"])
    print(f"  import: --tz recipient {own:,.0f} rows/s vs one fixed zone {fixed:,.0f} rows/s (same run): {own / fixed:.2f}x")


def insert_pending(engine: sa.Engine, count: int, *, recipient: bool) -> int:
    """A running campaign of `count` pending messages; `recipient`: zones alternate Riyadh / New York."""
    from sqlalchemy.orm import Session

    from scheduler.zones import recount_zones

    with engine.begin() as conn:
        campaign_id = conn.execute(sa.text(
            "INSERT INTO campaigns (name, phone_number_id, template, status, scheduled_at, consecutive_failures,"
            " recipients_imported, rows_rejected, created_at, started_at, updated_at, window_start, window_end, window_tz)"
            " VALUES ('bench', '1', CAST(:t AS json), 'running', :at, 0, :n, 0, :at, :at, :at, '09:00', '21:00', :tz)"
            " RETURNING id"), {"t": json.dumps(CONTENT), "n": count, "at": AT.replace(tzinfo=None),
                               "tz": "recipient" if recipient else "Asia/Riyadh"}).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO messages (campaign_id, phone_number_id, phone, content, status, attempts, created_at, updated_at, zone)"
            " SELECT :c, '1', (966500000000 + g)::text, CAST(:content AS json), 'pending', 0, :at, :at,"
            " CASE WHEN NOT :r THEN NULL WHEN g % 2 = 0 THEN 'Asia/Riyadh' ELSE 'America/New_York' END"
            " FROM generate_series(1, :n) AS g"),
            {"c": campaign_id, "content": json.dumps(CONTENT), "n": count, "at": AT.replace(tzinfo=None), "r": recipient})
        conn.execute(sa.text("ANALYZE messages"))
    if recipient:
        with Session(engine) as session, session.begin():
            recount_zones(session, campaign_id)
    return campaign_id


def bench_dispatch(database_url: str, pending: int, limit: int) -> None:
    from scheduler import dispatcher
    from worker.runtime import Runtime
    from worker.settings import Settings

    dispatcher.publish_send_tasks = lambda celery, ids, *, queue: None   # the broker is not what is measured
    env = {"DATABASE_URL": database_url, "AWAL_RATE_LIMIT": f"{limit}/s", "AWAL_RATE_HEADROOM": "0",
           "DISPATCH_INTERVAL_S": "1", "DISPATCH_LOOKAHEAD_TICKS": "1", "CELERY_BROKER_URL": "memory://"}
    engine = sa.create_engine(database_url)
    for label, recipient in (("one fixed zone (baseline)", False), ("--tz recipient, half open", True)):
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM messages"))
            conn.execute(sa.text("DELETE FROM campaigns"))
        campaign_id = insert_pending(engine, pending, recipient=recipient)
        runtime = Runtime(Settings.from_env(env))
        busy: list[float] = []
        idle: list[float] = []
        published = 0
        try:
            while len(idle) < 4:   # until nothing open is left, then 4 more ticks: the first counts, the rest remember
                t0 = time.perf_counter()
                report = dispatcher.dispatch_tick(runtime, now=AT + timedelta(seconds=len(busy) + len(idle)))
                (busy if report.total_published else idle).append(time.perf_counter() - t0)
                published += report.total_published
                with engine.begin() as conn:   # play the workers: what went out is sent
                    conn.execute(sa.text("UPDATE messages SET status = 'sent' WHERE campaign_id = :c AND status = 'queued'"),
                                 {"c": campaign_id})
        finally:
            runtime.close()
        print(f"  dispatch, {label}: {published:,} published in {len(busy)} tick(s), median "
              f"{statistics.median(busy) * 1000:,.0f} ms per tick of {limit:,} ({published / sum(busy):,.0f}/s)"
              + (f"; then, {pending - published:,} pending in closed zones only: a tick that counts them "
                 f"{idle[0] * 1000:,.0f} ms, the next ones (remembered for {dispatcher.ZONE_RECHECK_S} s) median "
                 f"{statistics.median(idle[1:]) * 1000:,.0f} ms" if recipient else
                 f"; a tick with nothing left {statistics.median(idle) * 1000:,.0f} ms"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the import's CSV")
    parser.add_argument("--pending", type=int, default=1_000_000, help="pending messages of the dispatch campaign")
    parser.add_argument("--limit", type=int, default=20_000, help="rate limit per second = messages per 1 s tick")
    args = parser.parse_args()
    print(f"recipient zones: {load_line()}; cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="buttoncast-bench-") as tmp, scratch_postgres("zones") as database_url:
        csv_path = Path(tmp) / "recipients.csv"
        generate(csv_path, args.rows)
        bench_import(database_url, csv_path)
        bench_dispatch(database_url, args.pending, args.limit)
    print(f"after: {load_line()}")


if __name__ == "__main__":
    main()
