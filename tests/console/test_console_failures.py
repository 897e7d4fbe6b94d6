"""Issue 24 items 2 and 7: late failures first-class in the console, the retry by reason, the audit
page and the opt-outs a campaign caused.

Plain tests run the services on SQLite and on Postgres (database_url): the console's filters and
counts of late failures, each reason's retry rule and the audit row of a retry, the definition of a
caused opt-out, the audit trail's keyset pages, the client address middleware. Browser tests drive
Debian's Chromium (Playwright) against real `buttoncast api`, worker, beat and webhook processes and
the sandbox (tests/console_stack.py, the fixtures of test_console_browser), which fails some sends,
reports others failed later (131047, 131050, 131026) and has two recipients reply STOP. Pages are
photographed at 1366 and 390 px into the test's tmp dir and /tmp/shots/i24_<item>_<what>_<width>.png.
"""

from __future__ import annotations

import csv
import io
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler import audit_trail, caused_opt_outs
from scheduler.audit_trail import AuditFilter, Cursor
from scheduler.campaigns import create_with_recipients
from scheduler.report import progress
from scheduler.retry import ForceNeeded, RetrySelection, retry_messages
from scheduler.retry_choices import retry_choices
from tests.conftest import make_runtime, wait_until
from tests.console.test_console_browser import TEMPLATE, _chromium, browser, browser_pages, stack  # noqa: F401 - the same fixtures
from tests.console_stack import FAIL_PREFIX, ConsoleStack
from tests.webhooks.test_late_failures import late_failed_campaign, running_campaign, sessions  # noqa: F401
from worker.audit import AuditEvent, RecordClientAddress, client_address, record_audit
from worker.contacts.service import SOURCE_KEYWORD, SOURCE_OPERATOR, opt_out
from worker.failures import FailureClass
from worker.models import Campaign, Message, utcnow
from worker.sending.history import list_messages

SHOTS = Path("/tmp/shots")
DESKTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}
#: the sandbox's answers, by phone prefix (the stack refuses FAIL_PREFIX phones when sending)
LATE = {"9665471": "131047", "9665472": "131050", "9665473": "131026"}
STOP_PREFIX = "9665474"


# --- services, on SQLite and Postgres --------------------------------------------------------------

def ids_of(messages: list[Message]) -> set[int]:
    return {m.id for m in messages}


def test_late_failures_count_as_failed_and_the_filters_find_them_by_code_and_reason(sessions: Any) -> None:  # noqa: F811
    """Given a campaign with late failures of three classes and one message refused when sending,
    `failed` finds both kinds, `sent` neither, and a code or a reason finds the late ones."""
    cid, by_class, _ = late_failed_campaign(sessions)
    with sessions.begin() as session:
        at_send = Message(campaign_id=cid, phone_number_id="123456", phone="970000000001", content={},
                          status="failed", last_error_code="131026", finished_at=utcnow())
        session.add(at_send)
    with sessions() as session:
        def listed(**filters: Any) -> set[int]:
            return ids_of(list_messages(session, campaign_id=cid, late_failures=True, limit=200, **filters))

        late = set(by_class["window_closed"] + by_class["undeliverable"] + by_class["opted_out"])
        assert listed(status="failed") == late | {at_send.id}
        assert listed(status="sent") == set(by_class["ok"])
        assert listed(error_code="131047") == listed(error_code="window_closed") == set(by_class["window_closed"])
        assert listed(error_code="131026") == set(by_class["undeliverable"]) | {at_send.id}   # at send and later
        assert listed(error_code="opted_out") == set(by_class["opted_out"])
        # without late_failures (the HTTP API): the statuses as stored
        assert ids_of(list_messages(session, campaign_id=cid, status="failed")) == {at_send.id}
        p = progress(session, cid, 1.0)
    assert (p.failed_at_send, p.failed_later, p.failed_total, p.sent_not_failed) == (1, 4, 5, 1)
    assert [(name, n) for name, _klass, n in p.late_failure_rows()] == [
        ("window_closed", 2), ("opted_out", 1), ("undeliverable", 1)]


def test_the_retry_offers_every_reason_with_its_count_and_its_rule_and_writes_the_audit_trail(
        sessions: Any, database_url: str) -> None:  # noqa: F811
    """Given late failures of three classes, the choices count each class (opted out: held back),
    opted_out and undeliverable are refused unless forced, and a retry is one audit row with its
    person and address."""
    cid, by_class, _ = late_failed_campaign(sessions)
    with sessions() as session:
        choices = retry_choices(session, cid)
    counts = {c.value: (c.resendable, c.held_back, c.needs_force) for c in choices.later}
    assert set(counts) == {k.value for k in FailureClass}
    assert counts["window_closed"] == (2, 0, False) and counts["undeliverable"] == (1, 0, True)
    assert counts["opted_out"] == (0, 1, True)         # the 131050 opted them out: never sent again
    assert choices.later[0].value == "window_closed" and choices.later[3].total == 0   # the most first
    assert (choices.at_send.resendable, choices.resendable, choices.campaign_status) == (0, 3, "completed")
    rt = make_runtime({"DATABASE_URL": database_url})
    try:
        for klass in (FailureClass.OPTED_OUT, FailureClass.UNDELIVERABLE):
            with pytest.raises(ForceNeeded) as refused:
                retry_messages(rt, RetrySelection(campaign_id=cid, reason=klass), actor="user:ana@example.com")
            assert refused.value.reason is klass
        token = client_address.set("203.0.113.9")
        try:
            plan, result = retry_messages(rt, RetrySelection(campaign_id=cid, reason=FailureClass.WINDOW_CLOSED),
                                          actor="user:ana@example.com")
        finally:
            client_address.reset(token)
    finally:
        rt.close()
    assert plan.total == result.requeued == 2
    with sessions() as session:
        rows = session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "campaign.retried",
                                                           AuditEvent.subject_id == cid)).all()
    assert [(r.actor, r.address, r.detail["reason"], r.detail["planned"]) for r in rows] == [
        ("user:ana@example.com", "203.0.113.9", "window_closed", 2)]


def test_an_opt_out_is_the_campaigns_when_its_message_was_the_last_one_before_it(sessions: Any) -> None:  # noqa: F811
    """Caused: a STOP after this campaign's message. Not caused: one before it, one after a later
    message of another campaign, an operator's opt-out, a recipient never sent it."""
    cid, ids, _ = running_campaign(sessions, 5)
    other, _other_ids, _ = running_campaign(sessions, 1)
    now = utcnow()
    with sessions.begin() as session:
        phones = [session.get(Message, i).phone for i in ids]
        sent = {i: session.get(Message, i).sent_at for i in ids}
        opt_out(session, phones[0], source=SOURCE_KEYWORD, reason="replied 'STOP'", at=now)              # caused
        opt_out(session, phones[1], source=SOURCE_KEYWORD, at=sent[ids[1]] - timedelta(minutes=5))        # before it
        # a later message (another campaign) reached phones[2] before they opted out: that one caused it
        session.add(Message(campaign_id=other, phone_number_id="123456", phone=phones[2], content={}, status="sent",
                            sent_at=now - timedelta(milliseconds=500)))
        opt_out(session, phones[2], source=SOURCE_KEYWORD, at=now)
        opt_out(session, phones[3], source=SOURCE_OPERATOR, at=now)                                       # operator
        session.execute(sa.update(Message).where(Message.id == ids[4]).values(sent_at=None, status="pending"))
        opt_out(session, phones[4], source=SOURCE_KEYWORD, at=now)                                        # never sent
    with sessions() as session:
        assert caused_opt_outs.caused_count(session, cid) == 1
        page = caused_opt_outs.caused_page(session, cid)
    assert [(r.phone, r.message_id, r.how) for r in page] == [(phones[0], ids[0], "replied with a stop word")]
    with sessions.begin() as session:
        session.execute(sa.update(Campaign).where(Campaign.id == cid).values(started_at=None))
    with sessions() as session:
        assert caused_opt_outs.caused_count(session, cid) == 0   # never started: nothing sent, nothing caused


def test_the_audit_trail_pages_newest_first_without_gaps_and_filters(sessions: Any) -> None:  # noqa: F811
    """Given 130 rows (some sharing a time), the pages walk them all newest first, once each; the
    filters narrow by who, what, on what and when; the CSV has every matching row."""
    tag = f"pager{utcnow().timestamp():.0f}"
    start = utcnow()
    with sessions.begin() as session:
        for i in range(130):
            actor = f"user:{tag}-{i % 3}@example.com"
            session.add(AuditEvent(actor=actor, action="campaign.paused" if i % 2 else "segment.created",
                                   subject_type="campaign" if i % 2 else "segment", subject_id=i, detail={"i": i},
                                   at=start + timedelta(seconds=i // 4), address="198.51.100.7"))
    wanted = AuditFilter(actor=tag)
    seen, cursor = [], None
    with sessions() as session:
        while True:
            page = audit_trail.audit_page(session, wanted, before=Cursor.parse(str(cursor)) if cursor else None)
            seen += [row.subject_id for row in page.rows]
            cursor = page.next
            if cursor is None:
                break
        assert seen == list(range(129, -1, -1))   # each row once, newest first (ties by id)
        only = audit_trail.audit_page(session, AuditFilter(actor=f"{tag}-1", action="campaign.", subject_type="campaign",
                                                           subject_id=7)).rows
        assert [(r.subject_id, r.who, r.address) for r in only] == [(7, f"{tag}-1@example.com", "198.51.100.7")]
        window = audit_trail.audit_page(session, AuditFilter(actor=tag, since=start + timedelta(seconds=30),
                                                             until=start + timedelta(seconds=31))).rows
        assert sorted(r.subject_id for r in window) == [120, 121, 122, 123]
        rows = "".join(audit_trail.stream_audit_csv(audit_trail.audit_rows(session, AuditFilter(actor=f"{tag}-2"))))
    table = list(csv.DictReader(io.StringIO(rows)))
    assert len(table) == 43 and table[0]["who"] == f"{tag}-2@example.com" and table[0]["detail"] == '{"i": 128}'
    assert audit_trail.who("apikey:bc1a2b3c:crm") == "API key crm (bc1a2b3c)" and audit_trail.who("operator") == "command line"
    assert audit_trail.subject_type_of("Person") == "console_user" and audit_trail.subject_type_of("campaign") == "campaign"


def test_every_request_carries_its_client_address_to_the_audit_trail() -> None:
    """The middleware sets worker.audit.client_address for the request (a sync handler, on a worker
    thread, sees it) and clears it afterwards."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    def handler(_request: Any) -> PlainTextResponse:
        return PlainTextResponse(str(client_address.get()))

    app = RecordClientAddress(Starlette(routes=[Route("/", handler)]))
    with TestClient(app, client=("192.0.2.44", 5000)) as client:
        assert client.get("/").text == "192.0.2.44"
    assert client_address.get() is None
    added: list[Any] = []

    class Recorder:
        def add(self, row: Any) -> None:
            added.append(row)

    record_audit(Recorder(), None, "x", "y", None)   # no actor: an internal change, nothing written
    assert added == []


# --- the console in a browser ----------------------------------------------------------------------

@pytest.fixture()
def page_for(browser, stack: ConsoleStack):  # noqa: ANN001, ANN201, F811 - the imported fixtures
    """page_for(role) -> a logged-in page in a fresh browser context (its own cookies)."""
    with browser_pages(browser, stack, accept_downloads=True) as make:
        yield make


@pytest.fixture()
def shoot(tmp_path: Path):  # noqa: ANN201
    """shoot(page, name): the whole page at 1366 and 390 px into tmp_path and /tmp/shots/i24_<name>_<width>.png;
    at 390 px nothing may be wider than the screen."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def _shoot(page, name: str) -> None:  # noqa: ANN001
        for size in (DESKTOP, PHONE):
            page.set_viewport_size(size)
            path = tmp_path / f"i24_{name}_{size['width']}.png"
            page.screenshot(path=str(path), full_page=True)
            shutil.copy(path, SHOTS / path.name)
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= size["width"], f"{name}: the page is {wide} px wide at {size['width']} px"
        page.set_viewport_size(DESKTOP)

    return _shoot


@pytest.fixture(scope="module")
def failing(stack: ConsoleStack, tmp_path_factory: pytest.TempPathFactory) -> int:  # noqa: F811
    """A finished campaign of 15: 6 fine, 2 refused when sending, 5 reported failed later (3 x 131047,
    131050, 131026), 2 who reply STOP; every webhook applied."""
    from worker.sandbox import SandboxClient

    SandboxClient(stack.sandbox.base_url).configure(late_fail_prefixes=LATE, stop_reply_prefixes=[STOP_PREFIX])
    phones = ([f"96650001{i:04d}" for i in range(6)] + [f"{FAIL_PREFIX}0001{i:03d}" for i in range(2)]
              + [f"9665471{i:05d}" for i in range(3)] + ["966547200001", "966547300001"]
              + [f"9665474{i:05d}" for i in range(2)])
    path = tmp_path_factory.mktemp("failing") / "recipients.csv"
    path.write_text("phone,name\n" + "".join(f"{p},Name {i}\n" for i, p in enumerate(phones)), encoding="utf-8")
    cid, _ = create_with_recipients(stack.runtime.session_factory, path, name="Late failures", phone_number_id="123456",
                                    template=TEMPLATE)

    def settled() -> bool:
        with stack.runtime.session_factory() as session:
            p = progress(session, cid, 1.0)
            opted = caused_opt_outs.caused_count(session, cid)
        return p.campaign.status == "completed" and p.left == 0 and p.failed_later == 5 and opted == 3

    wait_until(settled, timeout_s=60, what="the campaign to finish with its late failures and opt-outs")
    return cid


def open_settled(page, url: str, selector: str, expected: str) -> None:  # noqa: ANN001
    """Open `url` until `selector` reads `expected` (its counts may predate the last webhooks)."""
    def shown() -> bool:
        page.goto(url)
        return page.locator(selector).count() > 0 and page.inner_text(selector).strip() == expected

    wait_until(shown, timeout_s=30, interval_s=0.5, what=f"{selector} to read {expected} on {url}")


def test_the_campaign_page_counts_late_failures_as_failed_split_by_when_and_reason(
        page_for, failing: int, shoot) -> None:  # noqa: ANN001
    """Given 2 refused when sending and 5 reported later, the counts say failed 7 (2 at send, 5 later),
    sent 8, and the failures section lists each reason with its count and a link to them."""
    page = page_for("marketer")
    open_settled(page, f"/campaigns/{failing}", "[data-count=failed]", "7")
    assert page.inner_text("[data-count=failed-at-send]") == "2" and page.inner_text("[data-count=failed-later]") == "5"
    assert page.inner_text("[data-count=sent]") == "8"   # the 6 fine and the 2 who replied STOP
    later = page.locator("#failures li[data-late=window_closed]")
    assert "24-hour window closed" in later.inner_text() and "3" in later.inner_text()
    assert page.locator("#failures li[data-late]").count() == 3
    page.locator("#failures").scroll_into_view_if_needed()
    shoot(page, "2_counts")
    later.locator("a").click()
    page.wait_for_url("**/recipients?error_code=window_closed")
    assert page.locator("#recipient-rows tr[data-message]").count() == 3


def test_the_recipients_filters_find_late_failures_and_the_message_page_says_why(page_for, failing: int) -> None:  # noqa: ANN001
    """Filtering by status failed finds the 7, by 131047 or window_closed the 3; a 131047 message's
    page gives its code, its reason, what it means and WhatsApp's words."""
    page = page_for("viewer")
    counts = {}
    for query in ("status=failed", "status=sent", "error_code=131047", "error_code=window_closed", "error_code=131050"):
        page.goto(f"/campaigns/{failing}/recipients?{query}")
        counts[query] = page.locator("#recipient-rows tr[data-message]").count()
    assert counts == {"status=failed": 7, "status=sent": 8, "error_code=131047": 3, "error_code=window_closed": 3,
                      "error_code=131050": 1}
    page.goto(f"/campaigns/{failing}/recipients?error_code=131047")
    assert page.locator("#recipient-rows tr[data-message] >> text=failed later").count() == 3
    page.locator("#recipient-rows tr[data-message] a").first.click()
    late = page.locator("#late-failure")
    assert late.locator("[data-late=code]").inner_text().startswith("131047")
    assert "window_closed" in late.locator("[data-late=class]").inner_text()
    assert "24-hour window was closed" in late.locator("[data-late=meaning]").inner_text()
    assert "131047" in late.locator("[data-late=words]").inner_text()   # the vendor's own text


def test_the_retry_page_offers_each_reason_with_its_count_refuses_opted_out_and_is_audited(
        page_for, stack: ConsoleStack, failing: int, shoot) -> None:  # noqa: ANN001, F811
    """The retry page counts the 2 refused when sending and each later reason; sending opted_out
    again is refused by the service; resending window_closed requeues 3 and the admin's audit page
    shows who did it and from where."""
    page = page_for("marketer")
    page.goto(f"/campaigns/{failing}/retry")
    assert "2 failed message(s) would be sent again" in page.inner_text("#retry-count")
    row = {r: page.locator(f"#late-choices tr[data-reason={r}]") for r in ("window_closed", "opted_out", "undeliverable")}
    assert row["window_closed"].locator("[data-count]").inner_text() == "3"
    assert row["opted_out"].locator("[data-count]").inner_text() == "1"
    assert "Never sent again" in row["opted_out"].inner_text() and row["opted_out"].locator("button").count() == 0
    assert row["undeliverable"].locator("input[name=anyway][required]").count() == 1
    assert page.locator("#late-choices tr[data-reason]").count() == len(FailureClass)
    shoot(page, "2_retry")
    token = page.get_attribute("form[action='/logout'] input[name=csrf_token]", "value")
    answer = page.request.post(f"/campaigns/{failing}/retry", form={"csrf_token": token, "reason": "opted_out"},
                               headers={"Origin": stack.base_url})
    assert "stopped marketing messages" in answer.text()
    with stack.runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Message).where(
            Message.campaign_id == failing, Message.failure_class == "opted_out")) == 1   # untouched
    page.goto(f"/campaigns/{failing}/retry")
    page.click("#late-choices button[data-retry=window_closed]")
    assert "3 message(s) WhatsApp reported failed later" in page.inner_text(".flash")

    admin = page_for("admin")
    assert admin.locator("nav >> text=Audit").count() == 1 and page.locator("nav >> text=Audit").count() == 0
    assert page.goto("/audit").status == 403
    admin.goto("/audit")
    first = admin.locator("#audit tbody tr[data-action='campaign.retried']")   # newest first: after it, the admin's login
    assert first.count() == 1
    assert "marketer@example.com" in first.inner_text() and first.locator(".address").inner_text() == "127.0.0.1"
    assert "window_closed" in first.inner_text()
    shoot(admin, "7_audit")
    admin.fill("#f-actor", "marketer")
    admin.fill("#f-action", "campaign.retried")
    admin.fill("#f-subject", f"campaign {failing}")
    admin.click("#audit-filter")
    assert admin.locator("#audit tbody tr[data-action]").count() == 1
    with admin.expect_download() as download:
        admin.click("#audit-export")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert [(r["action"], r["who"], r["address"], r["subject_id"]) for r in rows] == [
        ("campaign.retried", "marketer@example.com", "127.0.0.1", str(failing))]
    admin.fill("#f-subject", "campaign x y")
    admin.click("#audit-filter")
    assert "e.g. campaign 12" in admin.inner_text("#f-subject-error")
    admin.goto("/audit?since=2999-01-01T00:00")
    assert admin.locator("#audit tbody tr[data-action]").count() == 0


def test_the_campaign_page_counts_the_opt_outs_it_caused_and_lists_them(page_for, failing: int, shoot) -> None:  # noqa: ANN001
    """2 replied STOP and 1 was reported as having stopped marketing messages (131050): 3, with the
    definition on the page and a link to who they are."""
    page = page_for("viewer")
    page.goto(f"/campaigns/{failing}")
    section = page.locator("#campaign-opt-outs")
    assert section.locator("[data-count=caused-opt-outs]").inner_text() == "3"
    assert "replied STOP" in section.inner_text()
    page.click("#opt-outs-link")
    rows = page.locator("#opt-outs tbody tr[data-phone]")
    assert rows.count() == 3
    assert sorted(r.get_attribute("data-phone")[:7] for r in rows.all()) == ["9665472", STOP_PREFIX, STOP_PREFIX]
    shoot(page, "7_opt_outs")
