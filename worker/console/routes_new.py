"""New campaign, in steps: the form (CSV or saved segment, message, sender, timing) -> the import
report and pre-flight counts of a *draft* (nothing is sent) -> confirm (schedule), or discard the draft.

The draft is made by `campaigns.create_from_options`, the function `campaign create --draft` and
`POST /v1/campaigns` call (through `preflight.create_checked`: every problem of the form at once), or for a segment (once or repeating) by `audience.create_audience_campaign`,
as `campaign create --segment`; schedule and discard are service calls too.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import Response

from scheduler import audience, campaigns, experiments, preflight, recipient_preview, report
from scheduler.importer import ImportRefused, RecipientsFileError
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console import kept_uploads, variant_form, when_form
from worker.console.kept_uploads import KeptUpload
from worker.console.message_form import BUTTON_SLOTS, LIMITS, button_input, id_placeholders
from worker.console.routes_campaigns import POSTED
from worker.console.web import allowed, redirect, render, runtime
from worker.contacts import segments
from worker.errors import FieldProblem, MessageInvalid
from worker.runtime import Runtime
from worker.window import RECIPIENT, WindowInvalid

router = APIRouter(include_in_schema=False)
SEND = Depends(allowed(Permission.SEND))


FIELD_OF_PROBLEM = {"--at": "at", "scheduled_at": "at", "--expires-at": "expires_at", "--opt-out-button": "opt_out_button"}
FIELD_OF_PROBLEM.update({"every": "every_custom", "until": "until", "segment": "segment"})   # a segment's campaign
#: "Repeat every" choices (the service takes any duration of at least an hour: "custom")
REPEATS = (("", "Does not repeat"), ("1d", "Every day"), ("1w", "Every week"), ("custom", "Custom…"))
#: the form's date-time pickers, read in the form's time zone
PICKERS = ("at", "expires_at", "until")
_KNOWN_INPUTS = {"name", "phone_number_id", "at", "expires_at", "header_text", "body_text", "footer_text",
                 "opt_out_button", "window", "tz", "recipients"}


def _form_page(request: Request, rt: Runtime, values: dict, problems: list[str] | None = None, status_code: int = 200,
               rejected: list | None = None, field_problems: dict[str, list[str]] | None = None,
               fixes: list[tuple[str, str]] | None = None, kept: KeptUpload | None = None) -> Response:
    """The form; `fixes`: (input, its name in words) for the list of problems atop it, each a link to
    its input; `kept`: the CSV chosen on an earlier try, which the person need not choose again."""
    with rt.read_sessions() as session:
        saved = [(s.id, s.name) for s in segments.list_segments(session)]
    letters = variant_form.letters_in(values)
    zone = values.get("tz") or rt.settings.console_time_zone
    reserved = rt.settings.opt_out_button_ids
    ids = {prefix + name: button_id for letter, prefix in variant_form.PREFIXES.items()
           for name, button_id in id_placeholders(variant_form.sub_form(values, letter), reserved).items()}
    return render(request, "new.html", status_code=status_code, v={**variant_form.DEFAULTS, **values, "tz": zone},
                  problems=problems or [], limits=LIMITS, slots=range(1, BUTTON_SLOTS + 1),
                  default_sender=rt.settings.awal_phone_number_id or "", rejected=rejected or [],
                  fp=field_problems or {}, opt_out_ids=sorted(rt.settings.opt_out_button_ids), saved_segments=saved,
                  repeats=REPEATS, letters=letters, all_letters=experiments.LETTERS, prefixes=variant_form.PREFIXES,
                  metrics=variant_form.METRIC_CHOICES, fixes=fixes or [], kept=kept,
                  kept_preview=kept_uploads.preview(kept) if kept else None, zones=when_form.zone_choices(), ids=ids)


def _form_field(problem: FieldProblem, form: dict[str, str]) -> str | None:
    """The form input a service problem is about (None: the form as a whole). The opt-out button is
    appended after the form's own buttons, so a problem with a button past them is the opt-out field's."""
    if problem.field == "every" and form.get("every") != "custom":
        return "every"
    if problem.field in FIELD_OF_PROBLEM:
        return FIELD_OF_PROBLEM[problem.field]
    button = button_input(problem, form)
    if button is not False:
        return button or "opt_out_button"
    return problem.field if problem.field in _KNOWN_INPUTS else None


def _invalid_page(request: Request, rt: Runtime, form: dict[str, str], bound: variant_form.Bound,
                  exc: MessageInvalid, own_words: dict[str, str], kept: KeptUpload | None) -> Response:
    """The form again with every problem next to its field (a variant's in that variant's inputs);
    those about no one field go on top. `own_words`: what the form says of an input it could not read
    (a date, the file), in place of the service's words about the same input."""
    general: list[str] = []
    by_field: dict[str, list[str]] = {}
    for problem in exc.problems:
        field, words = variant_form.input_for(problem, form, bound, _form_field)
        if field is None:
            general.append(words)
        else:
            by_field.setdefault(field, []).append(words)
    by_field.update({name: [words] for name, words in own_words.items()})
    if not general:
        general = [f"{len(by_field)} field(s) need fixing; see the notes next to them."]
    return _form_page(request, rt, form, general, 422, field_problems=by_field, kept=kept,
                      fixes=[(name, variant_form.input_words(name, len(bound.letters) > 1)) for name in by_field])


async def _recipients_file(recipients: UploadFile | None, form: dict[str, str], person: Person,
                           rt: Runtime) -> tuple[KeptUpload | None, str | None]:
    """The CSV of this try: a file just chosen (kept for the next try), else the one kept from an
    earlier try (`upload_token`); with the words when a chosen file cannot be kept."""
    if recipients is not None and recipients.filename:
        try:
            return await kept_uploads.keep(recipients, recipients.filename, person.actor,
                                           max_bytes=rt.settings.api_max_upload_bytes), None
        except kept_uploads.UploadTooLarge as exc:
            return None, str(exc)
    return kept_uploads.find(form.get("upload_token"), person.actor), None


def _window(form: dict[str, str], zone: str) -> tuple[str | None, str | None]:
    """The daily window and its zone as the service takes them: the form's zone, or each recipient's own."""
    window = (form.get("window") or "").strip() or None
    if window is None:
        return None, None
    return window, RECIPIENT if form.get("window_own_zones") == "on" else zone


@router.get("/campaigns/new")
def new_campaign_form(request: Request, segment: str = "", person: Person = SEND,
                      rt: Runtime = Depends(runtime)) -> Response:
    """`?segment=ID` (a segment page's "Use in a campaign"): the saved segment chosen already."""
    return _form_page(request, rt, {"audience": "segment", "segment": segment} if segment.isdigit() else {})


@router.post("/campaigns/new", dependencies=POSTED)
async def create_draft(request: Request, recipients: UploadFile | None = None, person: Person = SEND,
                       rt: Runtime = Depends(runtime)) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    by_segment = form.get("audience") == "segment"
    kept, file_problem = (None, None) if by_segment else await _recipients_file(recipients, form, person, rt)
    if form.get("add_variant") or form.get("remove_variant"):   # the buttons without the page's script
        return _form_page(request, rt, variant_form.resized(form), kept=kept)
    bound = variant_form.bind(form, rt.settings.opt_out_button_ids)
    zone = form.get("tz") or rt.settings.console_time_zone
    times = when_form.read_times(form, PICKERS, zone)
    window, tz = _window(form, zone)
    if by_segment:
        return _create_for_segment(request, rt, form, bound, person, times, window, tz)
    own_words = {**times.problems, **({"recipients": file_problem} if file_problem else {})}
    try:
        campaign, result = preflight.create_checked(
            rt, kept.path if kept else None, recipients_name=kept.filename if kept else None,
            name=form.get("name", ""), template=bound.template,
            variants=bound.variants, **bound.options, at=times.values["at"], window=window, tz=tz,
            phone_number_id=form.get("phone_number_id") or None, draft=True, actor=person.actor,
            require_open_window=form.get("require_open_window") == "on", expires_at=times.values["expires_at"],
            opt_out_button=form.get("opt_out_button") or None, save_attributes=form.get("save_attributes") != "off")
    except MessageInvalid as exc:
        return _invalid_page(request, rt, form, bound, exc, own_words, kept)
    except ImportRefused as exc:
        return _form_page(request, rt, form, [str(exc)], 422, rejected=exc.result.problems, kept=kept)
    except (RecipientsFileError, WindowInvalid) as exc:   # what only reading every row finds (not UTF-8 past line 1)
        words = str(exc).replace(str(kept.path), kept.filename) if kept else str(exc)
        return _form_page(request, rt, form, [words], 422, kept=kept)
    kept_uploads.drop(kept)
    with rt.read_sessions() as session:
        progress = report.progress(session, campaign.id, rt.settings.rate_limit.per_second)
        described = report.audience(session, campaign.id)
        test = experiments.results(session, campaign.id, rt.settings.opt_out_button_ids)
        picked = recipient_preview.preview(session, campaign.id)   # the first recipient's filled message
    opt_out = [b for b in campaign.template.get("buttons", []) if b.get("id") in rt.settings.opt_out_button_ids]
    return render(request, "review.html", c=campaign, result=result, p=progress, rate=rt.settings.rate_limit, picked=picked,
                  audience=report.describe_audience(described, require_open_window=campaign.require_open_window,
                                                    rule="the 24-hour window rule"),
                  opt_out_buttons=opt_out, start_note=campaigns.past_start_note(campaign.scheduled_at), test=test)


def _create_for_segment(request: Request, rt: Runtime, form: dict[str, str], bound: variant_form.Bound,
                        person: Person, times: when_form.Times, window: str | None, tz: str | None) -> Response:
    """A draft whose recipients are a saved segment's members when it starts (with "Repeat every",
    a series of runs); the review shows who that is, in words and counted now."""
    segment_id = form.get("segment", "")
    chosen = segment_id.isdigit() and len(segment_id) <= 18
    every = form.get("every_custom") if form.get("every") == "custom" else form.get("every")
    try:
        campaign = audience.create_audience_campaign(
            rt, name=form.get("name", ""), template=bound.template, variants=bound.variants, **bound.options,
            segment_id=int(segment_id) if chosen else None,   # none chosen: refused, with every other problem
            at=times.values["at"], window=window, tz=tz, phone_number_id=form.get("phone_number_id") or None,
            draft=True, require_open_window=form.get("require_open_window") == "on",
            expires_at=times.values["expires_at"], opt_out_button=form.get("opt_out_button") or None,
            every=every or None, until=times.values["until"], actor=person.actor)
    except MessageInvalid as exc:
        own_words = {**times.problems, **({} if chosen else {"segment": "choose a saved segment, or upload a CSV"})}
        return _invalid_page(request, rt, form, bound, exc, own_words, None)
    with rt.read_sessions() as session:
        shown = segments.view(session, int(segment_id))
        test = experiments.results(session, campaign.id, rt.settings.opt_out_button_ids)
    opt_out = [b for b in campaign.template.get("buttons", []) if b.get("id") in rt.settings.opt_out_button_ids]
    return render(request, "review.html", c=campaign, seg=shown, result=None, p=None, audience=None,
                  rate=rt.settings.rate_limit, opt_out_buttons=opt_out, test=test,
                  start_note=campaigns.past_start_note(campaign.scheduled_at))


@router.post("/campaigns/{campaign_id}/discard", dependencies=POSTED)
def discard(campaign_id: int, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    try:
        campaigns.discard_draft(rt, campaign_id, actor=person.actor)
    except campaigns.IllegalTransition as exc:
        return redirect(f"/campaigns/{campaign_id}", f"Not done: {exc}")
    return redirect("/", f"Draft {campaign_id} discarded; nothing was sent.")
