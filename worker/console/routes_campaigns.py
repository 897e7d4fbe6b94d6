"""The campaigns list, one campaign (live counts, funnel, an A/B test's variants, recipients), its
actions (an A/B test's "Decide now" among them) and downloads.

Each handler binds the form, checks the role and CSRF (dependencies), and calls the one service
function the CLI and the API call; errors from the service come back as a one-line notice.
"""

from __future__ import annotations

from typing import Callable, Iterator
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from scheduler import (
    audience,
    campaigns,
    caused_opt_outs,
    experiments,
    recipient_preview,
    report,
    snapshots,
)
from scheduler.retry import RetryRefused
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.tallies import CURRENT_S, tallies_for
from worker.console.web import allowed, csrf_checked, redirect, render, runtime
from worker.db import streamed_read
from worker.downloads import DownloadResponse
from worker.errors import ButtoncastError, MessageInvalid
from worker.lifecycle import operator_may
from worker.models import Campaign, Experiment, utcnow
from worker.runtime import Runtime
from worker.sending.history import list_messages
from worker.status import CampaignStatus, MessageStatus

router = APIRouter(include_in_schema=False)
VIEW = Depends(allowed(Permission.VIEW))
SEND = Depends(allowed(Permission.SEND))
POSTED = [Depends(csrf_checked)]
LIST_PAGE_SIZE = 50
RECIPIENTS_PAGE_SIZE = 50
RECIPIENTS_POLL_MS = 2000   # the recipients table's rows, re-read while the campaign may change them
#: a campaign in these may still change its recipients' statuses: their rows are polled
LIVE_STATUSES = (CampaignStatus.SCHEDULED.value, CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value)


def _id_or_none(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and len(text) < 19 else None


@router.get("/")
def campaigns_page(request: Request, status: str = "", after: str = "", person: Person = VIEW,
                   rt: Runtime = Depends(runtime)) -> Response:
    """Each campaign with its stored tally snapshot (time shown when not current); a campaign never
    counted yet (no beat running, no one looked) is counted here by status."""
    wanted = status if status in {s.value for s in CampaignStatus} else None
    now, per_second = utcnow(), rt.settings.rate_limit.per_second
    with rt.read_sessions() as session:
        rows = campaigns.list_campaign_rows(session, after_id=_id_or_none(after) or 0, limit=LIST_PAGE_SIZE, status=wanted)
        stored = snapshots.load_many(session, [c.id for c in rows])
        missing = [c.id for c in rows if c.id not in stored]
        counted = campaigns.status_counts_many(session, missing) if missing else {}
    progress, as_of = [], {}
    for c in rows:
        snapshot = stored.get(c.id)
        if snapshot is None:
            progress.append(report.Progress(c, counted.get(c.id) or campaigns.empty_counts(), report.Funnel(0, 0, 0, 0, 0),
                                            per_second, now))
            continue
        progress.append(report.Progress(c, snapshot.tally.counts, snapshot.tally.funnel, per_second, now,
                                        late_failures=snapshot.tally.late_failures))
        if snapshot.age_s(now) >= CURRENT_S:
            as_of[c.id] = snapshot.taken_at
    return render(request, "campaigns.html", rows=progress, as_of=as_of, status=wanted or "",
                  statuses=[s.value for s in CampaignStatus],
                  next_after=rows[-1].id if len(rows) == LIST_PAGE_SIZE else None)


def _campaign_context(session: Session, rt: Runtime, campaign_id: int) -> dict:
    """The campaign row read now (a status is never stale) and its counts from the tally snapshot
    (worker.console.tallies): `counts_as_of` is the snapshot's time when it is not current,
    `p` is None while a never-counted campaign has its first count."""
    campaign = campaigns.get_campaign(session, campaign_id)
    counts = tallies_for(rt).get(campaign_id)
    snapshot, p = counts.snapshot, None
    if snapshot is not None:
        t = snapshot.tally
        p = report.Progress(campaign, t.counts, t.funnel, rt.settings.rate_limit.per_second, utcnow(),
                            late_failures=t.late_failures)
    ended = campaign.status in (CampaignStatus.COMPLETED.value, CampaignStatus.CANCELLED.value)
    return {"p": p, "c": campaign, "late": p.late_failures if p else {}, "opt_out_ids": rt.settings.opt_out_button_ids,
            "counts_as_of": None if counts.current or snapshot is None else snapshot.taken_at,
            "final": ended and p is not None and p.left == 0 and counts.current and _after_end(snapshot, campaign)}


def _after_end(snapshot: snapshots.Snapshot | None, campaign: Campaign) -> bool:
    """Counts taken after the campaign ended are its last; older ones may predate its rows (an
    audience is resolved into recipients only when it starts), so the page polls on until recounted."""
    return snapshot is not None and (campaign.finished_at is None or snapshot.taken_at >= campaign.finished_at)


def _recipients(session: Session, campaign: Campaign, status: str, button: str, error_code: str, after: str) -> dict:
    """One keyset page of the recipients table in id order (a row keeps its place while the campaign
    sends), with the filters as given. `rows_live`: its rows are polled (RECIPIENTS_POLL_MS) while
    the campaign may change them; once it has ended the page refreshes them one last time."""
    wanted = status if status in {s.value for s in MessageStatus} else None
    after_id = _id_or_none(after) or 0
    rows = list_messages(session, campaign_id=campaign.id, status=wanted, after_id=after_id,
                         reply_button_id=button or None, error_code=error_code or None, limit=RECIPIENTS_PAGE_SIZE,
                         late_failures=True)   # `failed` and an error code or reason find the late failures too
    filters = {"status": wanted or "", "button": button, "error_code": error_code}
    return {"recipients": rows, **filters, "statuses": [s.value for s in MessageStatus], "paged": bool(after_id),
            "rows_query": urlencode({**filters, "after": after_id or ""}), "filters_query": urlencode(filters),
            "rows_live": campaign.status in LIVE_STATUSES, "rows_poll_ms": RECIPIENTS_POLL_MS,
            "next_after": rows[-1].id if len(rows) == RECIPIENTS_PAGE_SIZE else None}


@router.get("/campaigns/{campaign_id}")
def campaign_page(request: Request, campaign_id: int, status: str = "", button: str = "", error_code: str = "",
                  person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    with rt.read_sessions() as session:
        context = _campaign_context(session, rt, campaign_id)
        table = _recipients(session, context["c"], status, button, error_code, "")
        lines = audience.describe_lines(session, context["c"])   # its audience, follow-up source, series runs
        test = experiments.results(session, campaign_id, rt.settings.opt_out_button_ids)   # None: one message
        opted_out = caused_opt_outs.caused_count(session, campaign_id)   # recipients it made opt out
        picked = recipient_preview.preview(session, campaign_id)   # the first recipient's filled message
    return render(request, "campaign.html", **context, **table, audience_lines=lines, experiment=test, picked=picked,
                  caused_opt_outs=opted_out, opt_outs_definition=caused_opt_outs.DEFINITION)


@router.get("/campaigns/{campaign_id}/recipients")
def recipients_page(request: Request, campaign_id: int, status: str = "", button: str = "", error_code: str = "",
                    after: str = "", person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    """The recipients table alone, any page: no counts to compute, so page 500 costs what page 1 does."""
    with rt.read_sessions() as session:
        c = campaigns.get_campaign(session, campaign_id)
        table = _recipients(session, c, status, button, error_code, after)
    return render(request, "recipients.html", c=c, **table)


@router.get("/campaigns/{campaign_id}/recipients/rows")
def recipient_rows(request: Request, campaign_id: int, status: str = "", button: str = "", error_code: str = "",
                   after: str = "", person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    """The rows of one page of the recipients table, as they are now: what the page polls while sending."""
    with rt.read_sessions() as session:
        c = campaigns.get_campaign(session, campaign_id)
        table = _recipients(session, c, status, button, error_code, after)
    return render(request, "_recipient_rows.html", c=c, **table)


@router.get("/campaigns/{campaign_id}/live")
def campaign_live(request: Request, campaign_id: int, person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    """The fragment the page polls: counts, progress, rate, ETA, funnel."""
    with rt.read_sessions() as session:
        context = _campaign_context(session, rt, campaign_id)
    return render(request, "_live.html", **context)


def _act(rt: Runtime, campaign_id: int, action: Callable[[], object], done: str) -> Response:
    try:
        action()
    except (ButtoncastError, RetryRefused) as exc:
        tallies_for(rt).forget(campaign_id)  # it may have changed some rows before it was refused
        text = "; ".join(str(p) for p in exc.problems) if isinstance(exc, MessageInvalid) else str(exc)
        return redirect(f"/campaigns/{campaign_id}", f"Not done: {text}")
    tallies_for(rt).forget(campaign_id)  # its rows changed: older counts are shown with their time until recounted
    return redirect(f"/campaigns/{campaign_id}", done)


@router.post("/campaigns/{campaign_id}/schedule", dependencies=POSTED)
def schedule(campaign_id: int, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    return _act(rt, campaign_id, lambda: campaigns.schedule_campaign(rt, campaign_id, actor=person.actor),
                "Scheduled.")


@router.post("/campaigns/{campaign_id}/pause", dependencies=POSTED)
def pause(campaign_id: int, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    return _act(rt, campaign_id, lambda: campaigns.pause_campaign(rt, campaign_id, actor=person.actor),
                "Paused: nothing more is sent until you resume.")


@router.post("/campaigns/{campaign_id}/resume", dependencies=POSTED)
def resume(campaign_id: int, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    return _act(rt, campaign_id, lambda: campaigns.resume_campaign(rt, campaign_id, actor=person.actor), "Resumed.")


@router.get("/campaigns/{campaign_id}/cancel")
def cancel_page(request: Request, campaign_id: int, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    """The confirmation step of Cancel (console.js shows it in a dialog): how many recipients not yet
    sent will never be, from the tally snapshot (its time shown when not current)."""
    with rt.read_sessions() as session:
        context = _campaign_context(session, rt, campaign_id)
    c, p = context["c"], context["p"]
    if not operator_may(CampaignStatus(c.status), CampaignStatus.CANCELLED):
        return redirect(f"/campaigns/{campaign_id}", f"Not done: the campaign is {c.status}; only a scheduled, "
                                                     "running or paused campaign can be cancelled.")
    unsent = sum(p.counts.get(s, 0) for s in campaigns.CANCELLABLE) if p else None
    return render(request, "confirm.html", kind="cancel", c=c, unsent=unsent, counts_as_of=context["counts_as_of"],
                  sending=p.counts.get(MessageStatus.SENDING.value, 0) if p else 0,
                  action=f"/campaigns/{campaign_id}/cancel", back=f"/campaigns/{campaign_id}")


@router.post("/campaigns/{campaign_id}/cancel", dependencies=POSTED)
def cancel(campaign_id: int, person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    return _act(rt, campaign_id, lambda: campaigns.cancel_campaign(rt, campaign_id, actor=person.actor),
                "Cancelled: messages not yet sent will not be.")


@router.post("/campaigns/{campaign_id}/test", dependencies=POSTED)
def test_send(campaign_id: int, phone: str = Form(""), person: Person = SEND, rt: Runtime = Depends(runtime)) -> Response:
    result: dict[str, int] = {}

    def send() -> None:
        result["id"] = campaigns.send_test(rt, campaign_id, phone, actor=person.actor)

    response = _act(rt, campaign_id, send, "")
    if "id" in result:
        return redirect(f"/campaigns/{campaign_id}", f"Test message {result['id']} queued to {phone}.")
    return response


@router.get("/campaigns/{campaign_id}/decide")
def decide_page(request: Request, campaign_id: int, variant: str = "", person: Person = SEND,
                rt: Runtime = Depends(runtime)) -> Response:
    """The confirmation step of "Decide now": what goes to how many held recipients, and with no
    variant chosen, what the numbers so far say (the verdict the decision would take now)."""
    with rt.read_sessions() as session:
        c = campaigns.get_campaign(session, campaign_id)
        test = experiments.results(session, campaign_id, rt.settings.opt_out_button_ids)
    if test is None:
        return redirect(f"/campaigns/{campaign_id}", "Not done: this campaign is not an A/B test (it has one message).")
    letters = [v.letter for v in test["variants"]]
    chosen = variant.strip().upper()
    if chosen and chosen not in letters:
        return redirect(f"/campaigns/{campaign_id}",
                        f"Not done: {variant!r} is not one of its variants ({', '.join(letters)}).")
    verdict = None if chosen else experiments.verdict_now(test)
    return render(request, "decide.html", c=c, x=test, variant=chosen, verdict=verdict)


@router.post("/campaigns/{campaign_id}/decide", dependencies=POSTED)
def decide_now(campaign_id: int, variant: str = Form(""), person: Person = SEND,
               rt: Runtime = Depends(runtime)) -> Response:
    """`campaign decide ID [--variant B]`, attributed to the person."""
    decided: dict[str, object] = {}

    def run() -> None:
        decided["test"] = experiments.decide(rt, campaign_id, variant=variant or None, actor=person.actor)

    response = _act(rt, campaign_id, run, "")
    test = decided.get("test")
    if isinstance(test, Experiment):
        released = (test.decision or {}).get("released", 0)
        return redirect(f"/campaigns/{campaign_id}", f"Decided: variant {test.sent_variant} goes to the {released} "
                                                     "recipient(s) who were held.")
    return response


def _download(rt: Runtime, rows: Callable[[Session], Iterator[dict]], stream: Callable[[Iterator[dict]], Iterator[str]],
              filename: str, media: str) -> DownloadResponse:
    """Stream rows as they are read; the read session closes when the response ends, however it ends."""
    return DownloadResponse(streamed_read(rt.read_sessions, rows, stream), media_type=media, filename=filename)


@router.get("/campaigns/{campaign_id}/report.{fmt}")
def download_report(campaign_id: int, fmt: str, person: Person = VIEW, rt: Runtime = Depends(runtime)) -> Response:
    if fmt not in ("csv", "json"):
        return Response("report.csv or report.json", status_code=404)
    stream, media = (report.stream_csv, "text/csv; charset=utf-8") if fmt == "csv" else (report.stream_json, "application/json")
    return _download(rt, lambda s: report.report_rows(s, campaign_id), stream, f"campaign-{campaign_id}.{fmt}", media)


@router.get("/campaigns/{campaign_id}/tappers.csv")
def download_tappers(campaign_id: int, button: str = Query(..., min_length=1, max_length=256), person: Person = VIEW,
                     rt: Runtime = Depends(runtime)) -> Response:
    """Everyone who tapped `button`: a CSV with a phone column, ready to import as a new campaign."""
    return _download(rt, lambda s: report.tapper_rows(s, campaign_id, button),
                     lambda rows: report.stream_csv(rows, columns=report.TAPPER_COLUMNS),
                     f"campaign-{campaign_id}-tapped-{_safe_name(button)}.csv", "text/csv; charset=utf-8")


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)[:60]
