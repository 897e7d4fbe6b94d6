"""`buttoncast campaign ...`: create (with its CSV or a segment; one message or an A/B test of
2-3 variants), schedule, pause, resume, cancel, decide, list, show, report, test, follow-up.
Summaries and errors go to standard error; what a script captures (a new id, a report) goes to
standard output.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Iterator, TypeVar

import click

from scheduler import campaigns, experiments, report
from scheduler.campaigns import parse_at  # noqa: F401 - the CLI's name for it
from scheduler.importer import ImportRefused, ImportResult, RecipientsFileError, RowProblem
from worker.cli.common import ensure_schema, fail, friendly_errors, load_runtime
from worker.contacts.attributes import AttributeImportResult
from worker.errors import ButtoncastError, ConfigError, FieldProblem, MessageInvalid
from worker.models import Campaign
from worker.phone import parse_default_country
from worker.runtime import Runtime
from worker.status import CampaignStatus
from worker.window import WindowInvalid

F = TypeVar("F", bound=Callable[..., Any])
ACTOR = "operator"   # who the audit trail names for a change made with this CLI
SUMMARY_DETAIL_ROWS = 20
WATCH_REFRESH_S = 1.0
ENDED = (CampaignStatus.COMPLETED.value, CampaignStatus.CANCELLED.value)


def campaign_errors(func: F) -> F:
    """Our own errors as one line: exit 2 for input to fix, 1 for a refusal (not found, illegal
    transition, nothing importable)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ImportRefused as exc:
            _print_problems("rejected", exc.result.problems, exc.result.rejected)
            fail(str(exc), 1)
        except (ConfigError, MessageInvalid):
            raise  # friendly_errors words these
        except (RecipientsFileError, WindowInvalid) as exc:
            fail(str(exc), 2)  # fix the input and run again
        except ButtoncastError as exc:
            fail(str(exc), 1)  # refused: not found, illegal transition

    return friendly_errors(wrapper)  # type: ignore[return-value]


def _load_message(path: str, option: str = "--message") -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise MessageInvalid([FieldProblem(option, f"{path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}")]) from None
    except UnicodeDecodeError:
        raise MessageInvalid([FieldProblem(option, f"{path} is not UTF-8 text")]) from None
    if not isinstance(data, dict):
        raise MessageInvalid([FieldProblem(option, f"{path} must hold a JSON object with body_text and buttons")])
    return data


def _load_variants(paths: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each --variant file read as --message is, every unreadable one listed at once; and the
    labels that name each variant in an error (its file name, or the path as typed when two share one)."""
    messages, problems = [], []
    for path in paths:
        try:
            messages.append(_load_message(path, "--variant"))
        except MessageInvalid as exc:
            problems.extend(exc.problems)
    if problems:
        raise MessageInvalid(problems)
    names = [os.path.basename(path) for path in paths]
    return messages, names if len(set(names)) == len(names) else list(paths)


def _print_result(result: ImportResult) -> None:
    click.echo(f"imported {result.imported} recipient(s); rejected {result.rejected} row(s); "
               f"skipped {result.duplicates} duplicate(s)", err=True)
    if result.opted_out:
        click.echo(f"opted out: {result.opted_out} of the imported recipient(s) opted out; they are never sent "
                   "(suppressed)", err=True)
    _print_problems("rejected", result.problems, result.rejected)
    _print_problems("duplicates", result.duplicate_rows, result.duplicates)


def _print_attributes_kept(kept: AttributeImportResult | None) -> None:
    """What `campaign create` stored on the contacts from the file's columns (nothing: not a word)."""
    if kept is None or not (kept.contacts or kept.rejected or kept.skipped_columns):
        return
    click.echo(f"contacts: stored the file's columns ({', '.join(kept.columns) or 'tags only'}) on {kept.contacts} "
               f"contact(s); added {kept.tags_added} tag(s)", err=True)
    for skipped in kept.skipped_columns:
        click.echo(f"  not stored: column {skipped}", err=True)
    if kept.problems:
        click.echo(f"  not stored for {kept.rejected} row(s) (first {min(SUMMARY_DETAIL_ROWS, len(kept.problems))}):", err=True)
        for problem in kept.problems[:SUMMARY_DETAIL_ROWS]:
            click.echo(f"    {problem}", err=True)


def _print_problems(title: str, rows: list[RowProblem], total: int) -> None:
    if rows:
        click.echo(f"{title} (first {min(SUMMARY_DETAIL_ROWS, len(rows))} of {total}):", err=True)
        for problem in rows[:SUMMARY_DETAIL_ROWS]:
            click.echo(f"  {problem}", err=True)


@click.group("campaign")
def campaign_group() -> None:
    """Campaigns: one button message to every recipient of a CSV, scheduled and paced."""


@campaign_group.command("create")
@click.option("--name", required=True, help="A name operators recognise (at most 200 characters).")
@click.option("--message", "message_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="message.json: header_text, body_text, footer_text, buttons; {{column}} placeholders allowed in the texts.")
@click.option("--variant", "variant_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Instead of --message, 2 or 3 times: an A/B test of these message files (variants A, B, C in this order).")
@click.option("--test-share", type=float, default=None,
              help="A/B test: the share of the recipients in the test group, split evenly over the variants, in (0, 1] "
                   "(default 1: every recipient gets a variant and the test only reports).")
@click.option("--decide-after", default=None, metavar="DURATION",
              help="A/B test with --test-share below 1: choose the winner this long after the test group is sent (30m, 4h, 1d).")
@click.option("--metric", default=None, metavar="taps|replies|reads",
              help="A/B test: what a variant wins by (default taps: a tap on any button that is not an opt-out button).")
@click.option("--default-variant", default=None, metavar="LETTER",
              help="A/B test: the variant the rest gets when there is no clear winner (default A).")
@click.option("--recipients", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CSV (UTF-8) with a 'phone' column; other columns fill the placeholders.")
@click.option("--segment", "segment_id", default=None, type=int,
              help="Instead of --recipients: a saved segment's id, resolved into recipients when the campaign starts; "
                   "placeholders fill from the contacts' attributes.")
@click.option("--every", default=None, metavar="DURATION",
              help="With --segment: a recurring campaign, one run every DURATION (1d, 7d, 1w; at least 1h).")
@click.option("--until", "until_text", default=None, help="With --every: no run after this time (ISO 8601 with offset).")
@click.option("--at", "at_text", default=None, help="Start time, ISO 8601 with offset (default: the next dispatcher tick).")
@click.option("--window", default=None, metavar="HH:MM-HH:MM", help="Daily send window, e.g. 09:00-21:00 (22:00-06:00 crosses midnight).")
@click.option("--tz", default=None,
              help="IANA time zone of --window, e.g. Asia/Riyadh; or `recipient`: each recipient's own zone(s).")
@click.option("--phone-number-id", default=None, help="Sender id (default: AWAL_PHONE_NUMBER_ID).")
@click.option("--draft", is_flag=True, help="Create it as a draft; start it later with `campaign schedule ID`.")
@click.option("--strict", is_flag=True, help="Refuse the whole file if any row is invalid.")
@click.option("--default-country", default=None, metavar="REGION|CODE",
              help="Country of national numbers written with a trunk 0 (e.g. SA or 966; default: DEFAULT_COUNTRY_CODE).")
@click.option("--opt-out-button", default=None, metavar="ID:TITLE",
              help='Append an opt-out reply button, e.g. "stop:Stop offers" (counts toward the 3; ID in OPT_OUT_BUTTON_IDS).')
@click.option("--require-open-window", is_flag=True,
              help="Hold recipients whose 24-hour window is closed at send time as suppressed (window_closed).")
@click.option("--expires-at", "expires_text", default=None,
              help="Not sent by then (ISO 8601 with offset) -> expired, never delivered late.")
@click.option("--no-save-attributes", is_flag=True,
              help="Do not keep the file's columns on the contacts (by default each column but phone is stored as "
                   "an attribute, and a 'tags' column as tags).")
@campaign_errors
def create_command(name, message_path, variant_paths, test_share, decide_after, metric, default_variant,  # noqa: ANN001
                   recipients, segment_id, every, until_text, at_text, window, tz,  # noqa: ANN001
                   phone_number_id, draft, strict, default_country, opt_out_button, require_open_window,  # noqa: ANN001
                   expires_text, no_save_attributes) -> None:  # noqa: ANN001
    """Create a campaign from message.json (or 2-3 --variant files: an A/B test) and a CSV (or a
    segment); prints its id alone on the last line of stdout."""
    # This face binds its options (times, the country, the file) and names them as the user typed
    # them; creating is `campaigns.create_from_options` (or `audience.create_audience_campaign`
    # for a segment), as for the API and the console.
    if (recipients is None) == (segment_id is None):
        raise MessageInvalid([FieldProblem("--recipients", "give either --recipients FILE or --segment ID (one of them)")])
    if segment_id is not None and (strict or default_country or no_save_attributes):
        raise MessageInvalid([FieldProblem("--segment", "--strict, --default-country and --no-save-attributes are about "
                                           "a CSV file; a segment has none")])
    if recipients is not None and (every or until_text):
        raise MessageInvalid([FieldProblem("--every", "a recurring campaign needs --segment (each run resolves it again)")])
    if message_path is not None and variant_paths:
        raise MessageInvalid([FieldProblem("--message", "and --variant exclude each other: give one message, or 2 or 3 "
                                           "--variant files for an A/B test")])
    if message_path is None and not variant_paths:
        raise MessageInvalid([FieldProblem("--message", "is required: give --message FILE, or 2 or 3 --variant FILE "
                                           "for an A/B test")])
    at = parse_at(at_text)
    expires_at = parse_at(expires_text, "--expires-at")
    until = parse_at(until_text, "--until")
    template = _load_message(message_path) if message_path else None
    variants, labels = _load_variants(variant_paths) if variant_paths else (None, None)
    test = dict(variants=variants, variant_labels=labels, test_share=test_share, decide_after=decide_after,
                metric=metric, default_variant=default_variant)
    runtime = load_runtime()
    _warn_if_past(at)
    if segment_id is not None:
        ensure_schema(runtime)
        _create_for_segment(runtime, segment_id, name=name, template=template, at=at, window=window, tz=tz,
                            phone_number_id=phone_number_id, draft=draft, require_open_window=require_open_window,
                            expires_at=expires_at, opt_out_button=opt_out_button, every=every, until=until, **test)
        return
    region = parse_default_country(default_country, "--default-country")
    ensure_schema(runtime)
    with _named_as_options():
        campaign, result = campaigns.create_from_options(
            runtime, recipients, name=name, template=template, at=at, window=window, tz=tz,
            phone_number_id=phone_number_id, draft=draft, strict=strict, require_open_window=require_open_window,
            expires_at=expires_at, opt_out_button=opt_out_button, default_region=region,
            save_attributes=not no_save_attributes, **test,
        )
    _print_result(result)
    _print_attributes_kept(result.attributes)
    with runtime.read_sessions() as session:
        click.echo("pre-flight: " + report.describe_audience(report.audience(session, campaign.id),
                                                             require_open_window=require_open_window), err=True)
        _print_experiment(runtime, session, campaign.id)
    when = "draft: start it with `buttoncast campaign schedule %d`" % campaign.id if draft else f"scheduled for {report.format_utc(campaign.scheduled_at)}"
    click.echo(f"campaign {campaign.id} created ({when})", err=True)
    click.echo(campaign.id)


def _warn_if_past(at: Any) -> None:
    """A start time already past starts the campaign at once: say so before anything else."""
    note = campaigns.past_start_note(at)
    if note:
        click.echo(f"warning: {note}", err=True)


def _create_for_segment(runtime: Runtime, segment_id: int, **options: Any) -> None:
    from scheduler import audience

    with _named_as_options():
        campaign = audience.create_audience_campaign(runtime, segment_id=segment_id, actor=ACTOR, **options)
    with runtime.read_sessions() as session:
        for line in audience.describe_lines(session, campaign):
            click.echo(line, err=True)
        _print_experiment(runtime, session, campaign.id)
    kind = "series" if campaign.series_every_s else "campaign"
    when = (f"draft: start it with `buttoncast campaign schedule {campaign.id}`" if options.get("draft")
            else f"first run {report.format_utc(campaign.series_next_at)}" if campaign.series_every_s
            else f"scheduled for {report.format_utc(campaign.scheduled_at)}")
    click.echo(f"{kind} {campaign.id} created ({when})", err=True)
    click.echo(campaign.id)


def _print_experiment(runtime: Runtime, session: Any, campaign_id: int) -> None:
    """An A/B test's plan (and, for a CSV, who is in the test group and who is held), on stderr."""
    results = experiments.results(session, campaign_id, runtime.settings.opt_out_button_ids)
    for line in experiments.describe_lines(results) if results else []:
        click.echo(line, err=True)


#: the service's field names as this command's options
OPTION_FOR_FIELD = {"at": "--at", "expires_at": "--expires-at", "phone_number_id": "--phone-number-id",
                    "message": "--message", "name": "--name", "segment": "--segment", "every": "--every",
                    "until": "--until", "window": "--window", "variants": "--variant", "variant": "--variant",
                    "test_share": "--test-share", "decide_after": "--decide-after", "metric": "--metric",
                    "default_variant": "--default-variant"}


@contextlib.contextmanager
def _named_as_options() -> Iterator[None]:
    """A refused field named as the option that set it (`phone_number_id` -> `--phone-number-id`)."""
    try:
        yield
    except MessageInvalid as exc:
        if not any(p.field in OPTION_FOR_FIELD for p in exc.problems):
            raise
        raise MessageInvalid([FieldProblem(OPTION_FOR_FIELD.get(p.field, p.field), p.problem) for p in exc.problems]) from None


def _change(campaign_id: int, action: Callable[..., Any], *args: Any) -> Campaign:
    outcome = action(load_runtime(), campaign_id, *args)
    return outcome[0] if isinstance(outcome, tuple) else outcome


@campaign_group.command("schedule")
@click.argument("campaign_id", type=int)
@click.option("--at", "at_text", default=None, help="Start time, ISO 8601 with offset (default: the time given at creation, else now).")
@campaign_errors
def schedule_command(campaign_id: int, at_text: str | None) -> None:
    """Schedule a draft (or a paused campaign that never started)."""
    campaign = _change(campaign_id, campaigns.schedule_campaign, parse_at(at_text))
    _warn_if_past(campaign.scheduled_at)   # given now, or at creation
    click.echo(f"campaign {campaign_id} scheduled for {report.format_utc(campaign.scheduled_at)}")


@campaign_group.command("pause")
@click.argument("campaign_id", type=int)
@click.option("--reason", default=campaigns.PAUSED_BY_OPERATOR, show_default=True, help="Shown by `campaign show`.")
@campaign_errors
def pause_command(campaign_id: int, reason: str) -> None:
    """Stop dispatching; queued sends return to pending. Takes effect within one dispatcher tick."""
    _change(campaign_id, campaigns.pause_campaign, reason)
    click.echo(f"campaign {campaign_id} paused")


@campaign_group.command("resume")
@click.argument("campaign_id", type=int)
@campaign_errors
def resume_command(campaign_id: int) -> None:
    """Continue a paused campaign where it stopped (running, or scheduled if it never started)."""
    campaign = _change(campaign_id, campaigns.resume_campaign)
    click.echo(f"campaign {campaign_id} {campaign.status}")


@campaign_group.command("cancel")
@click.argument("campaign_id", type=int)
@campaign_errors
def cancel_command(campaign_id: int) -> None:
    """Cancel: every pending or queued message becomes cancelled; those mid-send finish on their own."""
    _, cancelled = campaigns.cancel_campaign(load_runtime(), campaign_id)
    click.echo(f"campaign {campaign_id} cancelled; {cancelled} unsent message(s) cancelled")


@campaign_group.command("decide")
@click.argument("campaign_id", type=int)
@click.option("--variant", "letter", required=True, metavar="LETTER",
              help="The variant the held rest of the audience gets now (A, B or C), whatever the test says so far.")
@campaign_errors
def decide_command(campaign_id: int, letter: str) -> None:
    """End an A/B test early: send variant LETTER to the recipients held for the winner (audited)."""
    with _named_as_options():
        decided = experiments.decide(load_runtime(), campaign_id, variant=letter, actor=ACTOR)
    decision = decided.decision or {}
    verdict = f"winner {decided.winner}" if decided.winner else decision.get("outcome", "no clear winner")
    click.echo(f"campaign {campaign_id} decided by {ACTOR}: variant {decided.sent_variant} goes to "
               f"{decision.get('released', 0)} held recipient(s) (the {decision.get('metric', 'metric')} so far: "
               f"{verdict})", err=True)


@campaign_group.command("list")
@campaign_errors
def list_command() -> None:
    """Every campaign with its status, start time and message counts (one grouped query)."""
    runtime = load_runtime()
    with runtime.read_sessions() as session:
        rows = campaigns.list_campaigns(session)
    click.echo(f"{'id':>6}  {'status':<10} {'scheduled (UTC)':<19}  {'total':>8} {'pending':>8} {'held':>7} "
               f"{'queued':>7} {'sending':>7} {'sent':>8} {'failed':>7} {'other':>6}  name")
    for campaign, c in rows:
        other = c["unknown"] + c["cancelled"] + c["rejected"]
        when = campaign.scheduled_at.strftime("%Y-%m-%d %H:%M:%S") if campaign.scheduled_at else "-"
        click.echo(f"{campaign.id:>6}  {campaign.status:<10} {when:<19}  {sum(c.values()):>8} {c['pending']:>8} "
                   f"{c.get('held', 0):>7} {c['queued']:>7} {c['sending']:>7} {c['sent']:>8} {c['failed']:>7} {other:>6}  "
                   f"{campaign.name}")


def _progress(runtime: Runtime, campaign_id: int) -> report.Progress:
    with runtime.read_sessions() as session:
        return report.progress(session, campaign_id, runtime.settings.rate_limit.per_second,
                               opt_out_button_ids=runtime.settings.opt_out_button_ids)


@campaign_group.command("show")
@click.argument("campaign_id", type=int)
@click.option("--watch", is_flag=True, help="Keep a live progress bar until the campaign completes or is cancelled.")
@campaign_errors
def show_command(campaign_id: int, watch: bool) -> None:
    """Status, schedule, window, counts, sending rate, estimated finish, pause reason and funnel."""
    from scheduler import audience

    runtime = load_runtime()
    if watch:
        _watch(runtime, campaign_id)
    progress = _progress(runtime, campaign_id)
    click.echo("\n".join(report.describe(progress)))
    with runtime.read_sessions() as session:
        for line in audience.describe_lines(session, progress.campaign):
            click.echo(line)


def _watch(runtime: Runtime, campaign_id: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"))
    try:
        with Progress(*columns, refresh_per_second=4) as bar:
            task = bar.add_task(f"campaign {campaign_id}", total=None, detail="")
            while True:
                p = _progress(runtime, campaign_id)
                status = p.campaign.status
                label = f"paused ({p.campaign.pause_reason}), still watching" if status == CampaignStatus.PAUSED.value else status
                eta = p.eta()
                rate = p.rate_per_minute
                detail = ("" if rate is None else f"{rate}/min") + (f", ETA {eta:%H:%M:%S} UTC" if eta else "")
                bar.update(task, total=p.total or None, completed=p.done, description=f"campaign {campaign_id} {label}", detail=detail)
                if status in ENDED or status == CampaignStatus.DRAFT.value:
                    break  # a draft does nothing until `campaign schedule`
                time.sleep(WATCH_REFRESH_S)
    except KeyboardInterrupt:
        click.echo("stopped watching (the campaign goes on)", err=True)


@campaign_group.command("report")
@click.argument("campaign_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout).")
@campaign_errors
def report_command(campaign_id: int, fmt: str, output: str | None) -> None:
    """One row per recipient: ids, status, attempts, last error, sent time, delivery, reply and late failure."""
    runtime = load_runtime()
    write = report.write_csv if fmt == "csv" else report.write_json
    with runtime.read_sessions() as session:
        rows = report.report_rows(session, campaign_id)
        first = next(rows, None)  # raises CampaignNotFound before a file is created
        stream = _chain(first, rows)
        if output:
            with open(output, "w", encoding="utf-8", newline="") as out:
                count = write(stream, out)
        else:
            count = write(stream, sys.stdout)
        late = report.late_failures(session, campaign_id)
    click.echo(f"{count} row(s) written" + (f" to {output}" if output else ""), err=True)
    if late:   # the failure_code/failure_class columns, summed up
        click.echo("late failures by class: " + ", ".join(f"{k} {n}" for k, n in late.items()), err=True)


def _chain(first: dict | None, rest: Any) -> Any:
    if first is not None:
        yield first
        yield from rest


@campaign_group.command("test")
@click.argument("campaign_id", type=int)
@click.option("--phone", required=True, help="Where the test goes, international format.")
@campaign_errors
def test_command(campaign_id: int, phone: str) -> None:
    """Send the campaign's message, filled with the first recipient's variables, to PHONE now.

    It goes through the normal send path as an ad-hoc message (rate limit, retries, audit trail),
    so the campaign's counts are untouched. Prints the message id; see `buttoncast message show`.
    """
    runtime = load_runtime()
    message_id = campaigns.send_test(runtime, campaign_id, phone)
    note = " (no broker configured: it goes out when `buttoncast run` or a dispatcher picks it up)" if runtime.settings.embedded else ""
    click.echo(f"test message {message_id} to {phone} queued{note}", err=True)
    click.echo(message_id)


@campaign_group.command("follow-up")
@click.argument("campaign_id", type=int)
@click.option("--message", "message_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="message.json of the follow-up; {{placeholders}} fill from the contacts' attributes.")
@click.option("--tapped", "tapped", default=None, metavar="BUTTON_ID", help="Everyone who tapped this button.")
@click.option("--tapped-any", is_flag=True, help="Everyone who tapped any button.")
@click.option("--not-tapped", is_flag=True, help="Everyone who received it and tapped nothing.")
@click.option("--not-read", is_flag=True, help="Everyone who received it and did not read it.")
@click.option("--at", "at_text", default=None, help="Start time, ISO 8601 with offset (default: the next dispatcher tick).")
@click.option("--name", default=None, help="Default: 'Follow-up of <campaign>: <who>'.")
@campaign_errors
def follow_up_command(campaign_id: int, message_path: str, tapped: str | None, tapped_any: bool, not_tapped: bool,
                      not_read: bool, at_text: str | None, name: str | None) -> None:
    """A campaign to a result of campaign ID, resolved when it starts; prints its id alone on the last line."""
    from scheduler import audience

    chosen = [r for r, on in (("tapped", tapped is not None), ("tapped_any", tapped_any), ("not_tapped", not_tapped),
                              ("not_read", not_read)) if on]
    if len(chosen) != 1:
        raise MessageInvalid([FieldProblem("--tapped", "give exactly one of --tapped BUTTON_ID, --tapped-any, "
                                           "--not-tapped, --not-read")])
    at = parse_at(at_text)
    template = _load_message(message_path)
    runtime = load_runtime()
    ensure_schema(runtime)
    with _named_as_options():
        follow = audience.create_follow_up(runtime, campaign_id, template=template, result=chosen[0], button=tapped,
                                           at=at, name=name, actor=ACTOR)
    with runtime.read_sessions() as session:
        for line in audience.describe_lines(session, follow):
            click.echo(line, err=True)
    click.echo(f"campaign {follow.id} created (scheduled for {report.format_utc(follow.scheduled_at)})", err=True)
    click.echo(follow.id)
