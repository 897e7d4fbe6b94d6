"""Operating commands: `worker`, `beat`, `run` (embedded), `db upgrade`, `limits`."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from worker import metrics
from worker.cli.common import ensure_schema, fail, friendly_errors, load_runtime
from worker.metrics import serve_metrics
from worker.queues import ALL_QUEUES
from worker.runtime import Runtime
from worker.settings import RateLimit, Settings

EMBEDDED_CONCURRENCY_CAP = 8
#: how long `run` waits for a sandbox on this machine to answer (it may have been started a moment ago)
SANDBOX_PROBE_S = 5.0
#: a local sandbox with no limit of its own: `run` paces at this, the demo's order of speed
UNLIMITED_SANDBOX_RATE = "100/s"


@click.command("worker")
@click.option("--processes", type=int, default=None,
              help="Worker processes (default: WORKER_PROCESSES; 0 = one per core, 1 on SQLite).")
@click.option("--concurrency", type=int, default=None, help="Threads per process (default: WORKER_CONCURRENCY).")
@click.option("--queues", default=",".join(ALL_QUEUES), show_default=True, help="Queues to consume.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--hostname", default=None, help="Celery node name of a single process (default: celery@host).")
@friendly_errors
def worker_command(processes: int | None, concurrency: int | None, queues: str, loglevel: str, hostname: str | None) -> None:
    """Start the workers: one Celery worker process per core (`celery -A worker.celery_app worker
    --pool threads ...` each), supervised (worker/supervisor.py)."""
    runtime = load_runtime()
    runtime.settings.require_awal()
    if runtime.settings.embedded:
        fail("CELERY_BROKER_URL is not set: a separate worker needs a shared broker (use `buttoncast run` for the embedded mode)")
    if processes is not None and processes < 0:
        fail(f"--processes {processes}: must be 0 (one per core) or more")
    from worker.supervisor import Supervisor, process_count

    count = process_count(runtime.settings.worker_processes if processes is None else processes, sqlite=runtime.settings.sqlite)
    threads = concurrency or runtime.settings.worker_concurrency
    if count > 1:
        raise SystemExit(Supervisor(count, lambda i: _child_argv(i, threads, queues, loglevel),
                                    env=lambda i: _child_env(i, runtime.settings.metrics_port)).run())
    if threads != runtime.settings.worker_concurrency:
        # The vendor keep-alive pool is sized from the settings' thread count: keep the two in step.
        from dataclasses import replace

        from worker.runtime import Runtime, install_runtime

        install_runtime(Runtime(replace(runtime.settings, worker_concurrency=threads), celery=runtime.celery))
    serve_worker_metrics(runtime.settings)
    import scheduler.tasks  # noqa: F401
    import worker.sending.tasks  # noqa: F401 - registers the tasks
    from worker.cli.embedded import worker_argv

    runtime.celery.worker_main(worker_argv(threads, tuple(queues.split(",")), loglevel, hostname))


def serve_worker_metrics(settings: Settings) -> None:
    """A worker's /metrics, with the rate it paces to: the dashboard draws sends against these."""
    metrics.RATE_LIMIT_PER_S.set(settings.rate_limit.per_second)
    metrics.RATE_PACE_PER_S.set(settings.pacing_rate.per_second)
    serve_metrics(settings.metrics_port, settings.metrics_host)


def _child_argv(index: int, threads: int, queues: str, loglevel: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "worker.cli", "worker", "--processes", "1", "--concurrency", str(threads),
            "--queues", queues, "--loglevel", loglevel, "--hostname", f"worker{index + 1}@%h"]


def _child_env(index: int, metrics_port: int) -> dict[str, str]:
    """The supervisor's environment; child i serves its /metrics on METRICS_PORT + i (0: none)."""
    import os

    return dict(os.environ, METRICS_PORT=str(metrics_port + index if metrics_port > 0 else 0))


@click.command("beat")
@click.option("--schedule-file", default="celerybeat-schedule", show_default=True, help="Where beat keeps its last-run times.")
@click.option("--loglevel", default="INFO", show_default=True)
@friendly_errors
def beat_command(schedule_file: str, loglevel: str) -> None:
    """Start the one beat scheduler: `celery -A worker.celery_app beat`. Run exactly one."""
    runtime = load_runtime()
    if runtime.settings.embedded:
        fail("CELERY_BROKER_URL is not set: beat needs a shared broker (use `buttoncast run` for the embedded mode)")
    runtime.celery.start(argv=["beat", "--schedule", schedule_file, "--loglevel", loglevel])


@click.command("run")
@click.option("--concurrency", type=int, default=None, help="Worker threads (default: WORKER_CONCURRENCY, at most 8 on SQLite).")
@click.option("--until-idle", is_flag=True, help="Exit once no campaign is running and nothing is queued (for scripts and the demo).")
@friendly_errors
def run_command(concurrency: int | None, until_idle: bool) -> None:
    """Embedded mode: worker, beat and the in-memory rate limiter in this one process."""
    from worker.cli.embedded import run_embedded

    runtime = load_runtime()
    runtime.settings.require_awal()
    settings, source = pace_of(runtime.settings)
    if settings is not runtime.settings:
        from worker.runtime import install_runtime

        runtime = Runtime(settings)
        install_runtime(runtime)
    ensure_schema(runtime)
    serve_worker_metrics(runtime.settings)
    click.echo(how_long_it_takes(runtime, source), err=True)
    threads = concurrency or runtime.settings.worker_concurrency
    if runtime.settings.sqlite:
        threads = min(threads, EMBEDDED_CONCURRENCY_CAP)
    run_embedded(runtime, concurrency=threads, until_idle=until_idle)


def pace_of(settings: Settings) -> tuple[Settings, str]:
    """The settings `run` paces with, and where their rate limit comes from. AWAL_RATE_LIMIT when
    given; else, when AWAL_BASE_URL is a sandbox on this machine, the sandbox's own limit (it says
    so at /_sandbox/limit); else the documented plan's default."""
    from urllib.parse import urlsplit

    from worker.sandbox.client import NotASandbox, sandbox_rate_limit
    from worker.sandbox.config import is_loopback

    default = ", the default AWAL_RATE_LIMIT (the documented plan's): set AWAL_RATE_LIMIT to your account's limit"
    if settings.rate_limit_configured:
        return settings, " (AWAL_RATE_LIMIT)"
    if not settings.awal_base_url or not is_loopback(urlsplit(settings.awal_base_url).hostname):
        return settings, default
    try:
        limit = sandbox_rate_limit(settings.awal_base_url, wait_s=SANDBOX_PROBE_S)
    except NotASandbox:
        return settings, default
    source = (f", the sandbox's own limit (AWAL_RATE_LIMIT is not set and {settings.awal_base_url} is a sandbox)" if limit
              else f": the sandbox at {settings.awal_base_url} has no limit and AWAL_RATE_LIMIT is not set")
    return settings.replace(rate_limit=RateLimit.parse(limit or UNLIMITED_SANDBOX_RATE, "the sandbox's rate limit")), source


def how_long_it_takes(runtime: Runtime, source: str) -> str:
    """One line for the start of `run`: the pace, where it comes from (`source`, as `pace_of` words it),
    and how long what waits takes at that pace (issue 25: 294 messages took 18 minutes, unannounced)."""
    from scheduler.report import queue_depth

    settings = runtime.settings
    per_second = settings.pacing_rate.per_second
    with runtime.read_sessions() as session:
        waiting = sum(queue_depth(session).values())
    pace = f"pacing at {settings.rate_limit}{source}"
    if not waiting:
        return f"run: {pace}; nothing waits to be sent yet (one message every {_about(1 / per_second)})"
    return (f"run: {pace}; {waiting} message(s) wait to be sent: about {_about(waiting / per_second)} at this rate "
            "(longer if a send window or a start time holds some back)")


def _about(seconds: float) -> str:
    """A rough duration: `51 ms`, `3.7 s`, `40 s`, `18 min`, `2 h 5 min`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@friendly_errors
def db_upgrade(revision: str) -> None:
    """Apply Alembic migrations to DATABASE_URL."""
    from worker.db import current_revision, upgrade

    runtime = load_runtime()
    upgrade(runtime.settings.database_url, revision)
    click.echo(f"database at revision {current_revision(runtime.settings.database_url)}", err=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.command("limits")
@friendly_errors
def limits_command() -> None:
    """Per workspace and endpoint: configured limit, what the vendor last reported, any block."""
    import time

    from worker.ratelimit.limits import limit_states

    runtime = load_runtime()
    for st in limit_states(runtime):
        scope = st.scope
        now = st.as_of or time.time()  # the limiter's clock (Redis server time when shared)
        blocked = f"blocked until {_when(st.blocked_until)}" if st.blocked_until and st.blocked_until > now else "not blocked"
        click.echo(
            f"{scope}\n"
            f"  configured limit:  {runtime.settings.rate_limit} (paced at {st.limit}, burst {st.burst})\n"
            f"  vendor limit:      {st.vendor_limit if st.vendor_limit is not None else '-'}\n"
            f"  vendor remaining:  {st.vendor_remaining if st.vendor_remaining is not None else '- (no response seen yet)'}\n"
            f"  vendor reset:      {_when(st.vendor_reset_at)}\n"
            f"  sending:           {blocked}\n"
            f"  next free slot:    {_when(st.next_free_at) if st.next_free_at and st.next_free_at > now else 'now'}"
        )
