"""Throughput (issue 16): one `buttoncast worker` against what one would write instead, same run.

Against an independent vendor stand-in (bench/vendor_standin.py: a stdlib threaded HTTP server that
answers after --latency-ms), Postgres (a scratch database) and a private redis-server on loopback,
for each vendor latency:

  sequential   one thread: sign + POST with `requests`, no database (the loop every first version is)
  naive        bench/naive_sender.py: a Celery task per recipient that signs, POSTs with `requests` and
               inserts a result row with the ORM; `--pool threads -c 16`, no guarantee of any kind
  buttoncast   `buttoncast worker` with NO options (its defaults), or each --configs variant
               (`PxT`: --processes P --threads T), sending a campaign's queued messages end to end
               (load, rate slot, claim, HTTP, record) with every guarantee

Each sender gets the same --recipients tasks, pushed on the broker at once; the clock runs from the
push until the queue is empty and nothing is unacknowledged (after a warm-up batch). Worker CPU is
the CPU of the worker's whole process tree divided by the messages.

    .venv/bin/python bench/throughput.py [--recipients 3000] [--latencies 0,50,200] [--configs default,1x16,2x32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR, SANDBOX_ENV, UNTHROTTLED, Processes, check_all_sent, component_cpu_s, free_port, load_line, machine_cpu_s,
    private_redis, push_tasks, tree_cpu_s, tree_pids,
    queued_message_ids, scratch_postgres, stack_env, start_profile, summarize_profile, wait_drained,
)

BUTTONCAST_QUEUE = "buttoncast.campaign"


@dataclass
class Run:
    rate: float          # messages/s
    cpu_ms: float        # worker process tree CPU per message (0 for the sequential loop: it is this process)
    system_share: float = 0.0   # of that CPU, the kernel's (thread hand-offs, sockets)
    peak_connections: int = 0   # most Postgres connections open at once during the timed batch (sampled)
    machine_ms: float = 0.0     # the whole machine's busy CPU per message (every process: worker, Postgres, ...)
    others_ms: dict[str, float] = field(default_factory=dict)   # of which Postgres, Redis, the stand-in

    def ceiling(self, cores: int) -> float:
        """msg/s this machine could reach if the worker cost nothing: its cores over everything else."""
        rest = self.machine_ms - self.cpu_ms
        return cores * 1000 / rest if rest > 0 else float("inf")


@dataclass
class Timed:
    elapsed_s: float
    worker_cpu_s: float
    system_share: float
    peak_connections: int
    machine_cpu_s: float
    others_cpu_s: dict[str, float]

    def run(self, messages: int) -> Run:
        per = 1000 / messages
        return Run(messages / self.elapsed_s, self.worker_cpu_s * per, self.system_share, self.peak_connections,
                   self.machine_cpu_s * per, {name: cpu * per for name, cpu in self.others_cpu_s.items() if cpu})


class ConnectionSampler:
    """Samples the Postgres connections open on the bench's database every 50 ms, in a thread."""

    def __init__(self, database_url: str) -> None:
        import threading

        self._engine = sa.create_engine(database_url, pool_size=1)
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self._engine.connect() as conn:
            while not self._stop.wait(0.05):
                count = conn.execute(sa.text("SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()")).scalar()
                self.peak = max(self.peak, count)
                conn.rollback()

    def __enter__(self) -> "ConnectionSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._engine.dispose()


def standin(latency_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "vendor_standin.py"), "--port", str(port),
                             "--latency-ms", str(latency_ms)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def sequential(vendor_url: str, count: int) -> Run:
    import hashlib
    import hmac
    import json

    import requests

    from naive_sender import PATH, SECRET

    http = requests.Session()
    began = time.perf_counter()
    for i in range(count):
        body = json.dumps({"to": f"9665{i:08d}", "type": "button", "body": {"text": "Hello"},
                           "buttons": [{"id": "a", "title": "A"}]}).encode()
        ts = str(int(time.time()))
        sig = hmac.new(SECRET, b"POST" + PATH.encode() + ts.encode() + body, hashlib.sha256).hexdigest()
        http.post(vendor_url + PATH, data=body, timeout=30,
                  headers={"Content-Type": "application/json", "X-Awal-Timestamp": ts, "X-Awal-Signature-256": sig}).json()
    elapsed = time.perf_counter() - began
    http.close()
    return Run(count / elapsed, 0.0)


def _timed(procs: Processes, pids: list[int], broker_url: str, database_url: str, queue: str, push, warm, timed,  # noqa: ANN001
           profile_s: int = 0) -> Timed:
    def cpu(system_only: bool = False) -> float:
        return sum(tree_cpu_s(pid, system_only=system_only) for pid in pids)

    push(warm)
    wait_drained(broker_url, queue, timeout_s=180)
    cpu0, sys0 = cpu(), cpu(system_only=True)
    machine0, others0 = machine_cpu_s(), component_cpu_s()
    profilers = [start_profile(p, profile_s, procs.log_dir / f"profile-{p}.txt") for p in tree_pids(pids[0])[-1:]] if profile_s else []
    with ConnectionSampler(database_url) as connections:
        began = time.monotonic()
        push(timed)
        ended = wait_drained(broker_url, queue, timeout_s=600)
    machine = machine_cpu_s() - machine0
    others = {name: spent - others0[name] for name, spent in component_cpu_s().items()}
    worker_cpu = cpu() - cpu0
    system_share = (cpu(system_only=True) - sys0) / worker_cpu if worker_cpu else 0.0
    for profiler in profilers:
        if profiler is not None:
            profiler.wait(profile_s + 30)
    for path in procs.log_dir.glob("profile-*.txt"):
        print(summarize_profile(path, top=45))
    return Timed(ended - began, worker_cpu, system_share, connections.peak, machine, others)


def naive(broker_url: str, database_url: str, vendor_url: str, recipients: int, warmup: int, shape: str) -> Run:
    """The naive sender: `T` (one process of T threads, the issue's) or `PxT` (P such processes)."""
    processes, _, threads = shape.rpartition("x")
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS naive_results (id serial PRIMARY KEY, phone varchar(20),"
                             " message_id varchar(128), status varchar(16))"))
        conn.execute(sa.text("TRUNCATE naive_results"))
    env = dict(os.environ, NAIVE_BROKER_URL=broker_url, NAIVE_DATABASE_URL=database_url, NAIVE_VENDOR_URL=vendor_url,
               PYTHONPATH=str(BENCH_DIR))
    from naive_sender import QUEUE, TASK

    with Processes() as procs:
        workers = [procs.start([sys.executable, "-m", "celery", "-A", "naive_sender", "worker", "--pool", "threads",
                                "-c", threads, "--queues", QUEUE, "--loglevel", "WARNING", "-n", f"naive{i}@%h",
                                "--without-gossip", "--without-mingle"], env) for i in range(int(processes or 1))]
        ids = list(range(1, warmup + recipients + 1))
        timed = _timed(procs, [w.pid for w in workers], broker_url, database_url, QUEUE,
                       lambda batch: push_tasks(broker_url, batch, QUEUE, TASK), ids[:warmup], ids[warmup:])
    with engine.connect() as conn:
        done = conn.execute(sa.text("SELECT count(*) FROM naive_results")).scalar()
    engine.dispose()
    if done != warmup + recipients:
        raise SystemExit(f"naive sender: {done} result rows, expected {warmup + recipients}")
    return timed.run(recipients)


def buttoncast(broker_url: str, database_url: str, vendor_url: str, recipients: int, warmup: int, config: str,
               profile_s: int = 0) -> Run:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:   # each run starts from an empty messages table
        conn.execute(sa.text("TRUNCATE messages, campaigns RESTART IDENTITY CASCADE"))
    engine.dispose()
    ids = queued_message_ids(database_url, warmup + recipients)
    env = stack_env(database_url=database_url, broker_url=broker_url, sandbox_url=vendor_url, **UNTHROTTLED)
    env.update(SANDBOX_ENV)
    argv = [sys.executable, "-m", "worker.cli", "worker", "--loglevel", "WARNING"]
    if config != "default":
        processes, threads = config.split("x")
        argv += ["--processes", processes, "--concurrency", threads]
    with Processes() as procs:
        worker = procs.start(argv, env)
        timed = _timed(procs, [worker.pid], broker_url, database_url, BUTTONCAST_QUEUE,
                              lambda batch: push_tasks(broker_url, batch, BUTTONCAST_QUEUE), ids[:warmup], ids[warmup:],
                              profile_s)
    print(check_all_sent(database_url, len(ids)))
    return timed.run(recipients)


def _machine(run: Run) -> str:
    cores = os.cpu_count() or 1
    parts = ", ".join(f"{name} {ms:.2f}" for name, ms in run.others_ms.items())
    return (f"machine CPU {run.machine_ms:.2f} ms/msg ({parts}); with a worker that cost nothing "
            f"the rest would allow {run.ceiling(cores):,.0f} msg/s on {cores} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--latencies", default="0,50,200", help="vendor latencies in ms, comma-separated")
    parser.add_argument("--configs", default="default", help="buttoncast worker configurations: default and/or PxT")
    parser.add_argument("--naive-threads", default="16",
                        help="the naive sender's threads (T) or processes x threads (PxT), comma-separated; "
                             "the first is the ratios' baseline (the issue's: 16)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="S", help="py-spy one buttoncast worker process for S s")
    args = parser.parse_args()
    print(f"throughput: {args.recipients:,} recipients per sender; {load_line()}")
    summary = []
    with private_redis() as broker_url, scratch_postgres("throughput") as database_url:
        for latency in (float(v) for v in args.latencies.split(",")):
            proc, vendor_url = standin(latency)
            try:
                count = args.recipients if latency == 0 else max(40, int(4000 / max(latency, 1)))
                seq = sequential(vendor_url, count)
                print(f"[{latency:.0f} ms] sequential loop ({count} messages): {seq.rate:,.0f} msg/s")
                summary.append(f"[{latency:.0f} ms] sequential loop: {seq.rate:,.0f} msg/s")
                base = None
                for shape in ([] if args.skip_naive else args.naive_threads.split(",")):
                    other = naive(broker_url, database_url, vendor_url, args.recipients, args.warmup, shape)
                    base = base or other
                    what = f"{shape.split('x')[0]} processes x {shape.split('x')[1]} threads" if "x" in shape else f"threads x {shape}"
                    line = (f"[{latency:.0f} ms] naive Celery sender ({what}): {other.rate:,.0f} msg/s, "
                            f"worker CPU {other.cpu_ms:.2f} ms/msg ({other.system_share:.0%} system), {_machine(other)}")
                    print(line)
                    summary.append(line)
                for config in args.configs.split(","):
                    ours = buttoncast(broker_url, database_url, vendor_url, args.recipients, args.warmup, config, args.profile)
                    vs_naive = f", {ours.rate / base.rate:.2f}x naive (goal >= 1.5)" if base else ""
                    line = (f"[{latency:.0f} ms] buttoncast worker {config}: {ours.rate:,.0f} msg/s, worker CPU "
                            f"{ours.cpu_ms:.2f} ms/msg ({ours.system_share:.0%} system; goal <= 1.5){vs_naive}, {ours.rate / seq.rate:.1f}x sequential, "
                            f"at most {ours.peak_connections} database connections, {_machine(ours)}")
                    print(line)
                    summary.append(line)
                print(f"  {load_line()}")
            finally:
                proc.terminate()
                proc.wait(10)
    print("\nsummary")
    for line in summary:
        print(" ", line)
    print(f"after: {load_line()}")


if __name__ == "__main__":
    main()
