"""Flat memory: a worker's resident memory over many messages, vs a stock do-nothing worker's.

One `buttoncast worker` process sends `--messages` queued messages end to end against a sandbox
with no latency (AWAL_RATE_LIMIT high enough never to wait), fed in chunks; after each chunk the
bench samples the worker's RSS and resets the sandbox (it records every message it accepts; its
memory is not the worker's). The baseline is a stock Celery worker (same pool, threads, settings)
running a do-nothing task over the same number of tasks. Growth is measured from the sample at
`--first` messages to the last. Example:

    .venv/bin/python bench/worker_memory.py --messages 200000 --first 10000
"""

from __future__ import annotations

import argparse
import time

from common import (
    NOOP_QUEUE, NOOP_TASK, Processes, queued_message_ids, load_line, private_redis, push_tasks, rss_mb,
    sandbox, scratch_postgres, stack_env, UNTHROTTLED, wait_drained,
)

QUEUE = "buttoncast.campaign"


def feed(pid: int, broker_url: str, ids: list[int], queue: str, args: argparse.Namespace, task: str | None = None,
         between=None) -> dict[int, float]:  # noqa: ANN001
    """Push `ids` chunk by chunk; RSS (MB) after each chunk, keyed by messages done so far."""
    samples: dict[int, float] = {}
    for start in range(0, len(ids), args.chunk):
        push_tasks(broker_url, ids[start:start + args.chunk], queue, task=task)
        wait_drained(broker_url, queue, timeout_s=1800)
        done = min(len(ids), start + args.chunk)
        samples[done] = rss_mb(pid)
        if between:
            between()
    return samples


def growth(samples: dict[int, float], first: int) -> tuple[float, float, float]:
    at_first = samples[min(k for k in samples if k >= first)]
    last = samples[max(samples)]
    return at_first, last, last - at_first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--first", type=int, default=10_000, help="growth is measured from this many messages")
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(f"worker memory: {args.messages:,} messages, 1 worker process x {args.concurrency} threads; {load_line()}")
    with private_redis() as broker_url, scratch_postgres("memory") as database_url, sandbox(0.0) as sandbox_url:
        procs = Processes()
        try:
            noop = procs.noop_worker(broker_url, args.concurrency)
            base = feed(noop.pid, broker_url, list(range(args.messages)), NOOP_QUEUE, args, task=NOOP_TASK)
        finally:
            procs.cleanup()
        b_first, b_last, b_growth = growth(base, args.first)
        print(f"  stock do-nothing worker: RSS {b_first:.1f} MB at {args.first:,} tasks, {b_last:.1f} MB at "
              f"{args.messages:,}: +{b_growth:.1f} MB")

        from worker.sandbox import SandboxClient

        vendor = SandboxClient(sandbox_url)
        ids = queued_message_ids(database_url, args.messages)
        env = stack_env(database_url=database_url, broker_url=broker_url, sandbox_url=sandbox_url, **UNTHROTTLED,
                        WORKER_CONCURRENCY=args.concurrency)
        procs = Processes()
        try:
            worker = procs.buttoncast_worker(env, args.concurrency)
            began = time.monotonic()
            ours = feed(worker.pid, broker_url, ids, QUEUE, args, between=vendor.reset)
            elapsed = time.monotonic() - began
        finally:
            procs.cleanup()
        o_first, o_last, o_growth = growth(ours, args.first)
        marks = ", ".join(f"{k // 1000}k: {v:.0f}" for k, v in ours.items() if k % (args.chunk * 4) == 0 or k == max(ours))
        print(f"  buttoncast worker RSS (MB) by messages sent: {marks}  ({args.messages / elapsed:,.0f} msg/s)")
        print(f"  buttoncast worker: RSS {o_first:.1f} MB at {args.first:,} messages, {o_last:.1f} MB at "
              f"{args.messages:,}: +{o_growth:.1f} MB")
    print(f"worker memory growth over {args.first:,} -> {args.messages:,}: buttoncast +{o_growth:.1f} MB, "
          f"baseline +{b_growth:.1f} MB (goal < 20 MB)")
    print(f"after: {load_line()}")


if __name__ == "__main__":
    main()
