"""The chaos scenario at full size: `python bench/chaos.py --recipients 20000 --rate 300`.

Issue 12: `--broker-flush` adds a FLUSHDB of the broker and prints the seconds from the broker
coming back to the first republished send; `--db-outage-s 90` cuts Postgres off for 90 s.

The same code as tests/system/test_chaos.py (tests/chaos_scenario.py), with real processes: the sandbox,
a private redis-server, a fresh Postgres database, `buttoncast worker` x N and `buttoncast beat`.
Prints the figures and every broken promise; exits 1 if there was one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos_scenario import ChaosConfig, run_chaos  # noqa: E402


def main() -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=300.0, help="AWAL_RATE_LIMIT per second")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kills", type=int, default=6, help="worker SIGKILLs during the run")
    parser.add_argument("--broker-flush", action="store_true", help="also FLUSHDB the broker mid-campaign (issue 12 item 12)")
    parser.add_argument("--db-outage-s", type=float, default=0.0,
                        help="cut every process off Postgres (a TCP proxy) for this long mid-campaign (issue 12 item 13)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--deadline-s", type=float, default=1800.0)
    parser.add_argument("--pg-admin-url", default=defaults.pg_admin_url,
                        help="a Postgres URL allowed to CREATE DATABASE; a fresh database is made and dropped")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir, help="logs of every process go here")
    args = parser.parse_args()
    config = ChaosConfig(recipients=args.recipients, rate_per_s=args.rate, workers=args.workers,
                         concurrency=args.concurrency, worker_kills=args.kills, seed=args.seed,
                         broker_flush=args.broker_flush, db_outage_s=args.db_outage_s,
                         deadline_s=args.deadline_s, pg_admin_url=args.pg_admin_url, workdir=args.workdir)
    print(f"chaos run: {config.recipients} recipients at {config.rate_per_s:g}/s, {config.workers} workers; logs in {config.workdir}",
          flush=True)
    report = run_chaos(config)
    print("\n".join(report.lines()))
    return 0 if report.finished and not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
