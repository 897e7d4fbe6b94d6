"""`buttoncast prune`: delete history older than the retention period (issue 12 item 15).

Parses the options and calls scheduler.retention.prune; the rules live there.
"""

from __future__ import annotations

import re
from datetime import timedelta

import click

from scheduler.retention import TABLES, TRAIL_TABLES, prune, prune_trails
from worker.cli.common import ensure_schema, friendly_errors, load_runtime

_AGE_RE = re.compile(r"^\s*(\d+)\s*(d|h|m)?\s*$", re.I)
_UNIT = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, or a bare number of days."""
    match = _AGE_RE.match(text or "")
    if not match or int(match.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not an age; write e.g. 30d, 12h or 90m (more than 0)")
    return timedelta(**{_UNIT[(match.group(2) or "d").lower()]: int(match.group(1))})


@click.command("prune")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="e.g. 30d, 12h (default: RETENTION_DAYS days)")
@click.option("--dry-run", is_flag=True, help="count what would be deleted; delete nothing")
@friendly_errors
def prune_command(older_than: str | None, dry_run: bool) -> None:
    """Delete attempts, message_events and webhook_events older than AGE (messages are kept); and the
    audit and consent trails past AUDIT_RETENTION_DAYS and CONSENT_HISTORY_RETENTION_DAYS."""
    given_age = parse_age(older_than) if older_than is not None else None
    runtime = load_runtime()
    settings = runtime.settings
    ensure_schema(runtime)
    trails = prune_trails(runtime, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"trails (AUDIT_RETENTION_DAYS={settings.audit_retention_days}, "
               f"CONSENT_HISTORY_RETENTION_DAYS={settings.consent_history_retention_days}; 0 keeps):")
    for table in TRAIL_TABLES:
        click.echo(f"  {table}: {verb} {trails[table]}")
    if older_than is None and settings.retention_days == 0:
        click.echo("RETENTION_DAYS=0: history is kept for ever; pass --older-than to prune anyway")
        return
    age = given_age or timedelta(days=settings.retention_days)
    report = prune(runtime, older_than=age, dry_run=dry_run,
                   match_window_s=settings.webhook_match_window_s)
    click.echo(f"rows older than {report.cutoff.isoformat(timespec='seconds')}:")
    for table in TABLES:
        click.echo(f"  {table}: {verb} {report.deleted[table]}")
