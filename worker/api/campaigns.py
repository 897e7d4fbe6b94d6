"""`/v1/campaigns`: create (CSV upload or JSON), list, show, schedule/pause/resume/cancel/test, report; decide
an A/B test."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import StreamingResponse

from scheduler import audience, campaigns, experiments, report, snapshots
from worker.access.keys import Principal, Scope
from worker.api.auth import require
from worker.api.deps import CampaignId, decode_cursor, encode_cursor, runtime
from worker.api.schemas import (
    CampaignDetail,
    CampaignPage,
    CampaignSummary,
    CancelOut,
    DecideIn,
    ExperimentOut,
    FollowUpIn,
    FunnelOut,
    ImportReport,
    MessageCreated,
    PauseIn,
    ScheduleIn,
    Tap,
    TestIn,
)
from worker.api.uploads import CampaignUpload, campaign_upload
from worker.db import streamed_read
from worker.downloads import DownloadResponse
from worker.models import utcnow
from worker.runtime import Runtime
from worker.status import MessageStatus

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
CAMPAIGNS = Depends(require(Scope.CAMPAIGNS))
PAGE_SIZE_MAX = 200
CREATE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/CampaignMultipartIn"}},
    "application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/CampaignJsonIn"},
                                              {"$ref": "#/components/schemas/CampaignSegmentIn"}]}},
}}}


def _experiment(rt: Runtime, campaign_id: int) -> ExperimentOut | None:
    """An A/B test's state and figures, counted now (None for a campaign of one message)."""
    with rt.read_sessions() as session:
        return ExperimentOut.of(experiments.results(session, campaign_id, rt.settings.opt_out_button_ids))


def _summary(rt: Runtime, campaign_id: int) -> CampaignSummary:
    with rt.read_sessions() as session:
        return CampaignSummary.of(campaigns.get_campaign(session, campaign_id), campaigns.status_counts(session, campaign_id))


@router.post("", status_code=201, response_model=ImportReport, openapi_extra=CREATE_BODY)
def create_campaign(principal: Principal = CAMPAIGNS, upload: CampaignUpload = Depends(campaign_upload),
                    rt: Runtime = Depends(runtime)) -> ImportReport:
    """Create a campaign and import its recipients; 201 with the import report.
    (The key's scope is checked first: a key without it is refused before the body is read.)"""
    if "segment_id" in upload.options:
        return _create_for_segment(rt, upload.options, principal)
    with upload.named_as_uploaded():
        campaign, result = campaigns.create_from_options(rt, upload.recipients_path, actor=principal.actor, **upload.options)
    return ImportReport(id=campaign.id, status=campaign.status, imported=result.imported,
                        rejected=[{"line": p.line, "reason": p.reason} for p in result.problems],
                        rejected_total=result.rejected, duplicates=result.duplicates,
                        suppressed=result.opted_out,
                        attributes_stored=result.attributes.contacts if result.attributes is not None else None,
                        warnings=[n for n in (campaigns.past_start_note(campaign.scheduled_at),) if n],
                        experiment=_experiment(rt, campaign.id))


@router.get("", response_model=CampaignPage)
def list_campaigns(cursor: str | None = None, limit: int = Query(50, ge=1, le=PAGE_SIZE_MAX), _: Principal = CAMPAIGNS,
                   rt: Runtime = Depends(runtime)) -> CampaignPage:
    """Campaigns in id order with their message counts; follow `next_cursor`."""
    with rt.read_sessions() as session:
        rows = campaigns.list_campaigns(session, after_id=decode_cursor(cursor) or 0, limit=limit)
        data = [CampaignSummary.of(c, counts) for c, counts in rows]
    return CampaignPage(data=data, next_cursor=encode_cursor(data[-1].id) if len(data) == limit else None)


@router.get("/{campaign_id}", response_model=CampaignDetail)
def get_campaign(campaign_id: CampaignId, _: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> CampaignDetail:
    """Counts, rate, ETA, the funnel with taps per button, and late failures by reason. The campaign
    (status, pause reason) is read now; its figures come from the tally snapshot the console shows
    (at most a few seconds old, a large campaign's a little older: `counts_as_of` says when).
    An A/B test's `experiment` (per variant, and the decision) is counted now."""
    return _detail(rt, campaign_id)


def _detail(rt: Runtime, campaign_id: int) -> CampaignDetail:
    campaign, snapshot = snapshots.serve(rt, campaign_id)
    tally = snapshot.tally
    p = report.Progress(campaign, tally.counts, tally.funnel, rt.settings.rate_limit.per_second, utcnow())
    f = p.funnel
    return CampaignDetail(
        **CampaignSummary.of(campaign, p.counts).model_dump(), done=p.done, left=p.left,
        rate_per_minute=p.rate_per_minute, eta=p.eta(), late_failures=tally.late_failures,
        counts_as_of=snapshot.taken_at,
        funnel=FunnelOut(sent=f.sent, delivered=f.delivered, read=f.read, replied=f.replied,
                         taps=[Tap(button_id=b, title=t, count=n) for b, t, n in f.taps]),
        experiment=_experiment(rt, campaign_id))


@router.post("/{campaign_id}/schedule", response_model=CampaignSummary)
def schedule(campaign_id: CampaignId, body: ScheduleIn | None = Body(None), principal: Principal = CAMPAIGNS,
             rt: Runtime = Depends(runtime)) -> CampaignSummary:
    """draft (or paused, never started) -> scheduled, at `at` or the time given at creation, else now."""
    at = campaigns.parse_at(body.at, "at") if body and body.at else None
    campaigns.schedule_campaign(rt, campaign_id, at, actor=principal.actor)
    return _summary(rt, campaign_id)


@router.post("/{campaign_id}/pause", response_model=CampaignSummary)
def pause(campaign_id: CampaignId, body: PauseIn | None = Body(None), principal: Principal = CAMPAIGNS,
          rt: Runtime = Depends(runtime)) -> CampaignSummary:
    """Stop dispatching within one dispatcher tick; queued sends go back to pending."""
    campaigns.pause_campaign(rt, campaign_id, (body.reason if body else None) or campaigns.PAUSED_BY_OPERATOR,
                             actor=principal.actor)
    return _summary(rt, campaign_id)


@router.post("/{campaign_id}/resume", response_model=CampaignSummary)
def resume(campaign_id: CampaignId, principal: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> CampaignSummary:
    """Continue where it stopped: running, or scheduled if it never started."""
    campaigns.resume_campaign(rt, campaign_id, actor=principal.actor)
    return _summary(rt, campaign_id)


@router.post("/{campaign_id}/cancel", response_model=CancelOut)
def cancel(campaign_id: CampaignId, principal: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> CancelOut:
    """Every pending or queued message becomes cancelled; those mid-send finish on their own."""
    _, cancelled = campaigns.cancel_campaign(rt, campaign_id, actor=principal.actor)
    return CancelOut(**_summary(rt, campaign_id).model_dump(), cancelled_messages=cancelled)


@router.post("/{campaign_id}/decide", response_model=CampaignDetail)
def decide(campaign_id: CampaignId, body: DecideIn | None = Body(None), principal: Principal = CAMPAIGNS,
           rt: Runtime = Depends(runtime)) -> CampaignDetail:
    """An A/B test, decided now: `variant` (or, without one, the statistics' verdict) goes to the
    recipients held for the winner; attributed to the key in the audit trail. 409 when there is
    nothing to decide (decided already, test_share 1, cancelled, one message); 422 for a letter
    the campaign has no variant of."""
    experiments.decide(rt, campaign_id, variant=body.variant if body else None, actor=principal.actor)
    return _detail(rt, campaign_id)


@router.post("/{campaign_id}/test", status_code=202, response_model=MessageCreated)
def test(campaign_id: CampaignId, body: TestIn, principal: Principal = CAMPAIGNS, rt: Runtime = Depends(runtime)) -> MessageCreated:
    """The first recipient's message, to `phone`, now (an ad-hoc message; the campaign's counts are untouched)."""
    message_id = campaigns.send_test(rt, campaign_id, body.phone, actor=principal.actor)
    return MessageCreated(id=message_id, status=MessageStatus.QUEUED.value)


@router.get("/{campaign_id}/report", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}},
                                         "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}}})
def campaign_report(campaign_id: CampaignId, format: Literal["csv", "json"] = "csv", _: Principal = CAMPAIGNS,
                    rt: Runtime = Depends(runtime)) -> StreamingResponse:
    """One row per recipient, streamed as it is read (a million rows never sit in memory); the read
    ends with the response, whether sent in full or abandoned by the client."""
    stream = report.stream_csv if format == "csv" else report.stream_json
    chunks = streamed_read(rt.read_sessions, lambda session: report.report_rows(session, campaign_id), stream)
    media = "text/csv; charset=utf-8" if format == "csv" else "application/json"
    return DownloadResponse(chunks, media_type=media, filename=f"campaign-{campaign_id}.{format}")


def _create_for_segment(rt: Runtime, options: dict, principal: Principal) -> ImportReport:
    """`segment_id` instead of `recipients`: members are resolved when it starts (none imported now)."""
    campaign = audience.create_audience_campaign(rt, actor=principal.actor, **options)
    with rt.read_sessions() as session:
        words = audience.describe_lines(session, campaign)
    return ImportReport(id=campaign.id, status=campaign.status, imported=0, rejected=[], rejected_total=0, duplicates=0,
                        suppressed=0, audience=words,
                        warnings=[n for n in (campaigns.past_start_note(campaign.scheduled_at),) if n],
                        experiment=_experiment(rt, campaign.id))


@router.post("/{campaign_id}/follow-up", status_code=201, response_model=ImportReport)
def follow_up(campaign_id: CampaignId, body: FollowUpIn, principal: Principal = CAMPAIGNS,
              rt: Runtime = Depends(runtime)) -> ImportReport:
    """A campaign to a result of this one (who tapped `button`, tapped any button, did not tap, did
    not read), resolved when it starts; it keeps this campaign's sender and window."""
    follow = audience.create_follow_up(rt, campaign_id, template=body.message, result=body.result, button=body.button,
                                       at=body.at, name=body.name, actor=principal.actor)
    with rt.read_sessions() as session:
        words = audience.describe_lines(session, follow)
    return ImportReport(id=follow.id, status=follow.status, imported=0, rejected=[], rejected_total=0, duplicates=0,
                        suppressed=0, audience=words)
