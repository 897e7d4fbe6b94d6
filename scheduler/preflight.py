"""Every problem of a new campaign's options and its file's header at once, before anything is made.

`create_checked` (the console's New campaign) asks `new_campaign_problems` first, then creates
with `campaigns.create_from_options`, so a person fixes the start, the daily window, a `{{column}}`
the CSV lacks and the message's limits in one round trip. `create_from_options` alone raises the
first kind of problem it meets, as the CLI and the API always have. The words name the field,
never a command-line option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

from scheduler import campaigns
from scheduler.campaigns import (
    NAME_MAX_CHARS,
    PHONE_NUMBER_ID_MAX_CHARS,
    experiment_plan,
    parse_at,
    with_opt_out_button,
)
from scheduler.importer import ImportResult
from scheduler.recipients_csv import RecipientsFileError, check_header
from scheduler.template import FILLABLE_FIELDS, check_template, placeholders_in
from worker.errors import FieldProblem, MessageInvalid
from worker.models import Campaign, utcnow
from worker.window import WindowInvalid, parse_window

if TYPE_CHECKING:
    from worker.runtime import Runtime


def create_checked(runtime: "Runtime", recipients: str | os.PathLike[str] | None, *, recipients_name: str | None,
                   **options: Any) -> tuple[Campaign, ImportResult]:
    """`campaigns.create_from_options` once `new_campaign_problems` finds none; else MessageInvalid
    listing them all (`recipients` None: no file was given; `recipients_name`: the file as the person named it)."""
    checked = {k: options.get(k) for k in ("name", "template", "at", "window", "tz", "phone_number_id", "expires_at",
                                           "opt_out_button", "variants", "variant_labels", "test_share",
                                           "decide_after", "metric", "default_variant")}
    found = new_campaign_problems(runtime, recipients, shown_as=recipients_name, **checked)
    if found or recipients is None:
        raise MessageInvalid(found)
    return campaigns.create_from_options(runtime, recipients, **options)   # the one function every face creates with


@dataclass(frozen=True)
class _Placeholders:
    """What the header check needs of a message: the placeholders it fills (every variant's)."""

    names: tuple[str, ...]


def new_campaign_problems(runtime: "Runtime", recipients: str | os.PathLike[str] | None, *, shown_as: str | None = None,
                          name: Any, template: Any, at: str | datetime | None = None, window: str | None = None,
                          tz: str | None = None, phone_number_id: str | None = None,
                          expires_at: str | datetime | None = None, opt_out_button: str | None = None,
                          variants: list | None = None, **test: Any) -> list[FieldProblem]:
    """Every problem `create_from_options` would meet, each named by its field; [] when it can go on.
    `recipients` None: no file was given (a problem too); `shown_as`: the file's name as the person
    knows it (the path is a temporary copy);
    `test`: an A/B test's options (variant_labels, test_share, decide_after, metric, default_variant)."""
    problems: list[FieldProblem] = []

    def time_of(value: str | datetime | None, field: str) -> datetime | None:
        try:
            return parse_at(value, field) if isinstance(value, str) else value
        except MessageInvalid as exc:
            problems.extend(exc.problems)
            return None

    starts, expires = time_of(at, "at"), time_of(expires_at, "expires_at")
    if expires is not None and expires.tzinfo is not None and expires <= (starts or utcnow()):
        problems.append(FieldProblem("expires_at", "is before the campaign starts: nothing would be sent"))
    try:
        parse_window(window, tz)
    except WindowInvalid as exc:
        problems.append(FieldProblem(exc.field, exc.words))
    if not isinstance(name, str) or not name.strip():
        problems.append(FieldProblem("name", "is required"))
    elif len(name.strip()) > NAME_MAX_CHARS:
        problems.append(FieldProblem("name", f"is {len(name.strip())} characters; the limit is {NAME_MAX_CHARS}"))
    sender = str(phone_number_id or runtime.settings.awal_phone_number_id or "").strip()
    if not sender:
        problems.append(FieldProblem("phone_number_id", "is required: the WhatsApp number it is sent from"))
    elif len(sender) > PHONE_NUMBER_ID_MAX_CHARS:
        problems.append(FieldProblem("phone_number_id", f"is {len(sender)} characters; "
                                                        f"the limit is {PHONE_NUMBER_ID_MAX_CHARS}"))
    messages = [m for m in (variants if isinstance(variants, list) else [template]) if isinstance(m, Mapping)]
    try:
        plan = experiment_plan(runtime, template, variants, opt_out_button=opt_out_button,
                               labels=test.pop("variant_labels", None), **test)
        if plan is None and isinstance(template, Mapping):
            message = template
            if opt_out_button:
                message = with_opt_out_button(template, opt_out_button,
                                              opt_out_button_ids=runtime.settings.opt_out_button_ids)
            check_template(message)
        elif plan is None:
            problems.append(FieldProblem("message", "must be a JSON object with body_text and buttons"))
    except MessageInvalid as exc:
        problems.extend(exc.problems)
        if variants is None and isinstance(template, Mapping) and opt_out_button:
            try:   # the opt-out button was refused: the message's own problems still count
                check_template(template)
            except MessageInvalid as more:
                problems.extend(more.problems)
    if recipients is None:
        problems.append(FieldProblem("recipients", "choose a CSV file with a phone column"))
    else:
        problems.extend(_header_problems(recipients, messages, shown_as))
    return list(dict.fromkeys(problems))


def _header_problems(recipients: str | os.PathLike[str], messages: list[Mapping[str, Any]],
                     shown_as: str | None) -> list[FieldProblem]:
    """The file's header against every placeholder of every message (a `{{city}}` with no city column)."""
    names = tuple(dict.fromkeys(n for m in messages for f in FILLABLE_FIELDS for n in placeholders_in(m.get(f)) if n))
    try:
        check_header(recipients, _Placeholders(names))   # type: ignore[arg-type] - only `names` is read
    except RecipientsFileError as exc:
        text = str(exc).replace(os.fspath(recipients), shown_as or "the file")
        return [FieldProblem("recipients", text)]
    return []
