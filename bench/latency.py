"""Latency hiding: one worker process against a sandbox answering after 200 ms, vs a sequential loop.

Baseline: the sequential loop every first version is, `AwalClient.send` (sign + POST + parse) one
message after another, in the same run against the same sandbox. buttoncast: ONE `buttoncast
worker` process (threads pool, `--concurrency`, the database pool sized from it) sending
`--messages` queued messages end to end (load, rate slot, claim, HTTP, record) on Postgres, timed
from the push of their tasks until the queue is empty and nothing is unacknowledged. Example:

    .venv/bin/python bench/latency.py --latency-ms 200 --concurrency 80 --messages 5000
"""

from __future__ import annotations

import argparse
import time

from common import (
    UNTHROTTLED,
    Processes,
    check_all_sent,
    cpu_s,
    cpu_split_s,
    load_line,
    private_redis,
    push_tasks,
    queued_message_ids,
    ratio_line,
    rss_mb,
    sandbox,
    scratch_postgres,
    stack_env,
    start_profile,
    summarize_profile,
    wait_drained,
)

QUEUE = "buttoncast.campaign"


def sequential_loop(sandbox_url: str, broker_url: str, count: int) -> float:
    from worker.message import ButtonMessage
    from worker.sending.client import build_client
    from worker.settings import Settings

    settings = Settings.from_env(stack_env(database_url="sqlite://", broker_url=broker_url, sandbox_url=sandbox_url))
    client = build_client(settings)
    began = time.perf_counter()
    for i in range(count):
        message = ButtonMessage.build(phone=f"96659{i:07d}", body_text="Hello", buttons=[{"id": "a", "title": "A"}])
        client.send(message, "123456")
    elapsed = time.perf_counter() - began
    client.close()
    return count / elapsed


def run_worker(broker_url: str, database_url: str, sandbox_url: str, args: argparse.Namespace) -> float:
    ids = queued_message_ids(database_url, args.warmup + args.messages)
    env = stack_env(database_url=database_url, broker_url=broker_url, sandbox_url=sandbox_url, **UNTHROTTLED,
                    WORKER_CONCURRENCY=args.concurrency)
    with Processes() as procs:
        [worker] = [procs.buttoncast_worker(env, args.concurrency)]
        push_tasks(broker_url, ids[:args.warmup], QUEUE)
        wait_drained(broker_url, QUEUE, timeout_s=120)
        cpu0, split0 = cpu_s(worker.pid), cpu_split_s(worker.pid)
        profiler = start_profile(worker.pid, args.profile, procs.log_dir / "profile.txt") if args.profile else None
        began = time.monotonic()
        push_tasks(broker_url, ids[args.warmup:], QUEUE)
        ended = wait_drained(broker_url, QUEUE)
        cpu = cpu_s(worker.pid) - cpu0
        user, system = (b - a for a, b in zip(split0, cpu_split_s(worker.pid)))
        if profiler is not None:
            profiler.wait(args.profile + 30)
            print(summarize_profile(procs.log_dir / "profile.txt", top=40))
        print(f"  worker: CPU {cpu * 1000 / args.messages:.2f} ms/message (user {user * 1000 / args.messages:.2f}, "
              f"system {system * 1000 / args.messages:.2f}), RSS {rss_mb(worker.pid):.0f} MB")
    print(check_all_sent(database_url, len(ids)))
    return args.messages / (ended - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=80, help="threads of the one worker process")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--sequential", type=int, default=25, help="messages in the sequential baseline loop")
    parser.add_argument("--profile", type=int, default=0, metavar="S", help="py-spy the worker for S seconds")
    args = parser.parse_args()
    print(f"latency hiding: vendor latency {args.latency_ms:.0f} ms, 1 worker process x {args.concurrency} threads; "
          f"{load_line()}")
    with private_redis() as broker_url, scratch_postgres("latency") as database_url, \
            sandbox(args.latency_ms) as sandbox_url:
        baseline = sequential_loop(sandbox_url, broker_url, args.sequential)
        print(f"  baseline: sequential sign + POST loop, {args.sequential} messages: {baseline:,.1f} msg/s")
        ours = run_worker(broker_url, database_url, sandbox_url, args)
        print(f"  buttoncast: {args.messages:,} messages: {ours:,.0f} msg/s")
    print(ratio_line("latency hiding (one process)", ours, baseline, "msg/s", ">= 250 msg/s"))
    print(f"after: {load_line()}")


if __name__ == "__main__":
    main()
