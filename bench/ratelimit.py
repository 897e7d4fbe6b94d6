#!/usr/bin/env python3
"""Shared rate limit vs Celery's per-worker rate_limit, against the sandbox enforcing R requests/s.

For N = 1, 2, 4 worker processes (16 threads each, the worker's default) it sends a campaign for
DURATION seconds and prints achieved rate / R and the share of requests answered 429, for buttoncast (campaign, beat,
shared Redis limiter) and, in the same run, for the same workers using Celery's `rate_limit=R`.
Goal: achieved >= 0.95 R and 429s <= 0.5 % for every N.

    .venv/bin/python bench/ratelimit.py [--rate 50] [--duration 30] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from tests.chaos_scenario import PrivateRedis, Proc, SandboxProcess, fresh_postgres_database  # noqa: E402
from worker.models import Campaign, Message, utcnow  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SANDBOX_ENV = {"AWAL_CLIENT_ID": "sandbox-client", "AWAL_DOMAIN": "sandbox.local",
               "AWAL_HMAC_SECRET": "sandbox-secret", "AWAL_PHONE_NUMBER_ID": "123456"}
CONTENT = {"body_text": "Rate limit bench", "buttons": [{"id": "ok", "title": "OK"}]}
WARMUP_S = 3.0
THREADS = "16"


def env_for(db_url: str, broker: str, sandbox_url: str, rate: int) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWAL_", "CELERY_", "REDIS_", "DATABASE_"))}
    env.update(SANDBOX_ENV, DATABASE_URL=db_url, CELERY_BROKER_URL=broker, AWAL_BASE_URL=sandbox_url,
               AWAL_RATE_LIMIT=f"{rate}/s", DISPATCH_INTERVAL_S="0.5", METRICS_PORT="0", LOG_FORMAT="text",
               BENCH_RATE=f"{rate}/s", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return env


def seed_campaign(db_url: str, recipients: int, tag: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        cid = conn.execute(sa.insert(Campaign).values(
            name=f"bench {tag}", phone_number_id="123456", template=CONTENT, status="running",
            scheduled_at=utcnow(), started_at=utcnow(), consecutive_failures=0, recipients_imported=recipients,
            rows_rejected=0, created_at=utcnow(), updated_at=utcnow()).returning(Campaign.id)).scalar_one()
        rows = [dict(campaign_id=cid, phone_number_id="123456", phone=f"9665{tag}{i:07d}", content=CONTENT,
                     status="pending", attempts=0, created_at=utcnow(), updated_at=utcnow()) for i in range(recipients)]
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(Message), rows[start:start + 5000])
    engine.dispose()


def measure(sandbox: SandboxProcess, duration: float) -> tuple[int, int]:
    """(200s, 429s) the sandbox answered during `duration` seconds after a warm-up."""
    time.sleep(WARMUP_S)
    before = sandbox.client.stats()["counts"]
    time.sleep(duration)
    after = sandbox.client.stats()["counts"]
    return (after.get("200", 0) - before.get("200", 0), after.get("429", 0) - before.get("429", 0))


def run_buttoncast(work: Path, n: int, rate: int, duration: float, sandbox: SandboxProcess) -> tuple[int, int]:
    redis = PrivateRedis(work).start()
    procs: list[Proc] = []
    try:
        with fresh_postgres_database(PG_ADMIN) as db_url:
            seed_campaign(db_url, int(rate * (duration + WARMUP_S + 10) * 1.3), f"{n}")
            env = env_for(db_url, redis.url, sandbox.url, rate)
            for i in range(n):
                procs.append(Proc([sys.executable, "-m", "worker.cli", "worker", "--processes", "1", "--concurrency", THREADS],
                                  work / f"bc-worker-{n}-{i}.log", env))
            for p in procs:
                p.wait_for("ready.")
            procs.append(Proc([sys.executable, "-m", "worker.cli", "beat", "--schedule-file", str(work / f"beat-{n}")],
                              work / f"bc-beat-{n}.log", env))
            result = measure(sandbox, duration)
            for p in procs:
                p.kill()
            return result
    finally:
        for p in procs:
            p.kill()
        redis.kill()


def run_baseline(work: Path, n: int, rate: int, duration: float, sandbox: SandboxProcess, pool: str = "prefork") -> tuple[int, int]:
    import redis as redis_lib
    from celery import Celery

    redis = PrivateRedis(work).start()
    procs: list[Proc] = []
    try:
        env = env_for("sqlite:///unused.db", redis.url, sandbox.url, rate)
        app = Celery("publisher", broker=redis.url)
        with app.producer_or_acquire() as producer:
            for i in range(int(rate * n * (duration + WARMUP_S + 10) * 1.2)):
                app.send_task("bench.send_direct", args=[f"9667{n}{i:07d}"], queue="bench.baseline", producer=producer)
        for i in range(n):
            procs.append(Proc([sys.executable, "-m", "celery", "-A", "bench.ratelimit_baseline", "worker", "--pool",
                               pool, "-c", THREADS if pool == "threads" else "4", "--without-gossip", "--without-mingle", "-Q", "bench.baseline",
                               "--loglevel", "INFO"],
                              work / f"base-worker-{n}-{i}.log", env))
        for p in procs:
            p.wait_for("ready.")
        result = measure(sandbox, duration)
        redis_lib.Redis.from_url(redis.url).flushdb()
        return result
    finally:
        for p in procs:
            p.kill()
        redis.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=50, help="requests per second the sandbox allows")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--baseline-pool", default="prefork", choices=["prefork", "threads"],
                        help="Celery pool of the baseline workers (threads: rate-limited tasks wait for the event "
                             "loop's 1 s Redis poll, about 1 task/s per worker)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
    sandbox = SandboxProcess(work, "--rate-limit", f"{args.rate}/s")
    rows = []
    try:
        for n in [int(x) for x in args.workers.split(",")]:
            for name, runner in (("buttoncast", run_buttoncast),
                                 (f"celery rate_limit ({args.baseline_pool})",
                                  lambda *a: run_baseline(*a, pool=args.baseline_pool))):
                ok, limited = runner(work, n, args.rate, args.duration, sandbox)
                total = ok + limited
                rows.append((n, name, ok / args.duration / args.rate, (limited / total * 100) if total else 0.0, ok, limited))
                print(f"  N={n} {name:28} achieved {rows[-1][2]:.3f} R   429s {rows[-1][3]:5.1f} %", flush=True)
    finally:
        sandbox.stop()
    print(f"\nsandbox limit R = {args.rate}/s, {args.duration:.0f} s measured per run (logs in {work})")
    print(f"{'workers':>7}  {'sender':28} {'achieved/R':>10} {'429 share':>9} {'200s':>6} {'429s':>6}")
    for n, name, ratio, share, ok, limited in rows:
        print(f"{n:>7}  {name:28} {ratio:>10.3f} {share:>8.2f}% {ok:>6} {limited:>6}")
    goal = all(r[2] >= 0.95 and r[3] <= 0.5 for r in rows if r[1] == "buttoncast")
    print(f"goal (buttoncast achieved >= 0.95 R and 429s <= 0.5 % for every N): {'met' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
