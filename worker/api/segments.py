"""`/v1/segments` (campaigns keys): saved audiences as rules, counted live; `POST /v1/segments/count`
counts unsaved rules (what a builder shows while a person writes them).

No Idempotency-Key on create: a segment's name is unique, so a repeated create is refused (422,
naming `name`) rather than made twice.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from worker.access.keys import Principal, Scope
from worker.api.auth import require
from worker.api.deps import ID_MAX, runtime
from worker.api.schemas import SegmentCount, SegmentCountIn, SegmentIn, SegmentList, SegmentOut, SegmentSummary
from worker.contacts import segments
from worker.runtime import Runtime

router = APIRouter(prefix="/v1/segments", tags=["segments"])
CAMPAIGNS = Depends(require(Scope.CAMPAIGNS))
SegmentId = Annotated[int, Path(ge=1, le=ID_MAX)]


def _out(rt: Runtime, segment_id: int) -> SegmentOut:
    with rt.read_sessions() as session:
        return SegmentOut.of(segments.view(session, segment_id))


@router.post("", status_code=201, response_model=SegmentOut)
def create_segment(body: SegmentIn, principal: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> SegmentOut:
    """Save rules under a unique name; 201 with the rules in words and the members now."""
    segment = segments.create_segment(rt, name=body.name, rules=body.rules, actor=principal.actor)
    return _out(rt, segment.id)


@router.get("", response_model=SegmentList)
def list_segments(_: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> SegmentList:
    """Every segment in id order with its rules in words (counts: get one segment)."""
    with rt.read_sessions() as session:
        return SegmentList(data=[SegmentSummary.of(segments.view(session, s, counted=False))
                                 for s in segments.list_segments(session)])


@router.post("/count", response_model=SegmentCount)
def count_rules(body: SegmentCountIn, _: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> SegmentCount:
    """Members now of unsaved rules (validated as a create would: 422 names each problem)."""
    with rt.read_sessions() as session:
        return SegmentCount(count=segments.count(session, body.rules))


@router.get("/{segment_id}", response_model=SegmentOut)
def get_segment(segment_id: SegmentId, _: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> SegmentOut:
    """A segment with its rules in words and its members now, counted as you ask."""
    return _out(rt, segment_id)


@router.delete("/{segment_id}", status_code=204, response_class=Response)
def delete_segment(segment_id: SegmentId, principal: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> Response:
    """Delete a segment (422 while another segment uses it); a live series targeting it is paused."""
    segments.delete_segment(rt, segment_id, actor=principal.actor)
    return Response(status_code=204)
