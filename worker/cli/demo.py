"""`buttoncast demo`: the whole loop on this machine, with nothing to configure and nothing left running.

It starts the Awal sandbox and the webhook receiver in threads, imports the bundled sample campaign
into a fresh SQLite file, sends it in the embedded mode of `buttoncast run` (worker, beat and the
in-memory rate limiter in this process) behind a live progress bar, waits for the delivery and reply
webhooks to settle, and ends with the campaign report. The sandbox fails a few messages late
(131047, 131026, 131050 `failed` webhooks) and has a few recipients reply STOP while the campaign
runs; the demo then tries a follow-up message to everyone who opted out, and shows it held
(`suppressed`, opted_out), and the summary lists the late failures by class. The environment's DATABASE_URL,
CELERY_BROKER_URL and AWAL_* are ignored on purpose: the demo never touches a real database,
broker or vendor account.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

import click

from worker.logs import TextFormatter, configure_logging
from worker.runtime import Runtime, install_runtime
from worker.sandbox import SandboxConfig, SandboxServer
from worker.sandbox.config import DEFAULT_CLIENT_ID, DEFAULT_DOMAIN, DEFAULT_SECRET
from worker.sending.send import send_deps
from worker.settings import Settings

DEMO_DIR_NAME = "buttoncast-demo"
DB_FILE_NAME = "buttoncast.db"
LOG_FILE_NAME = "buttoncast.log"
REPORT_FILE_NAME = "report.csv"
CAMPAIGN_NAME = "Spring offer (demo)"
PHONE_NUMBER_ID = "123456"
WEBHOOK_SECRET = "demo-webhook-secret"
DEMO_CONSOLE_PORT = 8080
DEMO_CONSOLE_EMAIL = "demo@example.com"
FAIL_PHONE_PREFIX = "96659990"         # valid numbers (they pass import) that the sandbox answers 400 invalid_phone_number
TAP_SHARE = 0.3                        # share of read messages whose recipient taps a button
DELIVERED_AFTER_S = 0.3
READ_AFTER_S = 0.8
SANDBOX_SEED = 2026                    # the same taps on every run
#: shares of accepted messages the sandbox fails late, by vendor code (worker.failures)
LATE_FAIL_RATES = {"131047": 0.03, "131026": 0.02, "131050": 0.02}
STOP_REPLY_RATE = 0.02                 # share of delivered messages whose recipient replies STOP
FOLLOW_UP = {"body_text": "Your order has shipped", "buttons": [{"id": "track", "title": "Track it"}]}
OPT_OUT_LINES_MAX = 3                  # opt-outs listed one by one; the rest are counted
WORKER_THREADS = 8
PROGRESS_REFRESH_S = 0.2
FUNNEL_SETTLE_MAX_S = 8.0              # wait at most this long for the last receipts after sending
FUNNEL_QUIET_S = 1.0                   # ...and stop once the funnel has not moved for this long
RECEIVER_THREADS = 8                   # fewer make receipts queue up and slow the whole process
RECEIVER_STOP_TIMEOUT_S = 5.0
MEMORY_POLLING_INTERVAL_S = 0.05
CELERY_ENV_OVERRIDES = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
#: Fast enough to finish in seconds, and the same settings a real `buttoncast run` reads.
DEMO_SETTINGS = {
    "AWAL_RATE_LIMIT": "200/s",
    "AWAL_RATE_BURST": "20",
    "DISPATCH_INTERVAL_S": "0.5",
    "SWEEP_INTERVAL_S": "2",
    "SEND_READ_TIMEOUT_S": "5",
    "METRICS_PORT": "0",
}


def demo_settings(db_path: Path, sandbox_url: str) -> Settings:
    """Embedded settings (SQLite file, in-memory broker) aimed at the sandbox, never at the environment."""
    return Settings.from_env({
        "DATABASE_URL": f"sqlite:///{db_path}",
        "AWAL_BASE_URL": sandbox_url,
        "AWAL_CLIENT_ID": DEFAULT_CLIENT_ID,
        "AWAL_DOMAIN": DEFAULT_DOMAIN,
        "AWAL_HMAC_SECRET": DEFAULT_SECRET,
        "AWAL_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "AWAL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        **DEMO_SETTINGS,
    })


def sample_file(name: str) -> Path:
    """A file of the bundled sample campaign (scheduler/data)."""
    return Path(str(resources.files("scheduler") / "data" / name))


class WebhookReceiver:
    """The `buttoncast webhooks` WSGI app under waitress, in a thread, on a free local port."""

    def __init__(self, runtime: Runtime) -> None:
        from waitress.server import create_server

        from worker.contacts.service import ConsentRules
        from worker.webhooks import create_app
        from worker.webhooks.breaker import LatePolicy

        settings = runtime.settings
        app = create_app(session_factory=runtime.session_factory, webhook_secret=settings.awal_webhook_secret.reveal(),
                         path=settings.webhook_path, consent=ConsentRules.from_settings(settings),
                         late=LatePolicy.from_settings(settings))
        self._server = create_server(app, host="127.0.0.1", port=0, threads=16, ident="buttoncast-demo")
        self.url = f"http://127.0.0.1:{self._server.effective_port}{settings.webhook_path}"
        self._thread = threading.Thread(target=self._server.run, name="webhook-receiver", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self) -> None:
        # The loop ends once its listening socket and every connection are closed; the sandbox,
        # its only client, is stopped first so its keep-alive connections are gone.
        self._server.close()
        self._thread.join(RECEIVER_STOP_TIMEOUT_S)
        self._server.task_dispatcher.shutdown()


@dataclass
class DemoStack:
    runtime: Runtime
    sandbox: SandboxServer
    receiver: WebhookReceiver

    def stop(self) -> None:
        self.sandbox.stop()
        self.receiver.stop()
        self.runtime.close()


def start_stack(workdir: Path) -> DemoStack:
    """Sandbox, then the runtime and its fresh database, then the receiver the sandbox reports to."""
    from worker.celery_app import create_celery
    from worker.cli.common import ensure_schema

    db_path = workdir / DB_FILE_NAME
    for stale in (db_path, db_path.with_name(DB_FILE_NAME + "-wal"), db_path.with_name(DB_FILE_NAME + "-shm")):
        stale.unlink(missing_ok=True)
    sandbox = SandboxServer(SandboxConfig(
        fail_phone_prefixes=(FAIL_PHONE_PREFIX,), delivered_after_s=DELIVERED_AFTER_S, read_after_s=READ_AFTER_S,
        tap_share=TAP_SHARE, seed=SANDBOX_SEED, phone_number_ids=(PHONE_NUMBER_ID,),
        late_fail_rates=LATE_FAIL_RATES, stop_reply_rate=STOP_REPLY_RATE,
    ))
    settings = demo_settings(db_path, sandbox.start_in_thread())
    # A Celery app of our own: the module-level one follows the environment's broker and intervals.
    runtime = Runtime(settings, celery=create_celery(settings))
    runtime.celery.conf.worker_redirect_stdouts = False  # keep stdout for the progress bar
    # kombu's in-memory channel sleeps this long whenever the prefetch window is full (default 1 s,
    # which caps the embedded worker near prefetch x concurrency messages per second).
    runtime.celery.conf.broker_transport_options = {
        **runtime.celery.conf.broker_transport_options, "polling_interval": MEMORY_POLLING_INTERVAL_S,
    }
    try:
        ensure_schema(runtime)
        receiver = WebhookReceiver(runtime)
    except BaseException:
        sandbox.stop()
        raise
    # Set before the first send, while nothing else touches the sandbox's config.
    sandbox.config.update({"webhook_url": receiver.start(), "webhook_secret": WEBHOOK_SECRET})
    return DemoStack(runtime, sandbox, receiver)


def create_sample_campaign(runtime: Runtime, err: IO[str]) -> int:
    """Import the bundled CSV; rejected rows are reported with their line numbers on standard error."""
    from scheduler.campaigns import create_from_options

    template = json.loads(sample_file("message.json").read_text(encoding="utf-8"))
    recipients = sample_file("recipients.csv")
    campaign, result = create_from_options(
        runtime, recipients, name=CAMPAIGN_NAME, phone_number_id=PHONE_NUMBER_ID, template=template,
    )
    campaign_id = campaign.id
    print(f"imported {result.imported} recipient(s) from {recipients.name}; rejected {result.rejected} row(s); "
          f"skipped {result.duplicates} duplicate(s)", file=err)
    for problem in result.problems:
        print(f"  rejected {problem}", file=err)
    for problem in result.duplicate_rows:
        print(f"  duplicate {problem}", file=err)
    return campaign_id


def _counts(runtime: Runtime, campaign_id: int) -> dict[str, int]:
    from scheduler.campaigns import status_counts

    with runtime.read_sessions() as session:
        return status_counts(session, campaign_id)


def show_progress(runtime: Runtime, campaign_id: int, done: threading.Event, out: IO[str]) -> None:
    """A live bar of finished messages (sent, failed, unknown) until `done` is set."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(file=out), refresh_per_second=10) as bar:
        task = bar.add_task(f"campaign {campaign_id}", total=None, detail="")
        while True:
            finished = done.wait(PROGRESS_REFRESH_S)
            try:
                c = _counts(runtime, campaign_id)
            except Exception:  # noqa: BLE001 - SQLite busy for a moment: the next refresh shows it
                continue
            settled = c["sent"] + c["failed"] + c["unknown"] + c["rejected"] + c["cancelled"]
            detail = f"sent {c['sent']}  failed {c['failed']}  unknown {c['unknown']}"
            bar.update(task, total=sum(c.values()) or None, completed=settled, detail=detail)
            if finished:
                return


def settle_funnel(runtime: Runtime, campaign_id: int) -> None:
    """Let the last delivery/read/reply webhooks land: until every sent message was read or failed
    late and the funnel was still for FUNNEL_QUIET_S, or FUNNEL_SETTLE_MAX_S passed."""
    from scheduler.report import funnel, late_failures
    from scheduler.sweeper import match_webhook_events

    deadline = time.monotonic() + FUNNEL_SETTLE_MAX_S
    last, still_since = None, time.monotonic()
    while time.monotonic() < deadline:
        match_webhook_events(runtime)  # receipts that arrived before their message was recorded
        with runtime.read_sessions() as session:
            f = funnel(session, campaign_id)
            late = sum(late_failures(session, campaign_id).values())
        now = (f.sent, f.delivered, f.read, f.replied, late)
        if now != last:
            last, still_since = now, time.monotonic()
        elif f.read + late >= f.sent and time.monotonic() - still_since >= FUNNEL_QUIET_S:
            return
        time.sleep(0.2)


@dataclass(frozen=True)
class HeldFollowUp:
    """A person who opted out while the campaign ran, and what became of the next message to them."""

    phone: str
    source: str          # keyword, button, vendor_code (worker.contacts.service)
    reason: str | None
    message_id: int
    status: str
    held_because: str | None


def hold_follow_ups(runtime: Runtime, campaign_id: int) -> list[HeldFollowUp]:
    """Everyone who opted out since the campaign started gets a follow-up ad-hoc message, sent the
    way a worker sends it (worker.sending.send.send_message): the gate at claim time holds each one."""
    from scheduler.report import opt_outs_since_start
    from worker.sending.enqueue import enqueue_message
    from worker.sending.history import message_history
    from worker.sending.send import send_message

    with runtime.read_sessions() as session:
        opted = opt_outs_since_start(session, campaign_id)
    held = []
    deps = send_deps(runtime)
    for phone, source, reason in opted:
        message_id = enqueue_message(phone=phone, runtime=runtime, **FOLLOW_UP)
        send_message(message_id, deps)
        with runtime.read_sessions() as session:
            message = message_history(session, message_id).message
        status, why = message.status, message.last_error_code
        held.append(HeldFollowUp(phone, source, reason, message_id, status, why))
    return held


def describe_follow_ups(held: list[HeldFollowUp]) -> list[str]:
    if not held:
        return ["opt-outs while the campaign ran: none"]
    by_source: dict[str, int] = {}
    for h in held:
        by_source[h.source] = by_source.get(h.source, 0) + 1
    kept = sum(1 for h in held if h.status == "suppressed")
    lines = [f"opt-outs while the campaign ran: {len(held)} (" + ", ".join(f"{k} {n}" for k, n in by_source.items())
             + f"); the next message to each of them: {kept} held as suppressed, {len(held) - kept} not held"]
    for h in held[:OPT_OUT_LINES_MAX]:
        lines.append(f"  {h.phone}: opted out by {h.source} ({h.reason or '-'}); follow-up message {h.message_id}: "
                     f"{h.status} ({h.held_because or '-'})")
    if len(held) > OPT_OUT_LINES_MAX:
        lines.append(f"  ... and {len(held) - OPT_OUT_LINES_MAX} more (buttoncast contacts list --opted-out)")
    return lines


def write_report(runtime: Runtime, campaign_id: int, path: Path) -> list[str]:
    """The full per-recipient CSV at `path`; returns the summary lines of `campaign show`."""
    from scheduler import report

    with runtime.read_sessions() as session:
        with open(path, "w", encoding="utf-8", newline="") as out:
            report.write_csv(report.report_rows(session, campaign_id), out)
        return report.describe(report.progress(session, campaign_id, runtime.settings.rate_limit.per_second))


def _log_to_file(path: Path) -> None:
    """Every outcome line goes to the demo's log file; the terminal gets errors only."""
    configure_logging("text")
    root = logging.getLogger()
    root.handlers[0].setLevel(logging.ERROR)
    to_file = logging.FileHandler(path, mode="w", encoding="utf-8")
    to_file.setFormatter(TextFormatter())
    root.addHandler(to_file)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" while receipts pour in


def _restore_signals() -> None:
    """The Celery worker installed its own handlers; Ctrl-C and SIGTERM mean "stop" again."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_campaign(runtime: Runtime, campaign_id: int, out: IO[str]) -> None:
    """`buttoncast run --until-idle` in this process, with the progress bar drawn from a thread.

    The worker keeps the main thread (Celery installs signal handlers there); it stops itself with
    a warm shutdown once the campaign is completed and nothing is queued.
    """
    from worker.cli.embedded import run_embedded

    install_runtime(runtime)  # the tasks find their collaborators through it
    done = threading.Event()
    bar = threading.Thread(target=show_progress, args=(runtime, campaign_id, done, out), name="demo-progress")
    bar.start()
    try:
        run_embedded(runtime, concurrency=WORKER_THREADS, until_idle=True, loglevel="INFO", quiet=True)
    finally:
        done.set()
        bar.join()
        _restore_signals()


@click.command("demo")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Working directory for the database, log and report (default: ./{DEMO_DIR_NAME}).")
@click.option("--console", "with_console", is_flag=True,
              help="Afterwards, leave the web console running on the demo's data and print its URL and a login (Ctrl-C ends it).")
@click.option("--console-port", type=int, default=DEMO_CONSOLE_PORT, show_default=True, help="Where --console listens (0: a free port).")
def demo_command(workdir: Path | None, with_console: bool, console_port: int) -> None:
    """Send the sample campaign to a local sandbox and show the report: no account, broker or setup needed."""
    started = time.monotonic()
    # Celery lets these environment variables override any app's configured broker and backend;
    # the demo must stay on its in-memory broker whatever the shell exports.
    for name in CELERY_ENV_OVERRIDES:
        os.environ.pop(name, None)
    workdir = (workdir or Path.cwd() / DEMO_DIR_NAME).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out, err = sys.stdout, sys.stderr
    _log_to_file(workdir / LOG_FILE_NAME)
    stack = start_stack(workdir)
    try:
        print(f"sandbox (stand-in for the Awal API) on {stack.runtime.settings.awal_base_url}; "
              f"webhook receiver on {stack.receiver.url}", file=out)
        campaign_id = create_sample_campaign(stack.runtime, err)
        print(f"sending campaign {campaign_id} in embedded mode (worker + beat in this process, "
              f"rate limit {stack.runtime.settings.rate_limit}); phones starting {FAIL_PHONE_PREFIX} "
              "are refused by the sandbox, a few messages fail late (131047, 131026, 131050) and a few "
              "recipients reply STOP", file=out, flush=True)
        run_campaign(stack.runtime, campaign_id, out)
        print("waiting for delivery receipts and button replies...", file=out, flush=True)
        settle_funnel(stack.runtime, campaign_id)
        follow_ups = describe_follow_ups(hold_follow_ups(stack.runtime, campaign_id))
        report_path = workdir / REPORT_FILE_NAME
        summary = write_report(stack.runtime, campaign_id, report_path)
        print("\n".join(follow_ups), file=out)
        print("\n".join(summary), file=out)
        print(f"full report (one row per recipient): {report_path}", file=out)
        print(f"log of every outcome: {workdir / LOG_FILE_NAME}", file=out)
        if with_console:
            serve_console(stack.runtime, console_port, out)
    finally:
        stack.stop()
    print(f"done in {time.monotonic() - started:.1f}s; nothing is left running.", file=out)


def serve_console(runtime: Runtime, port: int, out: IO[str]) -> None:
    """The web console on the demo's database until Ctrl-C, with a fresh admin login printed once.
    Nothing sends any more (the embedded worker has stopped): it is for looking, filtering and downloading."""
    import secrets
    import socket

    import uvicorn

    from worker.access.users import create_user
    from worker.asgi import create_app

    password = secrets.token_urlsafe(12)
    create_user(runtime, email=DEMO_CONSOLE_EMAIL, role="admin", password=password, actor="demo")
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    print(f"console on http://127.0.0.1:{port}/  login {DEMO_CONSOLE_EMAIL}  password {password}  (Ctrl-C to stop)",
          file=out, flush=True)
    uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="warning", server_header=False)
