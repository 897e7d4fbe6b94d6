"""`buttoncast retry`: requeue failed (or, knowingly, unknown) messages; sent ones never.

Prints how many messages it will requeue and why (grouped by last error code), then requeues them
(unless --dry-run). Retrying `unknown` messages can deliver duplicates, so it needs --yes, or a
yes at the prompt when run from a terminal. `--reason CLASS` resends late failures of that class
(worker.failures: sent, then a `failed` status webhook; no duplicate risk); `opted_out` and
`undeliverable` need --force. Exit codes: 0 done (also when nothing matched),
1 refused (a sent message, a cancelled campaign, no confirmation), 2 bad input.
"""

from __future__ import annotations

import sys
from datetime import datetime

import click

from scheduler.retry import DUPLICATE_WARNING, RetryPlan, RetryRefused, RetrySelection, plan_retry, retry_messages
from worker.cli.common import fail, friendly_errors, load_runtime
from worker.failures import FailureClass
from worker.status import MessageStatus


def _parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"--since {text!r} is not an ISO 8601 time; give e.g. 2026-12-01T09:00:00+03:00", 2)
    if value.tzinfo is None:
        fail(f"--since {text!r} has no UTC offset; give e.g. 2026-12-01T09:00:00+03:00", 2)
    return value


def _print_plan(plan: RetryPlan, dry_run: bool) -> None:
    verb = "would requeue" if dry_run else "will requeue"
    click.echo(f"{verb} {plan.total} message(s) ({plan.selection.describe()})")
    label = "vendor code" if plan.selection.reason is not None else "last error"
    for code, count in plan.by_error_code.items():
        click.echo(f"  {count:>8}  {label} {code}")
    if plan.opted_out:
        click.echo(f"held back {plan.opted_out} message(s) to opted-out contacts (requeued only after they opt back in)")
    note = plan.campaign_note()
    if note:
        click.echo(f"note: {note}")


def _confirm_duplicates(plan: RetryPlan, yes: bool) -> None:
    click.echo(f"warning: {plan.unknown} of them are unknown: {DUPLICATE_WARNING}", err=True)
    if yes:
        return
    if sys.stdin.isatty() and click.confirm("requeue them anyway?", default=False, err=True):
        return
    fail("not confirmed; nothing requeued (pass --yes to retry unknown messages knowingly)", 1)


@click.command("retry")
@click.option("--campaign", "campaign_id", type=int, default=None, help="Retry this campaign's messages (needs --status).")
@click.option("--status", type=click.Choice([s.value for s in (MessageStatus.FAILED, MessageStatus.UNKNOWN, MessageStatus.SUPPRESSED)]),
              default=None, help="Which messages: failed, unknown (duplicates possible), or suppressed (never "
                                 "to a contact still opted out).")
@click.option("--error-code", default=None, help="Only messages whose last error code is this.")
@click.option("--since", default=None, help="Only messages that ended at or after this time (ISO 8601 with offset).")
@click.option("--message", "message_id", type=int, default=None, help="Retry this one message (failed or unknown).")
@click.option("--reason", type=click.Choice([c.value for c in FailureClass]), default=None,
              help="Resend late failures of this class (sent, then failed by webhook); instead of --status.")
@click.option("--force", is_flag=True, help="Allow --reason opted_out or undeliverable.")
@click.option("--dry-run", is_flag=True, help="Print what would be requeued; change nothing.")
@click.option("--yes", is_flag=True, help="Confirm retrying unknown messages although duplicates are possible.")
@friendly_errors
def retry_command(campaign_id: int | None, status: str | None, error_code: str | None, since: str | None,
                  message_id: int | None, reason: str | None, force: bool, dry_run: bool, yes: bool) -> None:
    """Requeue failed, unknown or suppressed messages, or resend late failures by class; the
    dispatcher sends them under the same rate limit."""
    if reason is not None and (status is not None or error_code is not None):
        fail("--reason selects late failures by class; do not combine it with --status or --error-code", 2)
    if campaign_id is not None and status is None and reason is None:
        fail("--campaign needs --status failed, --status unknown, --status suppressed or --reason CLASS", 2)
    if message_id is not None and (campaign_id is not None or status is not None):
        fail("--message retries one message; do not combine it with --campaign or --status", 2)
    try:
        selection = RetrySelection(
            campaign_id=campaign_id, status=MessageStatus(status) if status else None,
            error_code=error_code, since=_parse_since(since), message_id=message_id,
            reason=FailureClass(reason) if reason else None, force=force,
        )
    except RetryRefused as exc:
        fail(str(exc), 2)
    runtime = load_runtime()
    try:
        with runtime.read_sessions() as session:
            plan = plan_retry(session, selection)
    except RetryRefused as exc:
        fail(str(exc), 1)
    _print_plan(plan, dry_run)
    if dry_run or plan.total == 0:
        return
    if plan.risks_duplicates:
        _confirm_duplicates(plan, yes)
    _, result = retry_messages(runtime, selection, accept_duplicates=True)   # the duplicates were confirmed above
    if result is None:   # everything it matched changed status since the plan above
        click.echo("requeued 0 message(s): none matches any more")
        return
    click.echo(f"requeued {result.requeued} message(s); the dispatcher sends them under the rate limit")
    if result.left_alone:
        click.echo(f"left alone {result.left_alone} message(s) that changed status meanwhile")
    if result.campaign_reopened:
        click.echo(f"campaign {plan.campaign_id} reopened: completed -> running")
