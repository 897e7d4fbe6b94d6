"""`buttoncast segment create|count|list|show|export|delete`: saved audiences as rules
(worker.contacts.segments). What a script captures (a new id, a count, the CSV) goes to standard
output; everything else to standard error.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import sys
from datetime import datetime
from typing import Any, Callable, Iterator, TextIO, TypeVar

import click

from worker.cli.common import ensure_schema, fail, friendly_errors, load_runtime
from worker.contacts import segments
from worker.contacts.service import csv_cell
from worker.errors import FieldProblem, MessageInvalid

F = TypeVar("F", bound=Callable[..., Any])
ACTOR = "operator"
RULES_HELP = "A JSON file of segment rules (see the README, 'Segments')."


def segment_errors(func: F) -> F:
    """A missing segment is a refusal (exit 1); bad input is worded by friendly_errors (exit 2)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except segments.SegmentNotFound as exc:
            fail(str(exc), 1)

    return friendly_errors(wrapper)  # type: ignore[return-value]


def _load_rules(path: str) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise MessageInvalid([FieldProblem("--rules", f"{path} is not valid JSON: {where}: {exc.msg}")]) from None
    except UnicodeDecodeError:
        raise MessageInvalid([FieldProblem("--rules", f"{path} is not UTF-8 text")]) from None


def _fmt(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group("segment")
def segment_group() -> None:
    """Segments: saved audiences written as rules, counted live (opted-out contacts are never members)."""


@segment_group.command("create")
@click.option("--name", required=True, help="A unique name, 1 to 200 characters.")
@click.option("--rules", "rules_path", required=True, type=click.Path(exists=True, dir_okay=False), help=RULES_HELP)
@segment_errors
def create_command(name: str, rules_path: str) -> None:
    """Save a segment. Its id is printed alone on the last line of standard output."""
    runtime = load_runtime()
    ensure_schema(runtime)
    segment = segments.create_segment(runtime, name=name, rules=_load_rules(rules_path), actor=ACTOR)
    with runtime.read_sessions() as session:
        shown = segments.view(session, segment.id)
    click.echo(f"segment {shown.id}: {shown.name}", err=True)
    click.echo(f"  rules:   {shown.description}", err=True)
    click.echo(f"  members: {shown.count}", err=True)
    click.echo(shown.id)


@segment_group.command("count")
@click.argument("segment_id", type=int, required=False)
@click.option("--rules", "rules_path", type=click.Path(exists=True, dir_okay=False),
              help="Count unsaved rules from this JSON file instead of a saved segment.")
@segment_errors
def count_command(segment_id: int | None, rules_path: str | None) -> None:
    """Members now of segment SEGMENT_ID (or of --rules FILE), alone on the last line."""
    if (segment_id is None) == (rules_path is None):
        fail("give a segment id or --rules FILE (one of them)", 2)
    runtime = load_runtime()
    with runtime.read_sessions() as session:
        rules = segments.get_segment(session, segment_id).rules if segment_id is not None else _load_rules(rules_path)
        click.echo(f"{segments.describe(session, rules)}", err=True)
        click.echo(segments.count(session, rules))


@segment_group.command("list")
@segment_errors
def list_command() -> None:
    """Every segment: id, name and its rules in words (counts: `segment count ID`)."""
    runtime = load_runtime()
    with runtime.read_sessions() as session:
        shown = [segments.view(session, s, counted=False) for s in segments.list_segments(session)]
    if not shown:
        click.echo("no segments (create one with `buttoncast segment create --name N --rules FILE`)", err=True)
    for s in shown:
        click.echo(f"{s.id}  {s.name}\n  rules: {s.description}")


@segment_group.command("show")
@click.argument("segment_id", type=int)
@segment_errors
def show_command(segment_id: int) -> None:
    """The rules in words, the members now and the first 10 of them."""
    runtime = load_runtime()
    with runtime.read_sessions() as session:
        s = segments.view(session, segment_id)
        sample = segments.sample(session, s.rules) if s.problem is None else []
    lines = [f"segment {s.id}: {s.name}",
             f"  rules:    {s.description}",
             f"  members:  {s.count if s.problem is None else 'cannot be counted: ' + s.problem}"
             + (" (opted-out contacts are never members)" if s.problem is None else ""),
             f"  created:  {_fmt(s.created_at)}" + (f" by {s.created_by}" if s.created_by else ""),
             f"  updated:  {_fmt(s.updated_at)}",
             f"  sample ({len(sample)} of {s.count or 0}):"]
    lines += [(f"    {phone}  " + ", ".join(f"{k}={v}" for k, v in sorted(attributes.items()))).rstrip()
              for phone, attributes in sample] or ["    (none)"]
    click.echo("\n".join(lines))


@contextlib.contextmanager
def _opened(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as fh:
        yield fh


@segment_group.command("export")
@click.argument("segment_id", type=int)
@click.option("--output", "output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the CSV to this file (default: standard output).")
@segment_errors
def export_command(segment_id: int, output: str | None) -> None:
    """The members as CSV (streamed, phone order): phone, one column per attribute, tags (';'-joined)."""
    runtime = load_runtime()
    with runtime.read_sessions() as session:
        rules = segments.get_segment(session, segment_id).rules
        names = segments.attribute_names(session, rules)
        exported = 0
        with _opened(output) as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["phone", *names, "tags"])
            for phone, attributes, tags in segments.export_rows(session, rules):
                writer.writerow([phone, *(csv_cell(attributes.get(n, "")) for n in names), csv_cell(";".join(tags))])
                exported += 1
    click.echo(f"exported {exported} member(s) of segment {segment_id}" + (f" to {output}" if output else ""), err=True)


@segment_group.command("delete")
@click.argument("segment_id", type=int)
@segment_errors
def delete_command(segment_id: int) -> None:
    """Delete a segment (refused while another segment uses it); a live series targeting it is paused."""
    runtime = load_runtime()
    paused = segments.delete_segment(runtime, segment_id, actor=ACTOR)
    click.echo(f"segment {segment_id} deleted")
    for campaign_id in paused:
        click.echo(f"paused series campaign {campaign_id}: its segment was deleted", err=True)
