"""The send path alone: `send_message` called in a loop in this process, no Celery, one thread.

What a message costs buttoncast itself (load, rate slot in Redis, claim, signed HTTP to a
no-latency sandbox, record on Postgres), without Celery's or threads' overhead; the baseline is
the bare client loop (sign + POST + parse, no database, no limiter) in the same run. `--profile`
prints cProfile's top functions (CPU time) by cumulative and by own time. Example:

    .venv/bin/python bench/send_loop.py --messages 5000 --profile

`--hook` first adds an outbound hook endpoint subscribed to message.sent, so every record also
writes its outbox row (one more CTE in the same statement); nothing is delivered during the loop.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from common import (
    UNTHROTTLED,
    load_line,
    private_redis,
    queued_message_ids,
    ratio_line,
    sandbox,
    scratch_postgres,
    stack_env,
)


def client_loop(settings, count: int) -> tuple[float, float]:  # noqa: ANN001
    from worker.message import ButtonMessage
    from worker.sending.client import build_client

    client = build_client(settings)
    began, cpu0 = time.perf_counter(), time.process_time()
    for i in range(count):
        client.send(ButtonMessage.build(phone=f"96659{i:07d}", body_text="Hello", buttons=[{"id": "a", "title": "A"}]), "123456")
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu0
    client.close()
    return count / elapsed, cpu * 1000 / count


def send_loop(env: dict[str, str], ids: list[int], warmup: int, profile: bool) -> tuple[float, float, str]:
    from worker.runtime import Runtime
    from worker.sending.send import Outcome, send_deps, send_message
    from worker.settings import Settings

    runtime = Runtime(Settings.from_env(env))
    deps = send_deps(runtime)
    try:
        for message_id in ids[:warmup]:
            send_message(message_id, deps)
        # CPU time, not wall time: a statement's wait for Postgres is not the worker's cost
        profiler = cProfile.Profile(time.process_time) if profile else None
        began, cpu0 = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        outcomes = [send_message(message_id, deps) for message_id in ids[warmup:]]
        if profiler:
            profiler.disable()
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu0
    finally:
        runtime.close()
    if any(o is not Outcome.SENT for o in outcomes):
        raise SystemExit(f"not every message was sent: {sorted(set(outcomes))}")
    report = ""
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(30)
        report = out.getvalue()
    count = len(ids) - warmup
    return count / elapsed, cpu * 1000 / count, report


def add_contacts(database_url: str) -> None:
    """A contact for every recipient phone, none opted out, half with an open 24-hour window."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO contacts (phone, first_seen_at, last_inbound_at, updated_at) "
            "SELECT phone, now() at time zone 'utc', CASE WHEN id % 2 = 0 THEN now() at time zone 'utc' END, "
            "now() at time zone 'utc' FROM messages ON CONFLICT DO NOTHING"))
    engine.dispose()
def add_sent_hook(env: dict[str, str]) -> None:
    from worker.hooks.service import add_endpoint
    from worker.runtime import Runtime
    from worker.settings import Secret, Settings

    runtime = Runtime(Settings.from_env(env))
    try:
        with runtime.session_factory.begin() as session:
            add_endpoint(session, "http://127.0.0.1:9/hooks", "message.sent",
                         settings=runtime.settings.replace(hooks_signing_key=Secret("bench" * 8),
                                                           hooks_allowed_hosts=frozenset({"127.0.0.1"})))
    finally:
        runtime.close()


def outbox_rows(database_url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM hook_outbox WHERE event_type = 'message.sent'")).scalar_one()
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="cProfile the timed loop (slows it down)")
    parser.add_argument("--with-contacts", action="store_true",
                        help="a contact row per recipient (as an import makes them), so the consent gate and the "
                             "contact's last-sent stamp do real work")
    parser.add_argument("--hook", action="store_true", help="an outbound hook subscribed to message.sent exists")
    args = parser.parse_args()
    print(f"send loop: {args.messages} messages, one thread, no Celery{', a message.sent hook' if args.hook else ''}; "
          f"{load_line()}")
    with private_redis() as broker_url, scratch_postgres("loop") as database_url, sandbox(0.0) as sandbox_url:
        from worker.settings import Settings

        env = stack_env(database_url=database_url, broker_url=broker_url, sandbox_url=sandbox_url, REDIS_URL=broker_url,
                        **UNTHROTTLED)
        if args.hook:
            add_sent_hook(env)
        base_rate, base_cpu = client_loop(Settings.from_env(env), args.messages)
        print(f"  baseline: client loop (sign + POST + parse only): {base_rate:,.0f} msg/s, {base_cpu:.2f} ms CPU/msg")
        ids = queued_message_ids(database_url, args.warmup + args.messages)
        if args.with_contacts:
            add_contacts(database_url)
        rate, cpu, report = send_loop(env, ids, args.warmup, args.profile)
        print(f"  buttoncast send_message loop: {rate:,.0f} msg/s, {cpu:.2f} ms CPU/msg "
              f"(the database and limiter add {cpu - base_cpu:.2f} ms)")
        if args.hook:
            print(f"  outbox rows written: {outbox_rows(database_url):,} (one per message sent)")
    print(ratio_line("send path alone", rate, base_rate, "msg/s", "none; shows what the database and limiter add"))
    if report:
        print(report)
    print(f"after: {load_line()}")


if __name__ == "__main__":
    main()
