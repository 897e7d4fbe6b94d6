"""`buttoncast webhooks`: serve the webhook receiver with waitress, limits applied (worker/webhooks/server.py).

The first line on stdout is the endpoint URL (flushed), so a parent process (bench, demo) can read
it; with `--port 0` the port is a free one. The webhook secret is never printed.
"""

from __future__ import annotations

import logging
import sys

import click
import sqlalchemy as sa

from worker.cli.common import ensure_schema, fail, friendly_errors, load_runtime
from worker.contacts.service import ConsentRules
from worker.metrics import serve_metrics
from worker.runtime import Runtime
from worker.webhooks.app import create_app
from worker.webhooks.breaker import LatePolicy
from worker.webhooks.server import ReceiverLimits, create_receiver_server

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
DEFAULT_THREADS = 8


@click.command("webhooks")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="0.0.0.0 to accept from other hosts")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="0 = a free port")
@click.option("--threads", type=click.IntRange(1, 256), default=DEFAULT_THREADS, show_default=True,
              help="request threads (each may hold one database connection)")
@friendly_errors
def webhooks_command(host: str, port: int, threads: int) -> None:
    """Receive the vendor's webhooks: delivery receipts and button replies (needs AWAL_WEBHOOK_SECRET)."""
    runtime = load_runtime()
    # waitress logs a warning for every request that waits for a thread: a flood in any burst
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    settings = runtime.settings
    if not settings.awal_webhook_secret.reveal():
        fail("AWAL_WEBHOOK_SECRET is not set: the receiver could not verify the vendor's signatures, so it will not start")
    ensure_schema(runtime)
    _require_table(runtime)
    app = create_app(session_factory=runtime.session_factory, webhook_secret=settings.awal_webhook_secret.reveal(),
                     path=settings.webhook_path, max_body_bytes=settings.webhook_max_body_bytes,
                     consent=ConsentRules.from_settings(settings), late=LatePolicy.from_settings(settings))
    serve_metrics(settings.webhook_metrics_port, settings.metrics_host, setting="WEBHOOK_METRICS_PORT")  # late failures, pauses
    server = create_receiver_server(app, host=host, port=port, threads=threads,
                                    limits=ReceiverLimits.from_settings(settings))
    url = f"http://{host}:{server.effective_port}{settings.webhook_path}"
    click.echo(url)
    sys.stdout.flush()
    click.echo(f"webhook receiver on {url} ({threads} threads); health at /healthz", err=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        runtime.close()


def _require_table(runtime: Runtime) -> None:
    """Refuse to start against a database without webhook_events: every event would get a 503."""
    try:
        present = sa.inspect(runtime.engine).has_table("webhook_events")
    except sa.exc.SQLAlchemyError as exc:
        fail(f"database {runtime.engine.url.render_as_string(hide_password=True)} is not reachable: {type(exc).__name__}")
    if not present:
        fail("table webhook_events is missing: run `buttoncast db upgrade` first")
