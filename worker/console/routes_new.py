"""New campaign, in steps: the form (CSV or saved segment, message, sender, timing) -> the import
report and pre-flight counts of a *draft* (nothing is sent) -> confirm (schedule), or discard the draft.

The draft is made by `campaigns.create_from_options`, the function `campaign create --draft` and
`POST /v1/campaigns` call, or for a segment (once or repeating) by `audience.create_audience_campaign`,
as `campaign create --segment`; schedule and discard are service calls too.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import Response

from scheduler import audience, campaigns, experiments, report
from scheduler.importer import ImportRefused, RecipientsFileError
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console import variant_form
from worker.console.message_form import BUTTON_SLOTS, LIMITS, button_input
from worker.console.routes_campaigns import POSTED
from worker.console.web import allowed, redirect, render, runtime
from worker.contacts import segments
from worker.errors import FieldProblem, MessageInvalid
from worker.runtime import Runtime
from worker.uploads import upload_on_disk
from worker.window import WindowInvalid

router = APIRouter(include_in_schema=False)
SEND = Depends(allowed(Permission.SEND))


FIELD_OF_PROBLEM = {"--at": "at", "scheduled_at": "at", "--expires-at": "expires_at", "--opt-out-button": "opt_out_button"}
FIELD_OF_PROBLEM.update({"every": "every_custom", "until": "until", "segment": "segment"})   # a segment's campaign
#: "Repeat every" choices (the service takes any duration of at least an hour: "custom")
REPEATS = (("", "Does not repeat"), ("1d", "Every day"), ("1w", "Every week"), ("custom", "Custom…"))


def _form_page(request: Request, rt: Runtime, values: dict, problems: list[str] | None = None, status_code: int = 200,
               rejected: list | None = None, field_problems: dict[str, list[str]] | None = None,
               fixes: list[tuple[str, str]] | None = None) -> Response:
    """The form; `fixes`: (input, its name in words) for the list of problems atop it, each a link to its input."""
    with rt.read_sessions() as session:
        saved = [(s.id, s.name) for s in segments.list_segments(session)]
    letters = variant_form.letters_in(values)
    return render(request, "new.html", status_code=status_code, v={**variant_form.DEFAULTS, **values},
                  problems=problems or [], limits=LIMITS, slots=range(1, BUTTON_SLOTS + 1),
                  default_sender=rt.settings.awal_phone_number_id or "", rejected=rejected or [],
                  fp=field_problems or {}, opt_out_ids=sorted(rt.settings.opt_out_button_ids), saved_segments=saved,
                  repeats=REPEATS, letters=letters, all_letters=experiments.LETTERS, prefixes=variant_form.PREFIXES,
                  metrics=variant_form.METRIC_CHOICES, fixes=fixes or [])


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
    known = {"name", "phone_number_id", "at", "expires_at", "header_text", "body_text", "footer_text", "opt_out_button",
             "window"}
    return problem.field if problem.field in known else None


def _invalid_page(request: Request, rt: Runtime, form: dict[str, str], bound: variant_form.Bound,
                  exc: MessageInvalid) -> Response:
    """The form again with each problem next to its field (a variant's in that variant's inputs);
    those about no one field go on top."""
    general: list[str] = []
    by_field: dict[str, list[str]] = {}
    for problem in exc.problems:
        field, words = variant_form.input_for(problem, form, bound, _form_field)
        if field is None:
            general.append(words)
        else:
            by_field.setdefault(field, []).append(words)
    if not general:
        general = [f"{len(exc.problems)} field(s) need fixing; see the notes next to them."]
    return _form_page(request, rt, form, general, 422, field_problems=by_field,
                      fixes=[(name, variant_form.input_words(name, len(bound.letters) > 1)) for name in by_field])


@router.get("/campaigns/new")
def new_campaign_form(request: Request, segment: str = "", person: Person = SEND,
                      rt: Runtime = Depends(runtime)) -> Response:
    """`?segment=ID` (a segment page's "Use in a campaign"): the saved segment chosen already."""
    return _form_page(request, rt, {"audience": "segment", "segment": segment} if segment.isdigit() else {})


@router.post("/campaigns/new", dependencies=POSTED)
async def create_draft(request: Request, recipients: UploadFile | None = None, person: Person = SEND,
                       rt: Runtime = Depends(runtime)) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if form.get("add_variant") or form.get("remove_variant"):   # the buttons without the page's script
        values = variant_form.resized(form)
        again = None if values.get("audience") == "segment" else [
            "Choose the recipients CSV again: a browser never keeps a chosen file from one page to the next."]
        return _form_page(request, rt, values, again)
    bound = variant_form.bind(form)
    if form.get("audience") == "segment":
        return _create_for_segment(request, rt, form, bound, person)
    if recipients is None or not recipients.filename:
        return _form_page(request, rt, form, ["Choose a recipients CSV file, or a saved segment."], 422)
    if form.get("every"):
        return _form_page(request, rt, form, ["Only a campaign to a saved segment repeats: each run takes its "
                                              "members again."], 422)
    async with upload_on_disk(recipients, "recipients.csv", prefix="buttoncast-console-") as path:
        try:
            campaign, result = campaigns.create_from_options(
                rt, path, name=form.get("name", ""), template=bound.template, variants=bound.variants,
                **bound.options, at=form.get("at") or None,
                window=form.get("window") or None, tz=form.get("tz") or None,
                phone_number_id=form.get("phone_number_id") or None, draft=True, actor=person.actor,
                require_open_window=form.get("require_open_window") == "on",
                expires_at=form.get("expires_at") or None, opt_out_button=form.get("opt_out_button") or None,
                save_attributes=form.get("save_attributes") != "off")
        except MessageInvalid as exc:
            return _invalid_page(request, rt, form, bound, exc)
        except ImportRefused as exc:
            return _form_page(request, rt, form, [str(exc)], 422, rejected=exc.result.problems)
        except (RecipientsFileError, WindowInvalid) as exc:
            return _form_page(request, rt, form, [str(exc).replace(path, recipients.filename or "the file")], 422)
    with rt.read_sessions() as session:
        progress = report.progress(session, campaign.id, rt.settings.rate_limit.per_second)
        audience = report.audience(session, campaign.id)
        test = experiments.results(session, campaign.id, rt.settings.opt_out_button_ids)
    opt_out = [b for b in campaign.template.get("buttons", []) if b.get("id") in rt.settings.opt_out_button_ids]
    return render(request, "review.html", c=campaign, result=result, p=progress, rate=rt.settings.rate_limit,
                  audience=report.describe_audience(audience, require_open_window=campaign.require_open_window,
                                                    rule="the 24-hour window rule"),
                  opt_out_buttons=opt_out, start_note=campaigns.past_start_note(campaign.scheduled_at), test=test)


def _create_for_segment(request: Request, rt: Runtime, form: dict[str, str], bound: variant_form.Bound,
                        person: Person) -> Response:
    """A draft whose recipients are a saved segment's members when it starts (with "Repeat every",
    a series of runs); the review shows who that is, in words and counted now."""
    segment_id = form.get("segment", "")
    if not segment_id.isdigit() or len(segment_id) > 18:
        return _form_page(request, rt, form, status_code=422, field_problems={"segment": ["choose a saved segment"]},
                          problems=["Choose a saved segment, or upload a CSV."])
    every = form.get("every_custom") if form.get("every") == "custom" else form.get("every")
    try:
        campaign = audience.create_audience_campaign(
            rt, name=form.get("name", ""), template=bound.template, variants=bound.variants, **bound.options,
            segment_id=int(segment_id),
            at=form.get("at") or None, window=form.get("window") or None, tz=form.get("tz") or None,
            phone_number_id=form.get("phone_number_id") or None, draft=True,
            require_open_window=form.get("require_open_window") == "on", expires_at=form.get("expires_at") or None,
            opt_out_button=form.get("opt_out_button") or None, every=every or None, until=form.get("until") or None,
            actor=person.actor)
    except MessageInvalid as exc:
        return _invalid_page(request, rt, form, bound, exc)
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
