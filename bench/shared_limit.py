#!/usr/bin/env python3
"""The shared rate limit's share: N `buttoncast worker` at their defaults on one limit R the vendor enforces.

Issue 26, goal 3. N (default 3) `buttoncast worker` processes started with no options (one process
per core, WORKER_CONCURRENCY threads each) and one `buttoncast beat`, all on AWAL_RATE_LIMIT = R/s,
send one campaign of `--recipients` to the sandbox, which enforces R per fixed 1-second window
aligned to the epoch (429 with Retry-After and X-RateLimit-*). Each run has a fresh Postgres
database and a private Redis. Printed per run:

- achieved / R over the sending span: (accepted - 1) / (last accepted - first accepted) / R, the
  rate a perfect pacer at exactly R scores 1.00 on;
- achieved / R over the whole run: accepted / (last accepted - the first dispatch) / R;
- the share of requests answered 429, and the longest gap between two accepted sends;
- messages deferred to the database (put back `queued` with a not_before, from `queued`: no rate
  slot soon; from `sending`: a 429 or a transient failure), and how many of them more than once.
  A trigger the bench adds to its own scratch database logs every such UPDATE, so the count does not
  depend on what the code under test logs;
- beside it, in the same run against a sandbox of its own, the baseline: one thread sending the
  same count straight to the sandbox, sleep-paced at exactly R.

    .venv/bin/python bench/shared_limit.py [--workers 3] [--rate 20] [--recipients 400] [--runs 5]
    .venv/bin/python bench/shared_limit.py --rate 1 --recipients 200     # goal: none deferred twice
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from common import CONTENT, PG_ADMIN_URL, insert_campaign, load_line, stack_env  # noqa: E402

from tests.chaos_scenario import REPO_ROOT, PrivateRedis, Proc, SandboxProcess, fresh_postgres_database  # noqa: E402

FINAL = ("sent", "failed", "rejected", "unknown", "cancelled", "suppressed", "expired")
DEADLINE_SLACK_S = 120.0       # a run may take this much longer than recipients / R before it is abandoned

# Every UPDATE that puts a message back `queued` with a new not_before, and the status it came from.
REQUEUE_LOG = """
CREATE TABLE bench_requeue (message_id bigint NOT NULL, old_status text NOT NULL, at timestamptz NOT NULL);
CREATE FUNCTION bench_requeue_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench_requeue VALUES (NEW.id, OLD.status, clock_timestamp()); RETURN NEW; END $$;
CREATE TRIGGER bench_requeue AFTER UPDATE ON messages FOR EACH ROW
  WHEN (NEW.status = 'queued' AND OLD.status IN ('queued', 'sending') AND NEW.not_before IS NOT NULL
        AND NEW.not_before IS DISTINCT FROM OLD.not_before)
  EXECUTE FUNCTION bench_requeue_log();
"""


@dataclass
class Figures:
    accepted: int
    limited: int                 # 429s
    span_ratio: float            # (accepted - 1) / (last - first) / R
    whole_ratio: float | None    # accepted / (last - start) / R
    longest_gap_s: float
    deferred: int = 0            # messages put back with a not_before at least once
    deferred_twice: int = 0      # ... more than once
    no_slot: int = 0             # UPDATEs from `queued` (no rate slot soon)
    after_send: int = 0          # UPDATEs from `sending` (429, transient failure)
    worst_window: int = 0        # most accepted sends in one epoch-aligned 1-second window
    gaps: str = ""               # the longest gaps over two intervals (1/R), "<s after the first send>+<gap>"

    @property
    def share_429(self) -> float:
        total = self.accepted + self.limited
        return self.limited / total if total else 0.0


def figures(times: list[float], limited: int, rate: float, start: float | None) -> Figures:
    times = sorted(times)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    gaps = [b - a for a, b in zip(times, times[1:])]
    per_window: dict[int, int] = {}
    for t in times:
        per_window[int(t // 1)] = per_window.get(int(t // 1), 0) + 1
    return Figures(
        accepted=len(times), limited=limited,
        span_ratio=(len(times) - 1) / span / rate if span else 0.0,
        whole_ratio=len(times) / (times[-1] - start) / rate if start is not None and times else None,
        longest_gap_s=max(gaps, default=0.0), worst_window=max(per_window.values(), default=0),
        gaps=" ".join(f"{times[i] - times[0]:.1f}+{g:.2f}" for g, i in sorted(
            ((g, i) for i, g in enumerate(gaps) if g > 2 / rate), reverse=True)[:4]),
    )


# --- the baseline: one thread, sleep-paced at exactly R --------------------------------------------

def paced_baseline(sandbox: SandboxProcess, count: int, rate: float) -> Figures:
    """Send `count` messages one after another, the i-th at t0 + i / R, straight to the sandbox."""
    sandbox.client.reset()
    interval = 1.0 / rate
    body = _button_body()
    limited = 0
    t0 = time.time() + 0.05
    for i in range(count):
        delay = t0 + i * interval - time.time()
        if delay > 0:
            time.sleep(delay)
        response = sandbox.client.send(body)
        limited += response.status_code == 429
    times = [r["received_at"] for r in sandbox.client.received()]
    return figures(times, limited, rate, t0)


def _button_body() -> bytes:
    from worker.message import ButtonMessage

    return ButtonMessage.build(phone="966500000000", body_text=CONTENT["body_text"], buttons=CONTENT["buttons"],
                               footer_text=CONTENT["footer_text"]).body_bytes()


# --- buttoncast ------------------------------------------------------------------------------------

def run_buttoncast(work: Path, run: int, args: argparse.Namespace, sandbox: SandboxProcess) -> Figures:
    redis = PrivateRedis(work).start()
    procs: list[Proc] = []
    try:
        with fresh_postgres_database(PG_ADMIN_URL, "sharedlimit") as db_url:
            engine = sa.create_engine(db_url)
            with engine.begin() as conn:
                conn.exec_driver_sql(REQUEUE_LOG)
            env = stack_env(database_url=db_url, broker_url=redis.url, sandbox_url=sandbox.url,
                            AWAL_RATE_LIMIT=f"{args.rate:g}/s", PYTHONPATH=str(REPO_ROOT))
            env.update(json.loads(args.env))
            for i in range(args.workers):
                procs.append(Proc([sys.executable, "-m", "worker.cli", "worker"], work / f"worker-{run}-{i}.log", env))
            per_worker = len(os.sched_getaffinity(0))
            for p in procs:
                _wait_count(p, "ready.", per_worker)
            sandbox.client.reset()
            insert_campaign(db_url, args.recipients)
            procs.append(Proc([sys.executable, "-m", "worker.cli", "beat", "--schedule-file", str(work / f"beat-{run}")],
                              work / f"beat-{run}.log", env))
            start = _wait_finished(engine, args)
            counts = sandbox.client.stats()["counts"]
            times = [r["received_at"] for r in sandbox.client.received()]
            result = figures(times, counts.get("429", 0), args.rate, start)
            with engine.connect() as conn:
                per_message = conn.execute(sa.text(
                    "SELECT count(*) FILTER (WHERE n >= 1), count(*) FILTER (WHERE n >= 2) FROM"
                    " (SELECT message_id, count(*) AS n FROM bench_requeue GROUP BY 1) m")).one()
                by_status = dict(conn.execute(sa.text("SELECT old_status, count(*) FROM bench_requeue GROUP BY 1")).all())
            engine.dispose()
            result.deferred, result.deferred_twice = per_message
            result.no_slot, result.after_send = by_status.get("queued", 0), by_status.get("sending", 0)
            return result
    finally:
        for p in procs:
            p.kill()
        redis.kill()


def _wait_count(proc: Proc, text: str, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.log_path.read_text(errors="replace").count(text) >= count:
            return
        if not proc.alive():
            break
        time.sleep(0.1)
    raise RuntimeError(f"{proc.log_path.name}: {count}x {text!r} not logged:\n{proc.log_path.read_text(errors='replace')[-3000:]}")


def _wait_finished(engine: sa.Engine, args: argparse.Namespace) -> float | None:
    """Poll until every message is final; returns when the first one left `pending` (the first dispatch)."""
    start = None
    deadline = time.monotonic() + args.recipients / args.rate + DEADLINE_SLACK_S
    final = ", ".join(f"'{s}'" for s in FINAL)
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            moved, done = conn.execute(sa.text(
                f"SELECT count(*) FILTER (WHERE status <> 'pending'), count(*) FILTER (WHERE status IN ({final}))"
                " FROM messages")).one()
        if start is None and moved:
            start = time.time()
        if done >= args.recipients:
            return start
        time.sleep(0.01 if start is None else 0.2)
    raise TimeoutError(f"campaign not finished after {args.recipients / args.rate + DEADLINE_SLACK_S:.0f}s")


def line(name: str, f: Figures) -> str:
    whole = f"{f.whole_ratio:.3f}" if f.whole_ratio is not None else "  -  "
    return (f"  {name:10} span {f.span_ratio:.3f} R  whole {whole} R  429s {f.limited:3} ({100 * f.share_429:4.1f} %)"
            f"  longest gap {f.longest_gap_s:5.2f} s  most in a window {f.worst_window:3}"
            f"  deferred {f.deferred:3} (twice+ {f.deferred_twice:3}; updates: no slot {f.no_slot}, after send {f.after_send})"
            + (f"\n             gaps over two intervals (at+length): {f.gaps}" if f.gaps else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=3, help="`buttoncast worker` commands, each at its defaults")
    parser.add_argument("--rate", type=float, default=20.0, help="R: requests per second, AWAL_RATE_LIMIT and the sandbox's")
    parser.add_argument("--recipients", type=int, default=400)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--env", default="{}", help='extra environment for the workers, as JSON: \'{"AWAL_RATE_HEADROOM": "0.05"}\'')
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shared-limit-"))
    ours_sandbox = SandboxProcess(work, "--rate-limit", f"{args.rate:g}/s")
    base_sandbox = SandboxProcess(work, "--rate-limit", f"{args.rate:g}/s")
    rows: list[tuple[Figures, Figures]] = []
    print(f"{args.workers} x `buttoncast worker` (defaults: {len(os.sched_getaffinity(0))} processes each) + beat,"
          f" R = {args.rate:g}/s per epoch-aligned 1 s window, {args.recipients} recipients; logs in {work}", flush=True)
    try:
        for run in range(1, args.runs + 1):
            print(f"run {run}: {load_line()}", flush=True)
            baseline: list[Figures] = []
            pacer = threading.Thread(target=lambda: baseline.append(paced_baseline(base_sandbox, args.recipients, args.rate)))
            pacer.start()
            ours = run_buttoncast(work, run, args, ours_sandbox)
            pacer.join()
            rows.append((ours, baseline[0]))
            print(line("buttoncast", ours), flush=True)
            print(line("paced loop", baseline[0]), flush=True)
            print(f"  ratio buttoncast / paced loop (span): {ours.span_ratio / baseline[0].span_ratio:.3f}; {load_line()}", flush=True)
    finally:
        ours_sandbox.stop()
        base_sandbox.stop()
    met = all(o.span_ratio >= 0.95 and o.share_429 <= 0.01 for o, _ in rows)
    twice = sum(o.deferred_twice for o, _ in rows)
    print(f"goal (each run: span >= 0.95 R and 429s <= 1 %): {'met' if met else 'NOT met'};"
          f" messages deferred more than once, all runs: {twice}; {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
