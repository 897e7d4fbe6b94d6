"""Segments: the list (each counted now), one segment (its rules in words, members now, a sample),
the builder (rows of conditions, a live count) and delete. The same functions as `buttoncast
segment ...` and `/v1/segments` (worker.contacts.segments).

Marketers build and edit segments (they make campaigns from them); deleting one needs an admin,
since it pauses any recurring campaign that targets it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from scheduler import campaigns
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console import formats, segment_form
from worker.console.routes_campaigns import POSTED
from worker.console.segment_form import Bound, Row
from worker.console.web import allowed, redirect, render, runtime, templates
from worker.contacts import segments
from worker.contacts.segments import RulesInvalid
from worker.errors import FieldProblem, MessageInvalid
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
VIEW = Depends(allowed(Permission.VIEW))
SEND = Depends(allowed(Permission.SEND))
ADMIN = Depends(allowed(Permission.ADMIN))
SegmentId = Annotated[int, Path(ge=1, le=2**63 - 1)]
#: campaigns offered in a row's campaign list (by id; an older one can be named in the JSON)
CAMPAIGN_CHOICES = 200


def _choices(session: Session, editing: int | None) -> dict[str, Any]:
    """What the rows' lists offer: campaigns (with their buttons) and the other segments."""
    offered = [c for c in campaigns.list_campaign_rows(session, limit=CAMPAIGN_CHOICES) if c.series_every_s is None]
    listed = [{"id": c.id, "name": c.name, "buttons": [b for b in (c.template or {}).get("buttons") or []
                                                       if isinstance(b, dict) and b.get("id")]}
              for c in reversed(offered)]
    others = [{"id": s.id, "name": s.name} for s in segments.list_segments(session) if s.id != editing]
    return {"campaign_choices": listed, "campaign_ids": {str(c["id"]) for c in listed},
            "segment_choices": others, "segment_ids": {str(s["id"]) for s in others},
            "kinds": segment_form.KINDS, "kinds_by_value": segment_form.KIND_BY_VALUE}


def _counted(session: Session, bound: Bound) -> dict[str, Any]:
    """Members now and the rules in words, or the problems by row (binding's first, then the service's)."""
    if not bound.ok or bound.rules is None:
        return {"count": None, "words": None, "row_problems": bound.row_problems, "general": bound.general,
                "name_problems": []}
    try:
        members = segments.count(session, bound.rules)
        words = segments.describe(session, bound.rules)
    except RulesInvalid as exc:
        by_row, names, general = segment_form.row_problems(exc.problems, bound)
        return {"count": None, "words": None, "row_problems": by_row, "general": general, "name_problems": names}
    return {"count": members, "words": words, "row_problems": {}, "general": [], "name_problems": []}


def _builder(request: Request, rt: Runtime, bound: Bound, *, name: str, editing: int | None = None, fresh: bool = False,
             problems: list[FieldProblem] | None = None, status_code: int = 200) -> Response:
    """The builder page: new (`fresh`: nothing said about empty rows yet) or again with its problems."""
    with rt.read_sessions() as session:
        choices = _choices(session, editing)
        if fresh:
            state: dict[str, Any] = {"count": None, "words": None, "row_problems": {}, "general": [],
                                     "name_problems": []}
        else:
            state = _counted(session, bound)
    if problems:
        by_row, names, general = segment_form.row_problems(problems, bound)
        state.update(row_problems={**state["row_problems"], **by_row}, name_problems=names,
                     general=state["general"] + general)
    action = f"/segments/{editing}/edit" if editing else "/segments/new"
    return render(request, "segment_new.html", status_code=status_code, b=bound, segment_name=name, editing=editing,
                  action=action, blank=Row(), **choices, **state)


async def _form(request: Request) -> dict[str, str]:
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.get("/segments")
def segments_page(request: Request, person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    """Every segment with its rules in words and its members now (one count each)."""
    with rt.read_sessions() as session:
        shown = [segments.view(session, s) for s in segments.list_segments(session)]
    return render(request, "segments.html", segments=shown)


@router.get("/segments/new")
def new_segment(request: Request, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    return _builder(request, rt, Bound(rules=None, rows=[Row()]), name="", fresh=True)


@router.post("/segments/count", dependencies=POSTED)
async def count_rules(request: Request, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    """The builder's live count: the form's rules counted now (one query), or their problems by row.
    When the person edits the JSON, the rows that write it come back too (`rows_html`)."""
    form = await _form(request)
    bound = segment_form.bind(form)
    editing = int(form["editing"]) if form.get("editing", "").isdigit() else None
    rows_html = None
    with rt.read_sessions() as session:
        state = _counted(session, bound)
        if bound.source == "json" and bound.representable:
            rows_html = templates.env.get_template("_segment_rows.html").render(
                b=bound, row_problems=state["row_problems"], **_choices(session, editing))
    body = {"count": state["count"], "count_text": formats.count(state["count"]) if state["count"] is not None else "–",
            "words": state["words"], "problems": state["general"] + state["name_problems"],
            "rows": {str(i): p for i, p in state["row_problems"].items()},
            "rules": bound.json_text if bound.source == "rows" else None,
            "rows_html": rows_html, "representable": bound.representable if bound.readable else None}
    return JSONResponse(body, status_code=200 if state["count"] is not None else 422)


@router.post("/segments/new", dependencies=POSTED)
async def create_segment(request: Request, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    form = await _form(request)
    bound = segment_form.bind(form)
    if not bound.ok:
        return _builder(request, rt, bound, name=form.get("name", ""), status_code=422)
    try:
        segment = segments.create_segment(rt, name=form.get("name", ""), rules=bound.rules, actor=person.actor)
    except RulesInvalid as exc:
        return _builder(request, rt, bound, name=form.get("name", ""), problems=exc.problems, status_code=422)
    return redirect(f"/segments/{segment.id}", f"Segment “{segment.name}” saved.")


@router.get("/segments/{segment_id}")
def segment_page(request: Request, segment_id: SegmentId, person: Person = VIEW,
                 rt: Runtime = Depends(runtime)) -> Response:
    """The rules in words, members now, the first members, and what can be done with it."""
    with rt.read_sessions() as session:
        shown = segments.view(session, segment_id)
        sample = segments.sample(session, shown.rules) if shown.problem is None else []
    return render(request, "segment.html", s=shown, sample=sample, rules_json=segment_form.pretty(shown.rules))


@router.get("/segments/{segment_id}/edit")
def edit_segment(request: Request, segment_id: SegmentId, person: Person = SEND,
                 rt: Runtime = Depends(runtime)) -> Response:
    with rt.read_sessions() as session:
        segment = segments.get_segment(session, segment_id)
        name, rules = segment.name, segment.rules
    shown = segment_form.rows_from_rules(rules)
    if shown is None:   # nested rules: the JSON is the way to edit them
        bound = Bound(rules=rules, rows=[], source="json", json_text=segment_form.pretty(rules), representable=False)
    else:
        bound = Bound(rules=rules, rows=shown[1], match=shown[0], json_text=segment_form.pretty(rules))
    return _builder(request, rt, bound, name=name, editing=segment_id)


@router.post("/segments/{segment_id}/edit", dependencies=POSTED)
async def update_segment(request: Request, segment_id: SegmentId, person: Person = SEND,
                         rt: Runtime = Depends(runtime)) -> Response:
    form = await _form(request)
    bound = segment_form.bind(form)
    if not bound.ok:
        return _builder(request, rt, bound, name=form.get("name", ""), editing=segment_id, status_code=422)
    try:
        segment = segments.update_segment(rt, segment_id, name=form.get("name", ""), rules=bound.rules,
                                          actor=person.actor)
    except RulesInvalid as exc:
        return _builder(request, rt, bound, name=form.get("name", ""), editing=segment_id, problems=exc.problems,
                        status_code=422)
    return redirect(f"/segments/{segment_id}", f"Segment “{segment.name}” saved.")


@router.post("/segments/{segment_id}/delete", dependencies=POSTED)
def delete_segment(segment_id: SegmentId, person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    try:
        paused = segments.delete_segment(rt, segment_id, actor=person.actor)
    except MessageInvalid as exc:
        return redirect(f"/segments/{segment_id}", "Not done: " + "; ".join(p.problem for p in exc.problems))
    note = f" Paused the recurring campaign(s) that used it: {', '.join(map(str, paused))}." if paused else ""
    return redirect("/segments", f"Segment {segment_id} deleted.{note}")
