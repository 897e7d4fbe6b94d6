"""How many signed webhook events per second the receiver records on Postgres (a script, not a test).

Creates a scratch database through the admin URL, migrates it, inserts N/2 sent messages, starts
`python -m worker.webhooks --port 0` in a subprocess, then `--clients` keep-alive aiohttp
connections POST N distinct events (a delivered and a read for each message, shuffled, so half
arrive out of order) plus `--duplicates` re-sent ones. Prints events/s and latency percentiles,
checks the database holds exactly N events and every message ended `read`, and drops the database.

    .venv/bin/python bench/webhook_burst.py --events 20000 --clients 16 --threads 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import aiohttp
import sqlalchemy as sa

from worker.db import upgrade
from worker.models import Message
from worker.signing import SIGNATURE_HEADER, sign_body

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SECRET = "bench-webhook-secret"
T0 = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)


def event_bodies(messages: int, duplicates: int, seed: int) -> list[bytes]:
    def body(i: int, status: str, offset_s: int) -> bytes:
        at = (T0 + timedelta(seconds=offset_s)).isoformat()
        doc = {"event": "message.status.updated", "timestamp": at,
               "data": {"message_id": f"wamid.bench{i}", "status": status, "timestamp": at}}
        return json.dumps(doc, separators=(",", ":")).encode()

    rng = random.Random(seed)
    bodies = [body(i, s, n) for i in range(messages) for n, s in ((1, "delivered"), (2, "read"))]
    rng.shuffle(bodies)
    return bodies + rng.sample(bodies, min(duplicates, len(bodies)))


async def fire(url: str, bodies: list[bytes], clients: int) -> tuple[Counter[str], list[float], float]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                headers = {"Content-Type": "application/json",
                           SIGNATURE_HEADER: sign_body(secret=SECRET.encode(), body=body)}
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        doc = await response.json()
                        statuses[f"{response.status} {doc.get('outcome', doc.get('error'))}"] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return statuses, latencies, time.perf_counter() - started


def start_receiver(database_url: str, threads: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "DATABASE_URL": database_url, "AWAL_WEBHOOK_SECRET": SECRET, "LOG_FORMAT": "text"}
    proc = subprocess.Popen([sys.executable, "-m", "worker.webhooks", "--port", "0", "--threads", str(threads)],
                            stdout=subprocess.PIPE, text=True, env=env)
    url = (proc.stdout.readline() if proc.stdout else "").strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"receiver did not start (printed {url!r})")
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="distinct events (even)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--threads", type=int, default=8, help="receiver (waitress) threads")
    parser.add_argument("--duplicates", type=int, default=0, help="extra re-sent events (must answer duplicate)")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()

    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    name = f"buttoncast_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = args.admin_url.rsplit("/", 1)[0] + "/" + name
    proc = None
    try:
        upgrade(url)
        messages = args.events // 2
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.insert(Message), [dict(phone_number_id="1", phone=f"9665{i:08d}", content={}, status="sent",
                                                   attempts=1, created_at=T0, updated_at=T0, sent_at=T0,
                                                   vendor_message_id=f"wamid.bench{i}") for i in range(messages)])
        proc, endpoint = start_receiver(url, args.threads)
        bodies = event_bodies(messages, args.duplicates, args.seed)
        statuses, latencies, elapsed = asyncio.run(fire(endpoint, bodies, args.clients))
        latencies.sort()
        pct = {p: latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000 for p in (50, 95, 99)}
        print(f"{len(bodies)} events, {args.clients} clients, {args.threads} receiver threads: {elapsed:.2f}s = "
              f"{len(bodies) / elapsed:.0f} events/s; latency p50 {pct[50]:.1f} ms, p95 {pct[95]:.1f} ms, p99 {pct[99]:.1f} ms")
        print("answers:", dict(statuses))
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT count(*) FROM webhook_events")).scalar_one()
            read = conn.execute(sa.text("SELECT count(*) FROM messages WHERE delivery_status = 'read'")).scalar_one()
        engine.dispose()
        ok = kept == messages * 2 and read == messages
        print(f"database: {kept} events kept (expected {messages * 2}), {read}/{messages} messages read: "
              f"{'OK' if ok else 'MISMATCH'}")
        if not ok:
            sys.exit(1)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


if __name__ == "__main__":
    main()
