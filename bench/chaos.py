"""The chaos scenario at full size: `python bench/chaos.py --recipients 20000 --rate 300`.

Issue 12: `--broker-flush` adds a FLUSHDB of the broker and prints the seconds from the broker
coming back to the first republished send; `--db-outage-s 90` cuts Postgres off for 90 s.

Issue 25: `--sequence` is the audit's check: 600 recipients at 100/s, 2 workers of 64 threads
(WORKER_CONCURRENCY), 4 SIGKILLs 2.5 s apart, then the broker's Redis db flushed; every recipient
must be final (sent, failed or unknown) within 60 s of the last fault. `--runs 20` repeats it
(a new seed per run) and prints per run: the end counts, duplicates (from the sandbox's own
records), the seconds from the last fault until every recipient was final, per SIGKILL how many
messages were in flight and how many ended `unknown`, the load average; then a summary line. A
run that leaves a recipient non-final prints that message's row, attempts, events, what the
broker and the outcome journal hold for it, and the log lines that name it. Any flag given
overrides the preset (`--sequence --kills 6`).

The same code as tests/system/test_chaos.py (tests/chaos_scenario.py), with real processes: the sandbox,
a private redis-server, a fresh Postgres database, `buttoncast worker` x N and `buttoncast beat`.
Prints the figures and every broken promise; exits 1 if there was one.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos_scenario import ChaosConfig, ChaosReport, run_chaos  # noqa: E402
from worker.settings import WORKER_CONCURRENCY  # noqa: E402

#: issue 25's check; every key is a flag below that, when given, wins
SEQUENCE = dict(recipients=600, rate=100.0, workers=2, concurrency=WORKER_CONCURRENCY, kills=4, kill_every_s=2.5,
                first_kill_s=1.0, broker_flush=True, redis_restart=False, beat_restart=False, final_within_s=60.0,
                deadline_s=300.0)
PLAIN = dict(recipients=20_000, rate=300.0, workers=3, concurrency=16, kills=6, kill_every_s=0.0, first_kill_s=1.0,
             broker_flush=False, redis_restart=True, beat_restart=True, final_within_s=None, deadline_s=1800.0)


def _parser() -> argparse.ArgumentParser:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequence", action="store_true", help="issue 25's check (see above)")
    parser.add_argument("--runs", type=int, default=1, help="run the scenario this many times, a new seed each")
    parser.add_argument("--recipients", type=int)
    parser.add_argument("--rate", type=float, help="AWAL_RATE_LIMIT per second")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--concurrency", type=int, help="threads per worker process")
    parser.add_argument("--kills", type=int, help="worker SIGKILLs during the run")
    parser.add_argument("--kill-every-s", type=float, help="SIGKILLs this far apart (0: at random points of the progress)")
    parser.add_argument("--first-kill-s", type=float, help="with --kill-every-s: the first SIGKILL this long after the start")
    parser.add_argument("--broker-flush", action=argparse.BooleanOptionalAction,
                        help="also FLUSHDB the broker (issue 12 item 12); with --kill-every-s one interval after the last kill")
    parser.add_argument("--redis-restart", action=argparse.BooleanOptionalAction, help="SIGKILL and restart Redis empty")
    parser.add_argument("--beat-restart", action=argparse.BooleanOptionalAction, help="SIGKILL and restart beat")
    parser.add_argument("--final-within-s", type=float, help="a problem when a recipient is not final this long after the last fault")
    parser.add_argument("--db-outage-s", type=float, default=0.0,
                        help="cut every process off Postgres (a TCP proxy) for this long mid-campaign (issue 12 item 13)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every process, over the scenario's (e.g. QUEUED_TASK_TIMEOUT_S=600)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--deadline-s", type=float)
    parser.add_argument("--pg-admin-url", default=defaults.pg_admin_url,
                        help="a Postgres URL allowed to CREATE DATABASE; a fresh database is made and dropped")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir, help="logs of every process go here (a folder per run)")
    return parser


def config_from(args: argparse.Namespace) -> ChaosConfig:
    preset = SEQUENCE if args.sequence else PLAIN
    value = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in preset.items()}
    return ChaosConfig(recipients=value["recipients"], rate_per_s=value["rate"], workers=value["workers"],
                       concurrency=value["concurrency"], worker_kills=value["kills"], kill_every_s=value["kill_every_s"],
                       first_kill_s=value["first_kill_s"], broker_flush=value["broker_flush"],
                       redis_restart=value["redis_restart"], beat_restart=value["beat_restart"],
                       final_within_s=value["final_within_s"], deadline_s=value["deadline_s"], seed=args.seed,
                       db_outage_s=args.db_outage_s, pg_admin_url=args.pg_admin_url, workdir=args.workdir,
                       extra_env=dict(item.split("=", 1) for item in args.env))


def run_line(n: int, report: ChaosReport) -> str:
    """One line per run: what issue 25 asks to see."""
    c = report.db_counts
    other = sum(v for k, v in c.items() if k not in ("sent", "failed", "unknown"))
    final = "never" if report.final_after_fault_s is None else f"{report.final_after_fault_s:.1f}s"
    kills = ", ".join(f"{len(k['in_flight'])}/{k.get('ended_unknown', '?')}/{k.get('vendor_accepted', '?')}" for k in report.kills)
    return (f"run {n:>2}: sent {c.get('sent', 0)} failed {c.get('failed', 0)} unknown {c.get('unknown', 0)} other {other} | "
            f"duplicates {len(report.duplicates)} | final {final} after the last fault | "
            f"per SIGKILL in flight/ended unknown/of those accepted by the vendor: {kills} | load {report.load_avg[0]:.1f}->{report.load_avg[1]:.1f} | "
            f"problems {len(report.problems)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt   # the run's `finally` stops its processes and drops its database


def main() -> int:
    for stop in (signal.SIGINT, signal.SIGTERM):   # also when started in the background, where SIGINT is ignored
        signal.signal(stop, _interrupt)
    args = _parser().parse_args()
    base = config_from(args)
    print(f"chaos: {args.runs} run(s) of {base.recipients} recipients at {base.rate_per_s:g}/s, {base.workers} workers x "
          f"{base.concurrency} threads, {base.worker_kills} SIGKILLs"
          + (f" {base.kill_every_s:g}s apart" if base.kill_every_s else "")
          + (", then a broker flush" if base.broker_flush else "") + f"; logs in {base.workdir}", flush=True)
    reports: list[ChaosReport] = []
    lines: list[str] = []
    started = time.monotonic()
    for n in range(1, args.runs + 1):
        config = replace(base, seed=base.seed + n - 1, workdir=base.workdir / f"run-{n:02d}" if args.runs > 1 else base.workdir)
        report = run_chaos(config)
        reports.append(report)
        lines.append(run_line(n, report))
        if args.runs == 1 or report.problems or report.unfinished:
            print("\n".join(report.lines()), flush=True)
        print(lines[-1], flush=True)
    good = [r for r in reports if r.finished and not r.problems]
    finals = [r.final_after_fault_s for r in reports if r.final_after_fault_s is not None]
    in_flight = sum(len(k["in_flight"]) for r in reports for k in r.kills)
    ended_unknown = sum(k.get("ended_unknown", 0) for r in reports for k in r.kills)
    accepted = sum(k.get("vendor_accepted", 0) for r in reports for k in r.kills)
    within = f" within {base.final_within_s:g}s of the last fault" if base.final_within_s is not None else ""
    slowest = f"max {max(finals):.1f}s" if finals else "never"
    non_final = sum(r.db_counts.get(k, 0) for r in reports for k in ("pending", "queued", "sending"))
    print(f"summary: {len(good)}/{len(reports)} runs clean (every recipient final{within}, no duplicate, no problem); "
          f"duplicates {sum(len(r.duplicates) for r in reports)}; non-final recipients {non_final}; "
          f"every recipient final after the last fault: {slowest}; SIGKILLs {sum(len(r.kills) for r in reports)}: "
          f"{in_flight} messages in flight, {ended_unknown} ended unknown, {accepted} of those accepted by the vendor; "
          f"{time.monotonic() - started:.0f}s in all", flush=True)
    return 0 if len(good) == len(reports) else 1


if __name__ == "__main__":
    sys.exit(main())
