"""`buttoncast contacts`: consent state and history, operator opt-out/opt-in, suppression lists, export."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime

import click

from worker.cli.common import ensure_schema, fail, friendly_errors, load_runtime
from worker.contacts import service as contacts
from worker.contacts.attributes import AttributeFileError, AttributeImportResult, import_attributes
from worker.contacts.importer import OptOutFileError, import_optouts
from worker.message import normalize_phone
from worker.models import utcnow

ACTOR = "operator"
SUMMARY_DETAIL_ROWS = 20


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else str(value)


@click.group("contacts")
def contacts_group() -> None:
    """Contacts: consent (opt-out / opt-in, by what) and each person's 24-hour window."""


@contacts_group.command("show")
@click.argument("phone")
@friendly_errors
def show_command(phone: str) -> None:
    """Consent state and its history, last inbound message, window open until when, recent messages,
    attributes and tags."""
    runtime = load_runtime()
    number = normalize_phone(phone, default_region=runtime.settings.default_country_code)
    with runtime.read_sessions() as session:
        view = contacts.get_contact(session, number)
    if view is None:
        fail(f"no contact {number}: nothing was ever sent to or received from it", 1)
    now = utcnow()
    state = (f"OPTED OUT since {_fmt(view.opted_out_at)} by {view.opt_out_source}" + (f" ({view.opt_out_note})" if view.opt_out_note else "")
             if view.opted_out else "may be messaged" + (f" (opted back in {_fmt(view.opted_in_at)})" if view.opted_in_at else ""))
    window = (f"open until {_fmt(view.window_open_until)}" if view.window_open(now)
              else f"closed (since {_fmt(view.window_open_until)})" if view.window_open_until else "closed (never wrote to us)")
    lines = [
        f"contact {view.phone}",
        f"  consent:       {state}",
        f"  first seen:    {_fmt(view.first_seen_at)}",
        f"  last inbound:  {_fmt(view.last_inbound_at)}",
        f"  24-hour window: {window}",
        f"  last sent:     {_fmt(view.last_sent_at)}",
        f"  tags:          {', '.join(view.tags) or '(none)'}",
        f"  attributes ({len(view.attributes)}):",
    ]
    width = max((len(name) for name in view.attributes), default=0)
    lines += [f"    {name:<{width}}  {value}" for name, value in sorted(view.attributes.items())] or ["    (none)"]
    lines.append(f"  consent history ({len(view.history)}):")
    lines += [f"    {_fmt(h.at)}  {h.action:<8} by {h.source}" + (f": {h.reason}" if h.reason else "")
              + (f"  ({h.actor})" if h.actor else "") for h in view.history] or ["    (none)"]
    lines.append(f"  recent messages ({len(view.recent_messages)}):")
    lines += [f"    message {m.id}" + (f" campaign {m.campaign_id}" if m.campaign_id else " ad-hoc")
              + f"  {m.status}" + (f" ({m.reason})" if m.reason else "") + f"  created {_fmt(m.created_at)}"
              + (f" sent {_fmt(m.sent_at)}" if m.sent_at else "") for m in view.recent_messages] or ["    (none)"]
    click.echo("\n".join(lines))


@contacts_group.command("optout")
@click.argument("phones", nargs=-1, required=True)
@click.option("--reason", default=None, help="Why (kept with the opt-out and its history).")
@friendly_errors
def optout_command(phones: tuple[str, ...], reason: str | None) -> None:
    """Opt phones out (source operator): their next claim is held, effective when this returns."""
    runtime = load_runtime()
    numbers = [normalize_phone(p, default_region=runtime.settings.default_country_code) for p in phones]
    ensure_schema(runtime)
    changed = contacts.operator_opt_out(runtime, numbers, reason=reason, actor=ACTOR)
    for n in numbers:
        click.echo(f"{n}: {'opted out' if n in changed else 'was already opted out'}")


@contacts_group.command("optin")
@click.argument("phones", nargs=-1, required=True)
@friendly_errors
def optin_command(phones: tuple[str, ...]) -> None:
    """Opt phones back in (source operator)."""
    runtime = load_runtime()
    numbers = [normalize_phone(p, default_region=runtime.settings.default_country_code) for p in phones]
    ensure_schema(runtime)
    changed = contacts.operator_opt_in(runtime, numbers, actor=ACTOR)
    for n in numbers:
        click.echo(f"{n}: {'opted back in' if n in changed else 'was not opted out'}")


@contacts_group.command("import")
@click.option("--optouts", "path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CSV (UTF-8) with a 'phone' column and optionally 'reason': a suppression list.")
@click.option("--attributes", "attributes_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CSV (UTF-8) with a 'phone' column, one column per attribute and optionally 'tags' (';'-separated): "
                   "merged into the contacts (new phones become contacts; opt-outs are never changed).")
@friendly_errors
def import_command(path: str | None, attributes_path: str | None) -> None:
    """Opt out every phone of a suppression list (source import), or merge attributes and tags into
    contacts; either file is streamed in batches, with a report of the rows rejected."""
    if (path is None) == (attributes_path is None):
        fail("give exactly one of --optouts FILE (a suppression list) or --attributes FILE (attributes and tags)", 2)
    runtime = load_runtime()
    ensure_schema(runtime)
    if attributes_path is not None:
        try:
            result = import_attributes(runtime, attributes_path, actor=ACTOR,
                                       default_region=runtime.settings.default_country_code)
        except AttributeFileError as exc:
            fail(str(exc), 2)
        _print_attribute_result(result)
        if result.rejected and not result.rows:
            sys.exit(1)
        return
    try:
        result = import_optouts(runtime, path, actor=ACTOR,
                                default_region=runtime.settings.default_country_code)
    except OptOutFileError as exc:
        fail(str(exc), 2)
    click.echo(f"opted out {result.opted_out} contact(s); {result.already_opted_out} already opted out; "
               f"rejected {result.rejected} row(s)", err=True)
    if result.problems:
        click.echo(f"rejected (first {min(SUMMARY_DETAIL_ROWS, len(result.problems))} of {result.rejected}):", err=True)
        for problem in result.problems[:SUMMARY_DETAIL_ROWS]:
            click.echo(f"  {problem}", err=True)
    if result.rejected and not (result.opted_out or result.already_opted_out):
        sys.exit(1)


def _print_attribute_result(result: AttributeImportResult) -> None:
    click.echo(f"stored attributes from {result.rows} row(s) on {result.contacts} contact(s) ({result.created} new; "
               f"columns: {', '.join(result.columns) or 'none'}); added {result.tags_added} tag(s); "
               f"rejected {result.rejected} row(s)", err=True)
    if result.problems:
        click.echo(f"rejected (first {min(SUMMARY_DETAIL_ROWS, len(result.problems))} of {result.rejected}):", err=True)
        for problem in result.problems[:SUMMARY_DETAIL_ROWS]:
            click.echo(f"  {problem}", err=True)


@contacts_group.command("list")
@click.option("--opted-out", "opted_out", is_flag=True, help="Only contacts who are opted out now.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@friendly_errors
def list_command(opted_out: bool, fmt: str) -> None:
    """Export contacts (streamed, in phone order) for other systems."""
    runtime = load_runtime()
    out = sys.stdout
    with runtime.read_sessions() as session:
        rows = contacts.export_rows(session, opted_out_only=opted_out)
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(contacts.EXPORT_COLUMNS)
            for row in rows:
                writer.writerow(contacts.export_cells(row))
        else:
            count = 0
            out.write("[")
            for row in rows:
                out.write(("\n" if count == 0 else ",\n") + json.dumps(row, ensure_ascii=False))
                count += 1
            out.write("\n]\n" if count else "]\n")
