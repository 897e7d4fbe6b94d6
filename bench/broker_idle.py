"""Issue 12 item 12: the broker's queue length while no worker runs, over 30 min of simulated sweeps.

`python bench/broker_idle.py --messages 1200 --minutes 30`: a private redis-server as the broker, a
scratch SQLite database, 1,200 ad-hoc messages and no worker. The dispatcher ticks every
DISPATCH_INTERVAL_S and the sweep every SWEEP_INTERVAL_S on a simulated clock (QUEUED_TASK_TIMEOUT_S
600 s, the default); after each QUEUED_TASK_TIMEOUT_S it prints the queue's length and how many
distinct ids it holds. Before issue 12 item 12 it grew by one copy of the window per timeout
(1,200 -> 7,200 in six cycles); it must stay flat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1200)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="QUEUED_TASK_TIMEOUT_S")
    args = parser.parse_args()

    from scheduler.dispatcher import dispatch_tick
    from scheduler.sweeper import sweep
    from tests.chaos_scenario import PrivateRedis
    from tests.conftest import make_runtime, stack_env
    from tests.scheduler.test_sweeper import published_send_tasks
    from worker.db import upgrade
    from worker.models import Message, utcnow
    from worker.queues import QUEUE_ADHOC

    workdir = Path(tempfile.mkdtemp(prefix="buttoncast-idle-"))
    redis = PrivateRedis(workdir).start()
    database_url = f"sqlite:///{workdir / 'idle.db'}"
    upgrade(database_url)
    rt = make_runtime(stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9", broker_url=redis.url,
                                AWAL_RATE_LIMIT=f"{args.messages}/s", QUEUED_TASK_TIMEOUT_S=str(args.timeout_s)))
    try:
        with rt.session_factory.begin() as s:
            s.add_all(Message(phone_number_id="123456", phone=f"96650{i:07d}", content={"body_text": "Hi", "buttons": [
                {"id": "y", "title": "Yes"}]}, status="pending") for i in range(args.messages))
        broker = rt.celery.connection().default_channel.client
        start, tick_s, sweep_s = utcnow(), rt.settings.dispatch_interval_s, rt.settings.sweep_interval_s
        total_s, t, next_sweep, next_report = args.minutes * 60, 0.0, sweep_s, 0.0
        print(f"{args.messages} messages, no worker, QUEUED_TASK_TIMEOUT_S={args.timeout_s:g}, "
              f"ticks every {tick_s:g}s, sweeps every {sweep_s:g}s, {args.minutes:g} simulated minutes")
        while t <= total_s:
            now = start + timedelta(seconds=t)
            if t >= next_sweep:
                sweep(rt, now=now)
                next_sweep += sweep_s
            dispatch_tick(rt, now=now)
            if t >= next_report:
                ids = [mid for _, mid in published_send_tasks(broker, QUEUE_ADHOC)]
                print(f"  t={t / 60:5.1f} min: queue length {broker.llen(QUEUE_ADHOC)}, distinct ids {len(set(ids))}", flush=True)
                next_report += args.timeout_s
            t += tick_s
        final = broker.llen(QUEUE_ADHOC)
        print(f"final queue length {final} for {args.messages} messages ({'flat' if final == args.messages else 'GREW'})")
        return 0 if final == args.messages else 1
    finally:
        rt.close()
        redis.kill()


if __name__ == "__main__":
    sys.exit(main())
