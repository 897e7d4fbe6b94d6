"""Dispatch: recipients/s from `pending` to published Celery send tasks, vs a plain send_task loop.

Baseline: `celery_app.send_task("buttoncast.send_message", args=[id], queue=...)` in a loop (what
any Celery app does), into the same private Redis, in the same run.

buttoncast: the real `dispatch_tick` (start due campaigns, count in-flight work, water-fill the
budget, claim rows pending -> queued with UPDATE ... FOR UPDATE SKIP LOCKED RETURNING on Postgres,
publish, finish campaigns, depth metrics) against a campaign of `--recipients` pending rows (default
1,000,000). The rate limit is set high (`--limit`, per second) with a 1 s tick and one tick of
look-ahead, so each tick may publish `--limit` tasks; between ticks (untimed) the bench plays the
workers: it empties the queue and marks those messages sent, freeing the budget. Each tick prints
the queue's length and Redis's used memory: flow control keeps both bounded by one tick's budget,
whatever the campaign's size. Example:

    .venv/bin/python bench/dispatch.py --recipients 1000000 --limit 20000 --ticks 10
"""

from __future__ import annotations

import argparse
import json
import time

import redis
import sqlalchemy as sa

from common import insert_campaign, load_line, private_redis, ratio_line, scratch_postgres, stack_env

QUEUE = "buttoncast.campaign"


def baseline_send_task_loop(broker_url: str, count: int) -> float:
    from worker.celery_app import create_celery
    from worker.queues import TASK_SEND
    from worker.settings import Settings

    app = create_celery(Settings.from_env({"CELERY_BROKER_URL": broker_url}))
    app.send_task(TASK_SEND, args=[0], queue=QUEUE, ignore_result=True)  # connect and declare first
    began = time.perf_counter()
    for message_id in range(1, count + 1):
        app.send_task(TASK_SEND, args=[message_id], queue=QUEUE, ignore_result=True)
    elapsed = time.perf_counter() - began
    client = redis.Redis.from_url(broker_url)
    assert client.llen(QUEUE) == count + 1
    client.delete(QUEUE)
    return count / elapsed


def check_message(raw: bytes) -> None:
    """A published task is a standard Celery protocol-2 message for the send task."""
    import base64

    from worker.queues import TASK_SEND

    envelope = json.loads(raw)
    args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    assert envelope["headers"]["task"] == TASK_SEND and isinstance(args[0], int) and kwargs == {}, envelope
    assert envelope["properties"]["body_encoding"] == "base64" and "delivery_tag" in envelope["properties"]


def run_dispatch(broker_url: str, database_url: str, args: argparse.Namespace) -> float:
    from scheduler.dispatcher import dispatch_tick
    from worker.runtime import Runtime
    from worker.settings import Settings

    began = time.monotonic()
    campaign_id = insert_campaign(database_url, args.recipients)
    print(f"  inserted {args.recipients:,} pending recipients in {time.monotonic() - began:.1f}s (untimed)")
    env = stack_env(database_url=database_url, broker_url=broker_url, sandbox_url="http://127.0.0.1:9",
                    AWAL_RATE_LIMIT=f"{args.limit}/s", AWAL_RATE_HEADROOM="0", DISPATCH_INTERVAL_S="1",
                    DISPATCH_LOOKAHEAD_TICKS="1", DISPATCH_BATCH_SIZE=args.batch)
    runtime = Runtime(Settings.from_env(env))
    client = redis.Redis.from_url(broker_url)
    engine = sa.create_engine(database_url)
    baseline_memory = client.info("memory")["used_memory"]
    published = 0
    tick_s = 0.0
    max_len = max_memory = 0
    try:
        for tick in range(1, args.ticks + 1):
            t0 = time.perf_counter()
            report = dispatch_tick(runtime)
            elapsed = time.perf_counter() - t0
            tick_s += elapsed
            published += report.total_published
            length, memory = client.llen(QUEUE), client.info("memory")["used_memory"]
            max_len, max_memory = max(max_len, length), max(max_memory, memory)
            if tick == 1:
                check_message(client.lindex(QUEUE, 0))
            print(f"  tick {tick:2d}: published {report.total_published:6,} in {elapsed * 1000:6.0f} ms "
                  f"(budget {report.budget:,}, in flight {report.in_flight:,}); queue length {length:,}, "
                  f"Redis used_memory {memory / 2**20:6.1f} MiB")
            # Play the workers (untimed): take every task off the queue and mark its message sent.
            client.delete(QUEUE)
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE messages SET status = 'sent' WHERE campaign_id = :c AND status = 'queued'"),
                             {"c": campaign_id})
    finally:
        runtime.close()
        engine.dispose()
    per_message = (max_memory - baseline_memory) / max(1, max_len)
    print(f"  Redis: queue length at most {max_len:,}, used_memory at most {max_memory / 2**20:.1f} MiB "
          f"({per_message:,.0f} bytes per queued task); without flow control {args.recipients:,} tasks would "
          f"take about {per_message * args.recipients / 2**20:,.0f} MiB")
    return published / tick_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=20_000, help="rate limit per second = tasks per 1 s tick")
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000, help="DISPATCH_BATCH_SIZE")
    parser.add_argument("--baseline", type=int, default=5000, help="tasks in the send_task loop")
    args = parser.parse_args()
    print(f"dispatch: {load_line()}")
    with private_redis() as broker_url, scratch_postgres("dispatch") as database_url:
        baseline = baseline_send_task_loop(broker_url, args.baseline)
        print(f"  baseline: plain send_task loop, {args.baseline:,} tasks: {baseline:,.0f} tasks/s")
        ours = run_dispatch(broker_url, database_url, args)
    print(ratio_line("dispatch (pending -> published, Postgres + Redis)", ours, baseline, "recipients/s", ">= 10.00 and >= 10,000/s"))
    print(f"after: {load_line()}")


if __name__ == "__main__":
    main()
