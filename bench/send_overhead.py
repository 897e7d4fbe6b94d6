"""Send overhead: one machine's messages/s against a no-latency sandbox vs a stock do-nothing task.

Both sides run the same Celery settings, pool type, processes and threads, fed the same way
(tasks pre-built and pushed to a private Redis, timed from the push until the queue is empty and
nothing is unacknowledged). buttoncast's figure includes everything a real send does: load, rate
slot (Redis limiter; AWAL_RATE_LIMIT high enough never to wait), claim, signed HTTP to the sandbox
(which runs on the same two cores), and the recording transaction on Postgres. Example:

    .venv/bin/python bench/send_overhead.py --messages 20000 --processes 2 --concurrency 8
"""

from __future__ import annotations

import argparse
import os
import time


from common import (
    check_all_sent, NOOP_QUEUE, NOOP_TASK, Processes, component_cpu_s, cpu_s, machine_cpu_s, start_profile, summarize_profile, queued_message_ids, load_line, private_redis, push_tasks,
    ratio_line, sandbox, scratch_postgres, stack_env, UNTHROTTLED, wait_drained,
)

QUEUE = "buttoncast.campaign"


def run_noop(broker_url: str, args: argparse.Namespace) -> tuple[float, float]:
    procs = Processes()
    try:
        workers = [procs.noop_worker(broker_url, args.concurrency) for _ in range(args.processes)]
        push_tasks(broker_url, list(range(args.warmup)), NOOP_QUEUE, task=NOOP_TASK)
        wait_drained(broker_url, NOOP_QUEUE, timeout_s=120)
        cpu0 = sum(cpu_s(w.pid) for w in workers)
        began = time.monotonic()
        push_tasks(broker_url, list(range(args.messages)), NOOP_QUEUE, task=NOOP_TASK)
        ended = wait_drained(broker_url, NOOP_QUEUE)
        cpu = sum(cpu_s(w.pid) for w in workers) - cpu0
        return args.messages / (ended - began), cpu * 1000 / args.messages
    finally:
        procs.cleanup()


def run_buttoncast(broker_url: str, database_url: str, sandbox_url: str, args: argparse.Namespace) -> tuple[float, float]:
    ids = queued_message_ids(database_url, args.warmup + args.messages)
    env = stack_env(database_url=database_url, broker_url=broker_url, sandbox_url=sandbox_url, **UNTHROTTLED,
                    WORKER_CONCURRENCY=args.concurrency)
    with Processes() as procs:
        workers = [procs.buttoncast_worker(env, args.concurrency) for _ in range(args.processes)]
        push_tasks(broker_url, ids[:args.warmup], QUEUE)
        wait_drained(broker_url, QUEUE, timeout_s=120)
        cpu0, others0, machine0 = sum(cpu_s(w.pid) for w in workers), component_cpu_s(), machine_cpu_s()
        profiler = start_profile(workers[0].pid, args.profile, procs.log_dir / "profile.txt") if args.profile else None
        began = time.monotonic()
        push_tasks(broker_url, ids[args.warmup:], QUEUE)
        ended = wait_drained(broker_url, QUEUE)
        cpu = sum(cpu_s(w.pid) for w in workers) - cpu0
        others, machine = component_cpu_s(), machine_cpu_s() - machine0
        per = {name: (others[name] - others0[name]) * 1000 / args.messages for name in others}
        print(f"  CPU per message sent: workers {cpu * 1000 / args.messages:.2f} ms, "
              + ", ".join(f"{name} {ms:.2f} ms" for name, ms in per.items())
              + f"; whole machine {machine * 1000 / args.messages:.2f} ms of its {os.cpu_count()} cores")
        if profiler is not None:
            profiler.wait(args.profile + 30)
            print(summarize_profile(procs.log_dir / "profile.txt", top=args.profile_top))
    print(check_all_sent(database_url, len(ids)))
    return args.messages / (ended - began), cpu * 1000 / args.messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes (the machine has 2 cores)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker process")
    parser.add_argument("--profile", type=int, default=0, metavar="S",
                        help="py-spy one buttoncast worker for S seconds of the timed phase and print where time goes")
    parser.add_argument("--profile-top", type=int, default=40)
    args = parser.parse_args()
    print(f"send overhead: {args.messages} messages, {args.processes} worker process(es) x {args.concurrency} threads; "
          f"{load_line()}")
    with private_redis() as broker_url, scratch_postgres("send") as database_url, sandbox(0.0) as sandbox_url:
        noop_rate, noop_cpu = run_noop(broker_url, args)
        print(f"  stock Celery do-nothing task: {noop_rate:,.0f} tasks/s, worker CPU {noop_cpu:.2f} ms/task")
        ours_rate, ours_cpu = run_buttoncast(broker_url, database_url, sandbox_url, args)
        print(f"  buttoncast send: {ours_rate:,.0f} messages/s, worker CPU {ours_cpu:.2f} ms/message")
    print(ratio_line("send overhead", ours_rate, noop_rate, "msg/s", ">= 0.60"))
    print(f"after: {load_line()}")


if __name__ == "__main__":
    main()
