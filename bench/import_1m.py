"""Import benchmark: a 1,000,000-row recipients CSV into SQLite and into Postgres.

    .venv/bin/python bench/import_1m.py [--rows 1000000] [--opted-out 100000] [--pg-admin-url URL]

Each stage runs in its own child process so that its peak RSS is its own:
  csv.reader     a plain csv.reader pass over the file (the floor: reading and splitting)
  validate       read_recipients: normalise, fill the placeholders, validate every message, on one
                 core (no DB): the baseline. Run first and again last; the baseline is their mean,
                 so load from other processes during the run shows as the gap between the two.
  validate-pool  check_recipients: the same checks as the import runs them (a process pool for a
                 big file), no DB
  sqlite         create_with_recipients into a fresh SQLite file
  postgres       create_with_recipients into a scratch database, created and dropped here
Each import's rate is printed as a ratio to the validate baseline (and to validate-pool), with
the load average at each stage's start and end. Peak RSS: the stage's own process (ru_maxrss),
and the largest sum of RSS over it and its descendants (the pool), sampled every 0.1 s.
About 0.5% of rows are invalid and 0.5% are duplicates, so the error paths are exercised too.
`--opted-out N` first imports a suppression list of N of those phones (`contacts import --optouts`,
timed on its own) so the campaign import meets N opted-out contacts and reports them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TEMPLATE = {
    "header_text": "Offer for {{name}}",
    "body_text": "Hello {{name}}! Your {{city}} store has 20% off this weekend. Reserve a slot?",
    "footer_text": "Reply STOP to opt out",
    "buttons": [{"id": "reserve", "title": "Reserve"}, {"id": "later", "title": "Later"}],
}
NAMES = ["Aisha", "Omar", "Fatimah", "Khalid", "Noura", "Zoë", "José", "محمد"]
CITIES = ["Riyadh", "Jeddah", "Dammam", "Abha"]


def generate(path: Path, rows: int) -> None:
    """Unique phones, with every 200th row invalid and every 200th (offset) a duplicate."""
    rng = random.Random(1)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["phone", "name", "city", "customer_id"])
        for i in range(rows):
            phone = f"+966 5{i:08d}"
            if i % 200 == 7:
                phone = "not-a-phone"
            elif i % 200 == 99 and i > 0:
                phone = f"9665{i - 1:08d}"
            writer.writerow([phone, rng.choice(NAMES), rng.choice(CITIES), f"C{i}"])


def generate_optouts(path: Path, rows: int, count: int) -> None:
    """`count` phones of the recipients file (spread evenly), as a suppression list."""
    step = max(1, rows // max(count, 1))
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["phone", "reason"])
        for n, i in enumerate(range(0, rows, step)):
            if n >= count:
                break
            writer.writerow([f"9665{i:08d}", "suppression list"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class TreeSampler:
    """Samples the RSS summed over this process and its descendants (the pool) every 0.1 s."""

    def __init__(self) -> None:
        import threading

        self.peak_kib, self.stopped = 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        return tree

    def _rss_kib(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as fh:
                return next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
        except OSError:
            return 0

    def _run(self) -> None:
        while not self.stopped.wait(0.1):
            self.peak_kib = max(self.peak_kib, sum(self._rss_kib(pid) for pid in self._tree()))

    def stop(self) -> float:
        self.stopped.set()
        self.thread.join()
        return round(self.peak_kib / 1024, 1)


def stage(name: str, csv_path: str, url: str | None, optouts: str | None = None) -> dict:
    """Run one stage in this (child) process; return its figures (imports are not timed)."""
    from scheduler.campaigns import create_with_recipients
    from scheduler.importer import RowProblem, check_recipients, read_recipients
    from scheduler.template import MessageTemplate
    from worker.db import make_engine, make_session_factory, upgrade

    sampler = TreeSampler()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    if name == "csv.reader":
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            rows = sum(1 for _ in csv.reader(fh)) - 1
        outcome = {"rows": rows}
    elif name == "validate":
        valid = bad = 0
        for item in read_recipients(csv_path, MessageTemplate(TEMPLATE)):
            bad += isinstance(item, RowProblem)
            valid += not isinstance(item, RowProblem)
        outcome = {"rows": valid + bad, "valid": valid, "rejected": bad}
    elif name == "validate-pool":
        from scheduler.import_pool import default_processes

        checked = check_recipients(csv_path, MessageTemplate(TEMPLATE))
        outcome = {"rows": rows_in(csv_path), "rejected": checked.rejected, "processes": default_processes()}
    else:
        upgrade(url)
        engine = make_engine(url)
        suppressed = {}
        if optouts:
            from worker.contacts.importer import import_optouts
            from worker.runtime import Runtime
            from worker.settings import Settings

            began = time.perf_counter()
            suppression = Runtime(Settings(database_url=url))
            try:
                listed = import_optouts(suppression, optouts)
            finally:
                suppression.close()
            took = time.perf_counter() - began
            suppressed = {"optout_list_rows_per_s": round((listed.opted_out + listed.already_opted_out) / took)}
        start = time.perf_counter()  # migrations (and the suppression list) are not the import
        _, result = create_with_recipients(make_session_factory(engine), csv_path, name="bench",
                                           phone_number_id="123456", template=TEMPLATE)
        engine.dispose()
        outcome = {"rows": result.imported + result.rejected + result.duplicates, "imported": result.imported,
                   "rejected": result.rejected, "duplicates": result.duplicates,
                   "opted_out": getattr(result, "opted_out", 0), **suppressed}
    seconds = time.perf_counter() - start
    return {"stage": name, **outcome, "seconds": round(seconds, 2), "rows_per_s": round(outcome["rows"] / seconds),
            "peak_rss_mb": round(peak_rss_mb(), 1), "tree_rss_mb": sampler.stop(),
            "load": f"{load_before:.2f}->{os.getloadavg()[0]:.2f}"}


def rows_in(csv_path: str) -> int:
    """Data rows of the generated file (one line each; the header excluded)."""
    with open(csv_path, "rb") as fh:
        return sum(1 for _ in fh) - 1


def run_child(name: str, csv_path: Path, url: str | None = None, optouts: Path | None = None) -> dict:
    args = [sys.executable, __file__, "--stage", name, "--csv", str(csv_path)] + (["--url", url] if url else [])
    args += ["--optouts", str(optouts)] if optouts else []
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def with_scratch_pg(admin_url: str, fn):  # noqa: ANN001, ANN201
    import sqlalchemy as sa

    name = f"buttoncast_bench_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        return fn(admin_url.rsplit("/", 1)[0] + "/" + name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--optouts", help=argparse.SUPPRESS)
    parser.add_argument("--opted-out", type=int, default=0, help="phones of the file opted out before the import")
    parser.add_argument("--skip-sqlite", action="store_true", help="only the Postgres import (and the floors)")
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.csv, args.url, args.optouts)))
        return
    with tempfile.TemporaryDirectory(prefix="buttoncast-bench-") as tmp:
        csv_path = Path(tmp) / "recipients.csv"
        t0 = time.perf_counter()
        generate(csv_path, args.rows)
        print(f"generated {args.rows:,} rows ({csv_path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        optouts = None
        if args.opted_out:
            optouts = Path(tmp) / "optouts.csv"
            generate_optouts(optouts, args.rows, args.opted_out)
        results = [run_child("csv.reader", csv_path), run_child("validate", csv_path), run_child("validate-pool", csv_path)]
        if not args.skip_sqlite:
            results.append(run_child("sqlite", csv_path, f"sqlite:///{Path(tmp) / 'bench.db'}", optouts))
        results.append(with_scratch_pg(args.pg_admin_url, lambda url: run_child("postgres", csv_path, url, optouts)))
        results.append(run_child("validate", csv_path))
    validates = [r["rows_per_s"] for r in results if r["stage"] == "validate"]
    baseline = sum(validates) / len(validates)
    pool = next(r["rows_per_s"] for r in results if r["stage"] == "validate-pool")
    print(f"baseline: validate on one core {baseline:,.0f} rows/s (mean of {' and '.join(f'{v:,}' for v in validates)}); "
          f"cores: {os.cpu_count()}; load average now {os.getloadavg()[0]:.2f}")
    print(f"{'stage':<13} {'rows':>9} {'seconds':>8} {'rows/s':>9} {'x validate':>10} {'x pool':>7} "
          f"{'RSS MiB':>8} {'tree MiB':>8} {'load':>11}  outcome")
    for r in results:
        extra = {k: r[k] for k in ("imported", "rejected", "duplicates", "valid", "opted_out", "processes",
                                   "optout_list_rows_per_s") if k in r}
        print(f"{r['stage']:<13} {r['rows']:>9,} {r['seconds']:>8} {r['rows_per_s']:>9,} {r['rows_per_s'] / baseline:>10.2f} "
              f"{r['rows_per_s'] / pool:>7.2f} {r['peak_rss_mb']:>8} {r['tree_rss_mb']:>8} {r['load']:>11}  {extra or ''}")


if __name__ == "__main__":
    main()
