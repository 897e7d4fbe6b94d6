"""Follow up a campaign from its funnel: a new campaign to everyone who tapped a button (or tapped
nothing, or did not read it), with its own message. `audience.create_follow_up` makes it, as
`buttoncast campaign follow-up` does; its members are taken when it starts.
"""

from __future__ import annotations

import re
import unicodedata

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from scheduler import audience, campaigns
from worker import message as limits
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.routes_campaigns import POSTED
from worker.console.web import allowed, redirect, render, runtime
from worker.contacts import segments
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import Campaign
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
SEND = Depends(allowed(Permission.SEND))
BUTTON_SLOTS = limits.BUTTONS_MAX
LIMITS = {"header_text": limits.HEADER_TEXT_MAX_CHARS, "body_text": limits.BODY_TEXT_MAX_CHARS,
          "footer_text": limits.FOOTER_TEXT_MAX_CHARS, "button_title": limits.BUTTON_TITLE_MAX_CHARS,
          "button_id": limits.BUTTON_ID_MAX_CHARS}
FIELDS = {"name", "at", "header_text", "body_text", "footer_text"}
BUTTON_PROBLEM = re.compile(r"buttons\[(\d+)\]\.(id|title)")
_NOT_WORD = re.compile(r"[\W_]+")


def who(result: str, button: str, source: Campaign) -> str:
    """The follow-up's audience as the page's heading says it."""
    if result == "tapped":
        buttons = (source.template or {}).get("buttons") or []
        titles = {b.get("id"): b.get("title") for b in buttons if isinstance(b, dict)}
        return f"everyone who tapped “{titles.get(button) or button}”"
    return {"tapped_any": "everyone who tapped any button", "not_tapped": "everyone who received it and tapped nothing",
            "not_read": "everyone who received it and did not read it"}.get(result, "")


def button_id_from(title: str) -> str:
    """`Book a table!` -> `book_a_table` (what the page's script writes as the title is typed)."""
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", title) if not unicodedata.combining(ch))
    return _NOT_WORD.sub("_", plain.lower()).strip("_")[:limits.BUTTON_ID_MAX_CHARS]


def _template(form: dict[str, str]) -> dict:
    """The form as message.json: empty optional texts left out; a button without an id gets one from its title."""
    template: dict = {"body_text": form.get("body_text", "")}
    for name in ("header_text", "footer_text"):
        if form.get(name):
            template[name] = form[name]
    filled = [i for i in range(1, BUTTON_SLOTS + 1) if form.get(f"button_id_{i}") or form.get(f"button_title_{i}")]
    template["buttons"] = [{"id": form.get(f"button_id_{i}") or button_id_from(form.get(f"button_title_{i}", "")),
                            "title": form.get(f"button_title_{i}", "")} for i in filled]
    return template


def _audience(session: Session, campaign_id: int, result: str, button: str) -> dict:
    """Who the follow-up would reach now: in words, counted, or why it cannot be made."""
    try:
        rules = audience.follow_up_rules(campaign_id, result, button or None)
        return {"words": segments.describe(session, rules), "members": segments.count(session, rules), "problem": None}
    except ButtoncastError as exc:
        text = "; ".join(p.problem for p in exc.problems) if isinstance(exc, MessageInvalid) else str(exc)
        return {"words": None, "members": None, "problem": text}


def _page(request: Request, rt: Runtime, campaign_id: int, result: str, button: str, values: dict[str, str],
          problems: list[FieldProblem] | None = None, status_code: int = 200) -> Response:
    general: list[str] = []
    by_field: dict[str, list[str]] = {}
    for problem in problems or []:
        field = _field_of(problem, values)
        if field is None:
            general.append(str(problem))
        else:
            by_field.setdefault(field, []).append(problem.problem)
    if problems and not general:
        general = [f"{len(problems)} field(s) need fixing; see the notes next to them."]
    with rt.read_sessions() as session:
        source = campaigns.get_campaign(session, campaign_id)
        reach = _audience(session, campaign_id, result, button)
    return render(request, "follow_up.html", status_code=status_code, c=source, result=result, button=button,
                  who=who(result, button, source), v=values, fp=by_field, problems=general, limits=LIMITS,
                  slots=range(1, BUTTON_SLOTS + 1), **reach)


def _field_of(problem: FieldProblem, form: dict[str, str]) -> str | None:
    """The input a problem is about (None: the form as a whole)."""
    if problem.field in FIELDS:
        return problem.field
    button = BUTTON_PROBLEM.fullmatch(problem.field)
    if button:
        filled = [i for i in range(1, BUTTON_SLOTS + 1) if form.get(f"button_id_{i}") or form.get(f"button_title_{i}")]
        index = int(button.group(1))
        return f"button_{button.group(2)}_{filled[index]}" if index < len(filled) else None
    return None


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
    try:
        follow = audience.create_follow_up(rt, campaign_id, template=_template(form), result=result,
                                           button=button or None, at=form.get("at") or None,
                                           name=form.get("name") or None, actor=person.actor)
    except MessageInvalid as exc:
        return _page(request, rt, campaign_id, result, button, form, exc.problems, 422)
    return redirect(f"/campaigns/{follow.id}", f"Follow-up of campaign {campaign_id} created and scheduled: "
                                               "its recipients are taken from the results when it starts.")
