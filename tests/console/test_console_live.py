"""Issue 24 items 1 and 3: the rendered message and honest live figures.

- The rate over the last minute of *sending* time, on fixed times (scheduler.report: the tally's
  window and Progress.rate_per_minute): 6 s after the start at 600/min it says 600, not 10; after a
  resume it counts only what was sent since; none while paused, completed or cancelled, nor from
  figures counted before the latest resume; no ETA when paused, completed or cancelled.
- In a real browser (Playwright + Chromium against the console stack of test_console_browser): the
  recipients table shows statuses changing while the campaign sends (driven in the database, seen
  without a reload), in id order across pages; the live figures; the message as WhatsApp shows it on
  the review step, the campaign page and a message's page, filled with that recipient's values; the
  review's picker finds a recipient beyond the first 50. Screenshots at 1366 and 390 px in /tmp/shots.
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler import report, snapshots
from worker.db import make_engine, make_session_factory
from worker.models import Campaign, Message
from worker.sending.history import list_messages

T0 = datetime(2026, 12, 3, 10, 0, 0, tzinfo=timezone.utc)
TEMPLATE = {"header_text": "Spring sale", "body_text": "Hello {{name}}, 20 % off this week.\nInterested?",
            "footer_text": "Reply STOP to opt out",
            "buttons": [{"id": "yes", "title": "Yes please"}, {"id": "no", "title": "No thanks"}]}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def progress(status: str, funnel: report.Funnel, *, started: float | None = 0.0, resumed: float | None = None,
             left: int = 100, now: float = 0.0) -> report.Progress:
    campaign = Campaign(id=1, name="c", status=status, started_at=None if started is None else at(started),
                        late_breaker_since=None if resumed is None else at(resumed), template=TEMPLATE)
    counts = {**report.empty_counts(), "pending": left, "sent": funnel.sent}
    return report.Progress(campaign, counts, funnel, 10.0, at(now))


def counted(sent_in_window: int, since: float, until: float, sent: int = 0) -> report.Funnel:
    return report.Funnel(sent or sent_in_window, 0, 0, 0, sent_in_window, rate_since=at(since), rate_until=at(until))


# --- the rate, unit by unit ---------------------------------------------------------------------

def test_six_seconds_after_the_start_at_600_a_minute_the_rate_is_600_not_10() -> None:
    p = progress("running", counted(60, since=0, until=6), started=0, now=6)
    assert p.rate_window_s == 6.0 and p.rate_per_minute == 600


def test_a_full_minute_of_sending_is_the_count_of_that_minute() -> None:
    p = progress("running", counted(540, since=30, until=90, sent=900), started=0, now=90)
    assert p.rate_window_s == 60.0 and p.rate_per_minute == 540


def test_no_rate_while_paused_scheduled_completed_or_cancelled_whatever_was_counted() -> None:
    for status in ("paused", "scheduled", "completed", "cancelled", "draft"):
        assert progress(status, counted(403, since=30, until=90), now=90).rate_per_minute is None, status


def test_no_rate_from_figures_counted_before_the_latest_resume() -> None:
    # Given figures counted at 90 s over [30, 90], then a pause, and a resume at 120 s
    p = progress("running", counted(403, since=30, until=90), started=0, resumed=120, now=121)
    # Then the old rate is not shown as if it were the new one
    assert p.rate_per_minute is None and report.describe_rate(p).startswith("measuring")


def test_just_started_is_measuring_not_a_number() -> None:
    p = progress("running", counted(3, since=0, until=2), started=0, now=2)
    assert p.rate_per_minute is None and report.describe_rate(p) == "measuring (it has just started or resumed)"


def test_no_eta_when_paused_completed_or_cancelled_even_with_messages_left() -> None:
    running = progress("running", counted(60, since=0, until=6), left=100, now=6)
    assert running.eta() == at(6) + timedelta(seconds=10)   # 100 left at the rate limit of 10/s
    assert progress("scheduled", counted(0, 0, 0), left=100, now=6).eta() is not None
    assert progress("draft", counted(0, 0, 0), left=100, now=6).eta() is not None   # the review's estimate
    for status in ("paused", "completed", "cancelled"):
        p = progress(status, counted(60, since=0, until=6), left=3, now=6)   # e.g. 3 still `sending`
        assert p.eta() is None, status
    lines = report.describe(progress("paused", counted(0, 0, 0), left=3))
    assert "  estimate:   none while paused (3 left to send when it resumes)" in lines
    assert any(line.endswith("; rate: none (paused: nothing is being sent)") for line in lines)
    assert "  estimate:   none: cancelled" in report.describe(progress("cancelled", counted(0, 0, 0), left=2))


# --- the rate window, counted from the rows (report.tally, the snapshot the console reads) -----

@pytest.fixture()
def sf(sqlite_url: str):  # noqa: ANN201
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


def _campaign(sf, sends: list[float], *, started: float, resumed: float | None = None) -> int:  # noqa: ANN001
    """A running campaign with one sent message per entry of `sends` (seconds after T0) and 10 pending."""
    with sf.begin() as session:
        c = Campaign(name="rate", phone_number_id="123456", template=TEMPLATE, status="running", started_at=at(started),
                     late_breaker_since=None if resumed is None else at(resumed))
        session.add(c)
        session.flush()
        session.add_all([Message(campaign_id=c.id, phone_number_id="123456", phone=f"96650{i:07d}", content=TEMPLATE,
                                 status="sent", sent_at=at(s)) for i, s in enumerate(sends)])
        session.add_all([Message(campaign_id=c.id, phone_number_id="123456", phone=f"96651{i:07d}", content=TEMPLATE)
                         for i in range(10)])
        return c.id


def _progress_at(sf, campaign_id: int, now: float) -> report.Progress:  # noqa: ANN001
    with sf() as session:
        t = report.tally(session, campaign_id, at(now))
        campaign = session.get(Campaign, campaign_id)
        session.expunge(campaign)
    # what the console does: the tally stored as a snapshot and read back, paired with the campaign as it is now
    stored = snapshots._from_json(snapshots._to_json(t))
    return report.Progress(campaign, stored.counts, stored.funnel, 10.0, at(now))


def test_the_tally_counts_only_the_sending_time_since_the_start(sf) -> None:  # noqa: ANN001
    # Given a campaign started at T0 sending 10 a second: 60 sent in its first 6 s
    cid = _campaign(sf, [0.1 * k for k in range(1, 61)], started=0)
    p = _progress_at(sf, cid, 6)
    assert (p.funnel.sent_last_minute, p.rate_window_s, p.rate_per_minute) == (60, 6.0, 600)
    # (a trailing 60 s of wall time would have said 60/min)


def test_after_a_resume_only_what_was_sent_since_counts(sf) -> None:  # noqa: ANN001
    # Given 100 sent in [90, 100] s, a pause from 100 s to 120 s, and 100 sent in [120, 130] s after the resume
    sends = [90 + 0.1 * k for k in range(100)] + [120 + 0.1 * k for k in range(1, 101)]
    cid = _campaign(sf, sends, started=0, resumed=120)
    p = _progress_at(sf, cid, 130)
    # Then the rate is 100 in the 10 s since the resume: 600/min (the last 60 s of wall time: 200 -> 200/min)
    assert (p.funnel.sent_last_minute, p.rate_window_s, p.rate_per_minute) == (100, 10.0, 600)
    # and a minute later, the window is the last minute (nothing sent in it: 0/min, honestly)
    assert _progress_at(sf, cid, 200).rate_per_minute == 0


def test_paused_shows_no_rate_and_no_eta_from_the_same_rows(sf) -> None:  # noqa: ANN001
    cid = _campaign(sf, [0.1 * k for k in range(1, 61)], started=0)
    with sf.begin() as session:
        session.execute(sa.update(Campaign).where(Campaign.id == cid).values(status="paused"))
    p = _progress_at(sf, cid, 6)
    assert p.left == 10 and p.rate_per_minute is None and p.eta() is None


def test_the_recipients_pages_are_in_id_order_and_failed_merges_both_kinds_in_that_order(sf) -> None:  # noqa: ANN001
    """The recipients table's keyset pages (list_messages with after_id): id order, a page after the
    last id shown; `failed` (at send OR reported later) is read arm by arm and merged in id order."""
    with sf.begin() as session:
        c = Campaign(name="order", phone_number_id="123456", template=TEMPLATE, status="running")
        session.add(c)
        session.flush()
        kinds = ["failed" if i % 7 == 0 else "late" if i % 5 == 0 else "sent" for i in range(60)]
        session.add_all([Message(campaign_id=c.id, phone_number_id="123456", phone=f"96652{i:07d}", content=TEMPLATE,
                                 status="failed" if k == "failed" else "sent",
                                 failure_class="window_closed" if k == "late" else None,
                                 failure_code="131047" if k == "late" else None) for i, k in enumerate(kinds)])
        session.flush()
        cid = c.id
    with sf() as session:
        every = [m.id for m in list_messages(session, campaign_id=cid, after_id=0, limit=200)]
        assert every == sorted(every) and len(every) == 60
        first = [m.id for m in list_messages(session, campaign_id=cid, after_id=0, limit=25)]
        second = [m.id for m in list_messages(session, campaign_id=cid, after_id=first[-1], limit=25)]
        assert first + second == every[:50]
        failed = [every[i] for i, k in enumerate(kinds) if k != "sent"]
        page1 = list_messages(session, campaign_id=cid, status="failed", late_failures=True, after_id=0, limit=10)
        page2 = list_messages(session, campaign_id=cid, status="failed", late_failures=True, after_id=page1[-1].id, limit=10)
        assert [m.id for m in page1 + page2] == failed[:20]
        by_code = list_messages(session, campaign_id=cid, error_code="131047", late_failures=True, after_id=0, limit=200)
        assert [m.id for m in by_code] == [every[i] for i, k in enumerate(kinds) if k == "late"]


# --- in a real browser ------------------------------------------------------------------------------

from playwright.sync_api import expect  # noqa: E402

from tests.console.test_console_browser import _chromium, browser, browser_pages, make_campaign, stack  # noqa: E402, F401 - the same fixtures
from tests.console_stack import ConsoleStack  # noqa: E402
from worker.models import utcnow  # noqa: E402

SHOTS = Path("/tmp/shots")
DESKTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture()
def page_for(browser, stack: ConsoleStack):  # noqa: ANN001, ANN201, F811 - the imported fixtures
    """page_for(role) -> a logged-in page in a fresh browser context (its own cookies)."""
    with browser_pages(browser, stack) as make:
        yield make


def shoot(page, name: str, tmp_path: Path) -> None:  # noqa: ANN001
    """The whole page at 1366 and 390 px into /tmp/shots/i24_<name>_<width>.png; at 390 px the page
    itself never scrolls sideways (a wide table scrolls inside its own box)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for size in (DESKTOP, PHONE):
        page.set_viewport_size(size)
        page.evaluate("window.scrollTo(0, 0)")
        path = tmp_path / f"i24_{name}_{size['width']}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SHOTS / path.name)
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= size["width"], f"{name}: the page is {wide} px wide at {size['width']} px"
    page.set_viewport_size(DESKTOP)


def frozen_running(console: ConsoleStack, tmp_path: Path, prefix: str, count: int, *, sent: int = 0,
                   started_s_ago: float = 6.0) -> tuple[int, list[int]]:
    """A running campaign whose statuses only this test changes: `sent` sent over the last
    `started_s_ago` seconds, the rest queued for next year (the dispatcher leaves them alone)."""
    cid = make_campaign(console, tmp_path, [f"{prefix}{i:05d}" for i in range(count)], name=f"Live {prefix}", draft=True)
    now = utcnow()
    with console.runtime.session_factory.begin() as session:
        ids = list(session.scalars(sa.select(Message.id).where(Message.campaign_id == cid).order_by(Message.id)))
        session.execute(sa.update(Campaign).where(Campaign.id == cid).values(
            status="running", scheduled_at=now - timedelta(seconds=started_s_ago),
            started_at=now - timedelta(seconds=started_s_ago)))
        session.execute(sa.update(Message).where(Message.campaign_id == cid).values(
            status="queued", queued_at=now, enqueued_at=None, not_before=now + timedelta(days=365)))
        for k, message_id in enumerate(ids[:sent]):
            session.execute(sa.update(Message).where(Message.id == message_id).values(
                status="sent", sent_at=now - timedelta(seconds=started_s_ago * (1 - k / max(1, sent))), not_before=None))
    return cid, ids


def set_status(console: ConsoleStack, message_ids: list[int], status: str) -> None:
    with console.runtime.session_factory.begin() as session:
        session.execute(sa.update(Message).where(Message.id.in_(message_ids)).values(status=status, sent_at=utcnow()))


def row_ids(page) -> list[int]:  # noqa: ANN001
    return [int(x) for x in page.eval_on_selector_all("#recipient-rows tr[data-message]", "rows => rows.map(r => r.dataset.message)")]


@pytest.mark.slow
def test_the_recipients_table_shows_statuses_changing_while_it_sends_in_a_stable_order(
        page_for, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """Given a running campaign of 120 whose first 10 are sent: its page lists them oldest first; when
    3 more are sent (in the database), their rows say `sent` without a reload; the pages go on in id
    order (a status changing never moves a row), and the status filter keeps that order."""
    cid, ids = frozen_running(stack, tmp_path, "9665400", 120, sent=10)
    page = page_for("viewer")
    page.goto(f"/campaigns/{cid}")
    page.evaluate("window.__notReloaded = true")
    assert row_ids(page) == ids[:50]
    assert page.inner_text(f"#recipient-rows tr[data-message='{ids[10]}'] .status") == "queued"
    set_status(stack, ids[10:13], "sent")
    page.wait_for_selector(f"#recipient-rows tr[data-message='{ids[12]}'] .s-sent")
    assert page.evaluate("window.__notReloaded") is True and row_ids(page) == ids[:50]
    shoot(page, "3-live-table", tmp_path)

    with page.expect_navigation():
        page.click("#next-page")
    assert row_ids(page) == ids[50:100]
    set_status(stack, [ids[60]], "failed")
    page.wait_for_selector(f"#recipient-rows tr[data-message='{ids[60]}'] .s-failed")
    assert row_ids(page) == ids[50:100]      # the failed row stayed where it was
    with page.expect_navigation():
        page.click("#next-page")
    assert row_ids(page) == ids[100:] and page.locator("#next-page").count() == 0
    with page.expect_navigation():
        page.click("#first-page")
    assert row_ids(page) == ids[:50]

    page.select_option("#r-status", "sent")
    with page.expect_navigation():
        page.click("#recipients button[type=submit]")
    assert row_ids(page) == ids[:13]


@pytest.mark.slow
def test_the_rate_is_of_the_sending_time_and_goes_away_when_paused_and_the_eta_when_cancelled(
        page_for, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """Given a campaign that started 6 s ago and sent 60: the rate is 60 over those seconds scaled to a
    minute (a trailing minute of wall time would say at most 60); paused, no rate and no ETA; cancelled
    with messages still left, no ETA either."""
    cid, ids = frozen_running(stack, tmp_path, "9665410", 80, sent=60, started_s_ago=6.0)
    page = page_for("viewer")
    page.goto(f"/campaigns/{cid}")
    expect(page.locator("#rate")).to_have_text(re.compile(r"sending [0-9,]+/min"))
    rate = int(page.inner_text("#rate").split()[1].split("/")[0].replace(",", ""))
    assert rate > 60, page.inner_text("#live")   # 60 sent since the start, under a minute ago
    assert "of sending" in page.get_attribute("#rate", "title") and page.locator("#eta").count() == 1
    shoot(page, "3-live-rate", tmp_path)
    with stack.runtime.session_factory.begin() as session:
        session.execute(sa.update(Campaign).where(Campaign.id == cid).values(status="paused", pause_reason="paused by an operator"))
    expect(page.locator("#campaign-status")).to_have_text("paused")
    assert page.locator("#rate").count() == 0 and page.locator("#eta").count() == 0, page.inner_text("#live")
    with stack.runtime.session_factory.begin() as session:
        session.execute(sa.update(Campaign).where(Campaign.id == cid).values(status="cancelled", finished_at=utcnow()))
    expect(page.locator("#campaign-status")).to_have_text("cancelled")
    assert page.locator("#rate").count() == 0 and page.locator("#eta").count() == 0, page.inner_text("#live")


@pytest.mark.slow
def test_the_campaign_page_and_a_message_page_show_the_message_as_whatsapp_does_with_the_recipients_values(
        page_for, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """Given a campaign of 120 with a {{name}} column: its page shows the message as written (the
    placeholder marked, the buttons under the bubble) and the first recipient's filled message; the
    picker finds recipient 110 by the start of the number; a message's page shows its own filled message."""
    cid, ids = frozen_running(stack, tmp_path, "9665420", 120, sent=5)
    page = page_for("viewer")
    page.goto(f"/campaigns/{cid}")
    assert page.inner_text("#campaign-message .b-header") == "Spring sale"
    assert page.inner_text("#campaign-message .b-body") == "Hello {{name}}, 20 % off this week. Interested?"
    assert page.inner_text("#campaign-message mark.ph") == "{{name}}"
    assert page.locator("#campaign-message .b-buttons .b-button").all_inner_texts() == ["Yes please", "No thanks"]
    assert "Hello Name 0," in page.inner_text("#preview-recipient .b-body")
    page.fill("#preview-phone", "96654200011")
    page.wait_for_selector("#preview-matches a[data-phone='966542000110'][aria-current]")
    assert page.locator("#preview-matches a[data-phone]").count() == 8 and page.locator("#preview-more").count() == 1
    page.click("#preview-matches a[data-phone='966542000113']")
    expect(page.locator("#preview-recipient .b-body")).to_contain_text("Hello Name 113,")
    shoot(page, "1-campaign", tmp_path)

    page.goto(f"/messages/{ids[7]}")
    assert page.inner_text("#message-content .b-body") == "Hello Name 7, 20 % off this week. Interested?"
    assert page.locator("#message-content .b-button").all_inner_texts() == ["Yes please", "No thanks"]
    shoot(page, "1-message", tmp_path)


@pytest.mark.slow
def test_the_review_step_shows_the_message_and_its_picker_finds_a_recipient_beyond_the_first_50(
        page_for, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """Given a marketer importing a CSV of 120 on New campaign: the review shows the message as written
    and the first recipient's; typing the start of row 107's number finds it among all 120 (the
    editor's own picker only reads the file's first 50 rows) and shows its filled message."""
    page = page_for("marketer")
    page.goto("/campaigns/new")
    page.fill("#name", "Review with a picker")
    page.fill("#header_text", "Spring sale")
    page.fill("#body_text", "Hello {{name}}, 20 % off this week.")
    page.fill("#footer_text", "Reply STOP to opt out")
    page.fill("#button_title_1", "Yes please")
    page.fill("#button_title_2", "No thanks")
    csv_path = tmp_path / "people.csv"
    csv_path.write_text("phone,name\n" + "".join(f"9665430{i:05d},Name {i}\n" for i in range(120)), encoding="utf-8")
    page.set_input_files("#recipients", str(csv_path))
    page.click("#import")
    page.wait_for_selector("#message")
    assert page.inner_text("#campaign-message mark.ph") == "{{name}}"
    assert page.inner_text("#preview-recipient .b-body") == "Hello Name 0, 20 % off this week."
    page.fill("#preview-phone", "+966 543 000 10")
    page.wait_for_selector("#preview-matches a[data-phone='966543000100']")
    page.click("#preview-matches a[data-phone='966543000107']")
    expect(page.locator("#preview-recipient .b-body")).to_have_text("Hello Name 107, 20 % off this week.")
    assert page.locator("#preview-recipient .b-button").all_inner_texts() == ["Yes please", "No thanks"]
    page.fill("#preview-phone", "9665439")
    page.wait_for_selector("#preview-none")
    page.fill("#preview-phone", "966543000119")
    expect(page.locator("#preview-recipient .b-body")).to_have_text("Hello Name 119, 20 % off this week.")
    shoot(page, "1-review", tmp_path)
