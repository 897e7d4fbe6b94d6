"""Follow up a campaign from its funnel: a new campaign to everyone who tapped a button (or tapped
nothing, or did not read it), with its own message. `audience.create_follow_up` makes it, as
`buttoncast campaign follow-up` does; its members are taken when it starts.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from scheduler import audience, campaigns
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console import when_form
from worker.console.message_form import BUTTON_SLOTS, LIMITS, button_input, id_placeholders, template_from
from worker.console.routes_campaigns import POSTED
from worker.console.web import allowed, redirect, render, runtime
from worker.errors import FieldProblem, MessageInvalid
from worker.models import Campaign
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
SEND = Depends(allowed(Permission.SEND))
FIELDS = {"name", "at", "header_text", "body_text", "footer_text"}


def who(result: str, button: str, source: Campaign) -> str:
    """The follow-up's audience as the page's heading says it."""
    if result == "tapped":
        buttons = (source.template or {}).get("buttons") or []
        titles = {b.get("id"): b.get("title") for b in buttons if isinstance(b, dict)}
        return f"everyone who tapped “{titles.get(button) or button}”"
    return {"tapped_any": "everyone who tapped any button", "not_tapped": "everyone who received it and tapped nothing",
            "not_read": "everyone who received it and did not read it"}.get(result, "")


def _page(request: Request, rt: Runtime, campaign_id: int, result: str, button: str, values: dict[str, str],
          problems: list[FieldProblem] | None = None, status_code: int = 200,
          own_words: dict[str, str] | None = None) -> Response:
    """The form; every problem next to its input (`own_words`: the form's words for an input it could
    not read, in place of the service's), those about no one input on top."""
    general: list[str] = []
    by_field: dict[str, list[str]] = {}
    for problem in problems or []:
        field = _field_of(problem, values)
        if field is None:
            general.append(str(problem))
        else:
            by_field.setdefault(field, []).append(problem.problem)
    by_field.update({name: [words] for name, words in (own_words or {}).items()})
    if problems and not general:
        general = [f"{len(by_field)} field(s) need fixing; see the notes next to them."]
    with rt.read_sessions() as session:
        source = campaigns.get_campaign(session, campaign_id)
        reach = audience.follow_up_preview(session, campaign_id, result, button or None)
    reserved = rt.settings.opt_out_button_ids
    return render(request, "follow_up.html", status_code=status_code, c=source, result=result, button=button,
                  who=who(result, button, source), v={**values, "tz": _zone(rt, source, values)}, fp=by_field,
                  problems=general, limits=LIMITS, slots=range(1, BUTTON_SLOTS + 1), zones=when_form.zone_choices(),
                  ids=id_placeholders(values, reserved), reserved_ids=sorted(reserved), **reach)


def _zone(rt: Runtime, source: Campaign, values: dict[str, str]) -> str:
    """The start's zone: as chosen, else the source's window's (the follow-up keeps its window), else the console's."""
    if values.get("tz"):
        return values["tz"]
    return source.window_tz if when_form.known_zone(source.window_tz) else rt.settings.console_time_zone


def _field_of(problem: FieldProblem, form: dict[str, str]) -> str | None:
    """The input a problem is about (None: the form as a whole)."""
    if problem.field in FIELDS:
        return problem.field
    button = button_input(problem, form)
    return None if button is False else button


@router.get("/campaigns/{campaign_id}/follow-up")
def follow_up_form(request: Request, campaign_id: int, result: str = "", button: str = "", person: Person = SEND,
                   rt: Runtime = Depends(runtime)) -> Response:
    return _page(request, rt, campaign_id, result, button, {})


@router.post("/campaigns/{campaign_id}/follow-up", dependencies=POSTED)
async def create_follow_up(request: Request, campaign_id: int, person: Person = SEND,
                           rt: Runtime = Depends(runtime)) -> Response:
    form = {k: v.strip() if k.startswith("button_") else v
            for k, v in (await request.form()).items() if isinstance(v, str)}
    result, button = form.get("result", ""), form.get("button", "")
    times = when_form.read_times(form, ("at",), form.get("tz") or rt.settings.console_time_zone)
    template = template_from(form, ids_from_titles=True, reserved_ids=rt.settings.opt_out_button_ids)
    try:
        follow = audience.create_follow_up(rt, campaign_id, template=template, result=result, button=button or None,
                                           at=times.values["at"], name=form.get("name") or None, actor=person.actor)
    except MessageInvalid as exc:
        return _page(request, rt, campaign_id, result, button, form, exc.problems, 422, own_words=times.problems)
    return redirect(f"/campaigns/{follow.id}", f"Follow-up of campaign {campaign_id} created and scheduled: "
                                               "its recipients are taken from the results when it starts.")
