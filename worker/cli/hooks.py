"""`buttoncast hooks add|list|remove|redeliver`: parse, call worker.hooks.service, print."""

from __future__ import annotations

import click

from worker.cli.common import fail, friendly_errors, load_runtime
from worker.hooks import service
from worker.hooks.events import EVENT_NAMES


@click.group("hooks")
def hooks_group() -> None:
    """Outbound event webhooks to your applications (signed; retried for HOOKS_RETRY_MAX_S)."""


@hooks_group.command("add")
@click.argument("url")
@click.option("--events", required=True, help=f"Comma-separated: {','.join(EVENT_NAMES)}")
@friendly_errors
def hooks_add(url: str, events: str) -> None:
    """Add an endpoint. Its signing secret is printed once, alone on the last line of stdout.

    URL is https:// to a public address; loopback, private, link-local and reserved targets are
    refused (exit 2) unless their host is named in HOOKS_ALLOWED_HOSTS."""
    runtime = load_runtime()
    endpoint, secret = service.add_hook(runtime, url, events, actor=None)
    click.echo(f"hook endpoint {endpoint.id}: {endpoint.url}")
    click.echo(f"events: {','.join(endpoint.events)}")
    click.echo("signing secret (shown only now; verify Buttoncast-Signature with it, see docs/hooks.md):", err=True)
    click.echo(secret.reveal())


@hooks_group.command("list")
@friendly_errors
def hooks_list() -> None:
    """Every endpoint: its events, and its pending / delivered / dead-lettered deliveries."""
    runtime = load_runtime()
    with runtime.read_sessions() as session:
        endpoints = service.list_endpoints(session)
    if not endpoints:
        click.echo("no hook endpoints (add one with `buttoncast hooks add URL --events ...`)", err=True)
    for e in endpoints:
        click.echo(f"{e.id}  {e.url}\n"
                   f"  events:     {','.join(e.events)}\n"
                   f"  pending:    {e.pending}\n"
                   f"  delivered:  {e.delivered}\n"
                   f"  dead:       {e.dead}" + (f"\n  last error: {e.last_error}" if e.last_error else ""))


@hooks_group.command("remove")
@click.argument("endpoint_id", type=int)
@friendly_errors
def hooks_remove(endpoint_id: int) -> None:
    """Remove an endpoint and the events not yet delivered to it."""
    runtime = load_runtime()
    try:
        service.remove_hook(runtime, endpoint_id, actor=None)
    except service.HookNotFound as exc:
        fail(str(exc), code=1)
    click.echo(f"hook endpoint {endpoint_id} removed")


@hooks_group.command("redeliver")
@click.argument("event_id", required=False)
@click.option("--endpoint", "endpoint_id", type=int, default=None,
              help="Only to this endpoint; without EVENT_ID: all of its dead-lettered events.")
@friendly_errors
def hooks_redeliver(event_id: str | None, endpoint_id: int | None) -> None:
    """Deliver EVENT_ID again (same id, same body), or every dead-lettered event of --endpoint."""
    runtime = load_runtime()
    try:
        count = service.redeliver_hooks(runtime, event_id=event_id, endpoint_id=endpoint_id, actor=None)
    except service.HookNotFound as exc:
        fail(str(exc), code=1)
    click.echo(f"{count} deliver{'y' if count == 1 else 'ies'} due now")
