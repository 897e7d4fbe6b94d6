"""The web console in a real browser: Playwright for Python driving Debian's Chromium against real
`buttoncast api`, worker, beat and webhook processes, the sandbox, Postgres and Redis.

Chromium is found at $CHROMIUM_PATH (default /usr/bin/chromium; `.ci/run` installs it). Under CI=true
a missing Chromium fails these tests; elsewhere they skip. Every page is photographed at desktop
(1280x800) and phone (390x844) width into tests/screenshots/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import csv
import io
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from scheduler import campaigns, report
from scheduler.campaigns import create_with_recipients
from tests.conftest import IN_CI, _empty, wait_until
from tests.console_stack import FAIL_PREFIX, PASSWORD, ConsoleStack, start_console_stack
from worker.models import utcnow

pytestmark = pytest.mark.slow
CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TEMPLATE = {"header_text": "Spring sale", "body_text": "Hello {{name}}, 20 % off this week. Interested?",
            "footer_text": "Reply STOP to opt out", "buttons": [{"id": "yes", "title": "Yes please"}, {"id": "no", "title": "No thanks"}]}


def _chromium() -> str:
    if not os.access(CHROMIUM_PATH, os.X_OK):
        message = f"no Chromium at {CHROMIUM_PATH} (set CHROMIUM_PATH, or apt-get install chromium)"
        if IN_CI:
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return CHROMIUM_PATH


@pytest.fixture(scope="module")
def stack(migrated_postgres: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    import redis

    _chromium()
    _empty(migrated_postgres)
    redis.Redis.from_url(redis_url).flushdb()
    console = start_console_stack(migrated_postgres, redis_url, tmp_path_factory.mktemp("console"))
    yield console
    console.close()
    _empty(migrated_postgres)


@pytest.fixture(scope="module")
def browser(stack: ConsoleStack):  # noqa: ANN201
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@contextmanager
def browser_pages(browser, stack: ConsoleStack, **options):  # noqa: ANN001, ANN003, ANN201
    """A factory page_for(role=None, **more) -> a page in a fresh browser context (its own cookies), at
    desktop size on the stack, logged in as `role` (None: not logged in). `options` and `more` are
    Playwright's context options; every console test module's `page_for` fixture is this."""
    contexts = []

    def _page(role: str | None = None, **more):  # noqa: ANN003, ANN202
        context = browser.new_context(**{"viewport": DESKTOP, "base_url": stack.base_url, **options, **more})
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        if role:
            log_in(page, stack.emails[role], PASSWORD)
            assert page.url.rstrip("/") == stack.base_url, page.content()[:2000]
        return page

    try:
        yield _page
    finally:
        for context in contexts:
            context.close()


@pytest.fixture()
def page_for(browser, stack: ConsoleStack):  # noqa: ANN001, ANN201
    """page_for(role) -> a logged-in page in a fresh browser context (its own cookies).
    bypass_csp: Playwright's string wait_for_function evaluates code that the console's CSP forbids (no
    'unsafe-eval'); the policy itself is held by tests/console/test_console_security.py, in contexts without it."""
    with browser_pages(browser, stack, accept_downloads=True, bypass_csp=True) as make:
        yield make


def log_in(page, email: str, password: str) -> None:  # noqa: ANN001
    page.goto("/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def shoot(page, name: str) -> None:  # noqa: ANN001
    """The page at desktop and at phone width (whole page), then back to desktop."""
    SCREENSHOTS.mkdir(exist_ok=True)
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


def csrf_of(page) -> str:  # noqa: ANN001
    return page.get_attribute("form[action='/logout'] input[name=csrf_token]", "value")


def make_campaign(stack: ConsoleStack, tmp_path: Path, phones: list[str], **fields) -> int:  # noqa: ANN003
    path = tmp_path / "recipients.csv"
    path.write_text("phone,name\n" + "".join(f"{p},Name {i}\n" for i, p in enumerate(phones)), encoding="utf-8")
    cid, _ = create_with_recipients(stack.runtime.session_factory, path, name=fields.pop("name", "fixture"),
                                    phone_number_id="123456", template=TEMPLATE, **fields)
    return cid


def status_of(stack: ConsoleStack, cid: int) -> str:
    with stack.runtime.session_factory() as session:
        return campaigns.get_campaign(session, cid).status


def finished(stack: ConsoleStack, cid: int, taps: bool = False) -> bool:
    with stack.runtime.session_factory() as session:
        p = report.progress(session, cid, 1.0)
        return p.campaign.status == "completed" and p.left == 0 and (not taps or p.funnel.replied > 0)


@pytest.fixture(scope="module")
def done_campaign(stack: ConsoleStack, tmp_path_factory: pytest.TempPathFactory) -> int:
    """A finished campaign of 24 recipients, 4 refused by the vendor, with some buttons tapped."""
    phones = [f"9665000{i:05d}" for i in range(20)] + [f"{FAIL_PREFIX}00{i:05d}" for i in range(4)]
    cid = make_campaign(stack, tmp_path_factory.mktemp("done"), phones, name="Finished spring sale")
    wait_until(lambda: finished(stack, cid, taps=True), timeout_s=60, what="the campaign to finish with taps")
    return cid


def test_log_in_and_out(page_for, stack: ConsoleStack) -> None:
    """Given a marketer, when they log in, the campaigns page shows who they are; logging out ends the session."""
    page = page_for()
    page.goto("/")
    assert "/login" in page.url  # not logged in: sent to the login form
    shoot(page, "login")
    log_in(page, stack.emails["marketer"], PASSWORD)
    assert page.locator("h1").inner_text() == "Campaigns"
    assert "marketer@example.com" in page.locator(".whoami").inner_text()
    cookie = next(c for c in page.context.cookies() if c["name"] == "bc_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]  # plain http here
    page.click("text=Log out")
    page.goto("/")
    assert "/login" in page.url


def test_new_campaign_counters_import_report_schedule_and_live_counts(page_for, stack: ConsoleStack, tmp_path: Path) -> None:
    """Given a marketer on New campaign: a 21-character button title is refused by the counter (an emoji
    counts one); a CSV with bad rows shows its rejected lines before anything is sent; confirming
    schedules it, and the campaign page's counts reach the end without a reload."""
    page = page_for("marketer")
    page.click("text=New campaign")
    page.fill("#name", "Browser spring sale")
    page.fill("#header_text", "Spring sale")
    page.fill("#body_text", "Hello {{name}} 🌷 20 % off this week")
    page.fill("#footer_text", "مرحبا — reply STOP to opt out")
    page.fill("#button_title_1", "👍" * 20)
    assert page.inner_text("#button_title_1-count") == "20 / 20"  # an emoji is one, as the server counts
    page.fill("#button_title_1", "a" * 21)
    assert page.inner_text("#button_title_1-count") == "21 / 20"
    assert "over" in page.get_attribute("#button_title_1-count", "class")
    good = [f"9665100{i:05d}" for i in range(10)]
    lines = ["phone,name"] + [f"{p},Name {i}" for i, p in enumerate(good)] + ["12ab,Bad phone", f"{good[0]},Duplicate", "966511111111,"]
    upload = tmp_path / "spring.csv"
    upload.write_text("\n".join(lines) + "\n", encoding="utf-8")
    page.set_input_files("#recipients", str(upload))
    page.click("#import")
    assert page.eval_on_selector("#button_title_1", "e => e.validity.valid") is False
    assert "/campaigns/new" in page.url and page.locator("#rejected").count() == 0  # the browser refused to submit
    page.fill("#button_title_1", "Yes please")
    page.fill("#button_title_2", "No thanks")
    page.select_option("#preview-row", index=1)
    assert page.inner_text("#preview-body_text") == "Hello Name 1 🌷 20 % off this week"
    assert page.get_attribute("#preview-footer_text", "dir") == "auto"
    shoot(page, "new-campaign")
    page.click("#import")
    page.wait_for_selector("#rejected")
    lines_rejected = page.locator("#rejected tbody td:first-child").all_inner_texts()
    assert lines_rejected == ["12", "14"], page.inner_text("#rejected")  # the bad phone, the empty {{name}}
    assert page.inner_text("#imported") == "10" and page.inner_text("#rejected-count") == "2" and page.inner_text("#duplicates") == "1"
    shoot(page, "review")
    cid = int(page.get_attribute("form[action$='/schedule']", "action").split("/")[2])
    with stack.runtime.session_factory() as session:  # a draft: nothing sent, nothing queued
        assert campaigns.get_campaign(session, cid).status == "draft"
        assert campaigns.status_counts(session, cid)["pending"] == 10
    page.click("#confirm")
    page.wait_for_url(f"**/campaigns/{cid}")
    page.evaluate("window.__notReloaded = true")
    page.wait_for_function("document.querySelector('[data-count=left]').textContent.trim() === '0' && "
                           "document.querySelector('#campaign-status').textContent.trim() === 'completed'", timeout=45_000)
    assert page.evaluate("window.__notReloaded") is True  # the counts came without a reload
    assert page.inner_text("[data-count=sent]") == "10"
    page.wait_for_selector("#recipients .s-sent")  # the table is fetched again once the campaign is over
    assert page.locator("#recipients .s-pending").count() == 0 and page.locator("#action-pause").count() == 0
    assert page.evaluate("window.__notReloaded") is True
    shoot(page, "campaign")


def test_new_campaign_expiry_opt_out_button_and_open_window_rule_reach_the_review(page_for, stack: ConsoleStack, tmp_path: Path) -> None:
    """Given a marketer on New campaign: an expiry already past and an opt-out button whose id is not
    an opt-out id are refused by the server at once, each note next to its field; fixed (the CSV is
    kept), the review step shows the expiry, the 24-hour window rule and the opt-out button, and the
    draft holds them (the expiry picked in Asia/Riyadh, stored as UTC)."""
    page = page_for("marketer")
    page.goto("/campaigns/new")
    page.fill("#name", "Expiring offer")
    page.fill("#body_text", "Hello {{name}}, offer ends tonight")
    page.fill("#button_title_1", "Yes please")
    upload = tmp_path / "expiring.csv"
    upload.write_text("phone,name\n" + "".join(f"9665150{i:05d},Name {i}\n" for i in range(3)), encoding="utf-8")
    page.set_input_files("#recipients", str(upload))
    page.select_option("#tz", "Asia/Riyadh")
    page.fill("#expires_at", "2001-01-01T21:00")
    page.fill("#opt_out_button", "halt:Halt")
    page.check("#require_open_window")
    page.click("#import")
    page.wait_for_selector("#expires_at-error")
    assert "before the campaign starts" in page.inner_text("#expires_at-error")
    assert page.get_attribute("#expires_at", "aria-invalid") == "true"
    assert page.input_value("#expires_at") == "2001-01-01T21:00"  # what was picked is kept
    assert "OPT_OUT_BUTTON_IDS" in page.inner_text("#opt_out_button-error")   # in the same round trip
    assert page.is_checked("#require_open_window")
    shoot(page, "new-campaign-errors")
    page.fill("#expires_at", "2031-01-01T21:00")
    page.fill("#opt_out_button", "stop:Stop offers")
    page.click("#import")
    page.wait_for_selector("#review-expires, #form-problems")
    assert page.locator("#form-problems").count() == 0, page.inner_text("main")
    assert "2031" in page.inner_text("#review-expires")
    assert page.inner_text("#review-opt-out") == "stop: “Stop offers”"
    assert "only contacts who wrote" in page.inner_text("#review-open-window")
    assert "held as suppressed (window_closed) at send time: the 24-hour window rule" in page.inner_text("#audience")  # nobody here wrote in: all 3 would be held
    shoot(page, "review-rules")
    cid = int(page.get_attribute("form[action$='/schedule']", "action").split("/")[2])
    with stack.runtime.session_factory() as session:
        draft = campaigns.get_campaign(session, cid)
        assert draft.status == "draft" and draft.require_open_window is True
        assert draft.expires_at.isoformat() == "2031-01-01T18:00:00+00:00"
        assert draft.template["buttons"][-1] == {"id": "stop", "title": "Stop offers"}
    page.click("#discard")
    page.wait_for_url(f"{stack.base_url}/")


def test_health_lists_the_running_worker_as_answering_with_when_it_was_last_seen(page_for, stack: ConsoleStack) -> None:
    """Given the stack's real `buttoncast worker`: the Health page's workers seen recently lists it
    (celery@<this host>) as answering, last seen within the last minute."""
    page = page_for("viewer")
    page.goto("/health")
    row = page.locator(f"#h-workers tr[data-worker='celery@{socket.gethostname()}']")
    assert row.count() == 1, page.inner_text("main")
    assert "answering" == row.locator("td").nth(1).inner_text()
    seen = datetime.strptime(row.locator("td").nth(2).inner_text(), "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
    assert abs((utcnow() - seen).total_seconds()) < 60
    shoot(page, "health")


def test_pause_and_resume(page_for, stack: ConsoleStack, tmp_path: Path) -> None:
    """Given a campaign scheduled for later, a marketer pauses it and resumes it from its page."""
    cid = make_campaign(stack, tmp_path, ["966570000001", "966570000002"], name="Later", scheduled_at=utcnow() + timedelta(hours=1))
    page = page_for("marketer")
    page.goto(f"/campaigns/{cid}")
    page.click("#action-pause")
    assert "Paused" in page.inner_text(".flash") and page.inner_text("#campaign-status") == "paused"
    assert status_of(stack, cid) == "paused"
    page.click("#action-resume")
    assert "Resumed" in page.inner_text(".flash") and status_of(stack, cid) == "scheduled"
    with stack.runtime.session_factory() as session:
        import sqlalchemy as sa

        from worker.audit import AuditEvent

        actors = set(session.scalars(sa.select(AuditEvent.actor).where(AuditEvent.subject_type == "campaign", AuditEvent.subject_id == cid)))
    assert actors == {"user:marketer@example.com"}


def test_retry_failed_shows_the_dry_run_count_before_it_acts(page_for, stack: ConsoleStack, tmp_path: Path) -> None:
    """Given a finished campaign with 3 messages the vendor refused, Retry failed first says 3, then requeues 3."""
    phones = ["966530000001", "966530000002"] + [f"{FAIL_PREFIX}1{i:06d}" for i in range(3)]
    cid = make_campaign(stack, tmp_path, phones, name="Retry me")
    wait_until(lambda: finished(stack, cid), timeout_s=45, what="the campaign to finish")
    page = page_for("marketer")
    page.goto(f"/campaigns/{cid}")
    page.click("#action-retry")
    assert "3 failed message(s) would be sent again" in page.inner_text("#retry-count")
    with stack.runtime.session_factory() as session:
        assert campaigns.status_counts(session, cid)["failed"] == 3  # the dry run changed nothing
    shoot(page, "retry")
    page.click("#retry-confirm")
    assert "3 failed message(s) requeued" in page.inner_text(".flash")


def test_report_download_and_export_of_a_buttons_tappers(page_for, stack: ConsoleStack, done_campaign: int) -> None:
    """Given a finished campaign, a viewer downloads the report (one row per recipient) and the CSV of
    everyone who tapped one button (only those phones)."""
    page = page_for("viewer")
    page.goto(f"/campaigns/{done_campaign}")
    with page.expect_download() as download:
        page.click("#report-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert len(rows) == 24 and {r["status"] for r in rows} == {"sent", "failed"}
    with stack.runtime.session_factory() as session:
        button, _title, tapped = report.funnel(session, done_campaign).taps[0]
    page.select_option("#tappers-button", button)
    with page.expect_download() as download:
        page.click("#export-tappers")
    tappers = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert len(tappers) == tapped and {t["reply_button_id"] for t in tappers} == {button} and all(t["phone"] for t in tappers)


def test_a_viewer_sees_no_send_controls_and_gets_403_when_posting_anyway(page_for, stack: ConsoleStack, tmp_path: Path) -> None:
    """Given a viewer on a scheduled campaign: no pause/cancel/test/new-campaign controls; a hand-made
    POST with a valid CSRF token is refused with 403 and changes nothing."""
    cid = make_campaign(stack, tmp_path, ["966540000001"], name="Viewer's view", scheduled_at=utcnow() + timedelta(hours=1))
    page = page_for("viewer")
    page.goto(f"/campaigns/{cid}")
    for control in ("#action-pause", "#action-cancel", "#action-retry", "#test-phone", "text=New campaign"):
        assert page.locator(control).count() == 0, control
    shoot(page, "campaign-viewer")
    response = page.request.post(f"/campaigns/{cid}/pause", form={"csrf_token": csrf_of(page)})
    assert response.status == 403 and "viewer" in response.text()
    assert page.request.get("/campaigns/new").status == 403
    assert status_of(stack, cid) == "scheduled"
    page.goto("/campaigns/new")
    shoot(page, "denied")


def test_a_post_without_the_csrf_token_is_refused(page_for, stack: ConsoleStack, tmp_path: Path) -> None:
    """Given a logged-in marketer, a POST without the form's CSRF token (or with another) is a 403."""
    cid = make_campaign(stack, tmp_path, ["966550000001"], name="CSRF", scheduled_at=utcnow() + timedelta(hours=1))
    page = page_for("marketer")
    page.goto(f"/campaigns/{cid}")
    assert page.request.post(f"/campaigns/{cid}/cancel", form={}).status == 403
    assert page.request.post(f"/campaigns/{cid}/cancel", form={"csrf_token": "0" * 64}).status == 403
    assert status_of(stack, cid) == "scheduled"
    assert page.request.post(f"/campaigns/{cid}/cancel", form={"csrf_token": csrf_of(page)}).status == 200  # followed 303
    assert status_of(stack, cid) == "cancelled"


def test_every_page_renders_at_desktop_and_phone_width(page_for, stack: ConsoleStack, done_campaign: int) -> None:
    """An admin visits every page; each answers with its heading and is photographed at both widths."""
    page = page_for("admin")
    with stack.runtime.session_factory() as session:
        from worker.sending.history import list_messages

        message = list_messages(session, campaign_id=done_campaign, limit=1)[0]
    for path, name, heading in (
        ("/", "campaigns", "Campaigns"), (f"/campaigns/{done_campaign}", "campaign-done", "Finished spring sale"),
        (f"/messages?q={message.phone}", "messages", "Messages"), (f"/messages/{message.id}", "message", f"Message {message.id}"),
        ("/health", "health", "Health"), ("/campaigns/999999", "not-found", "Not found"),
    ):
        page.goto(path)
        assert page.locator("h1").first.inner_text().startswith(heading), path
        shoot(page, name)
    page.goto(f"/messages/{message.id}")
    assert "attempt  HTTP" in page.inner_text("#trail")  # the trail as `message show` prints it
    page.goto("/health")
    assert page.inner_text("#h-beat").startswith("ticking")


def test_contacts_opt_out_with_a_reason_import_and_export_the_suppression_list(page_for, stack: ConsoleStack, tmp_path: Path) -> None:
    """An admin opts a phone out with a reason and back in, imports a suppression list (a bad line is
    reported) and exports it; a viewer can look a contact up but gets 403 opting one out."""
    page = page_for("admin")
    page.goto("/contacts")
    page.fill("#new-optout-phone", "966560000001")
    page.fill("#new-optout-reason", "asked by phone")
    page.click("section[aria-label='Opt out a phone'] button")
    assert "966560000001 opted out" in page.inner_text(".flash")
    assert "opted out" in page.inner_text("#consent") and "asked by phone" in page.inner_text("#consent")
    shoot(page, "contact")
    page.click("#opt-in")
    assert "opted back in" in page.inner_text(".flash") and "may receive" in page.inner_text("#consent")
    optouts = tmp_path / "optouts.csv"
    optouts.write_text("phone,reason\n966560000002,complaint\nnot-a-phone,x\n966560000003,\n", encoding="utf-8")
    page.set_input_files("#optouts", str(optouts))
    page.click("#import-optouts")
    assert "Opted out 2 contact(s)" in page.inner_text("#import-result") and "rejected 1 row(s)" in page.inner_text("#import-result")
    assert "line 3" in page.inner_text("ul.rejected")
    with page.expect_download() as download:
        page.click("#export-optouts")
    exported = {r["phone"] for r in csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8")))}
    assert {"966560000002", "966560000003"} <= exported and "966560000001" not in exported
    viewer = page_for("viewer")
    viewer.goto("/contacts?phone=966560000002")
    assert "opted out" in viewer.inner_text("#consent") and viewer.locator("#opt-in").count() == 0
    response = viewer.request.post("/contacts/optin", form={"csrf_token": csrf_of(viewer), "phone": "966560000002"})
    assert response.status == 403
    assert viewer.request.get("/contacts/optouts.csv").status == 403


def test_an_admin_adds_a_person_who_logs_in_and_disables_them(page_for, stack: ConsoleStack) -> None:
    """An admin adds a marketer on People; the marketer logs in; once disabled, their session ends and
    their password no longer works. A marketer cannot open People (403)."""
    admin = page_for("admin")
    admin.goto("/people")
    admin.fill("#new-email", "new.marketer@example.com")
    admin.select_option("#new-role", "marketer")
    admin.fill("#new-password", PASSWORD)
    admin.click("#add-person")
    assert "new.marketer@example.com (marketer) can log in now" in admin.inner_text(".flash")
    shoot(admin, "people")
    newcomer = page_for()
    log_in(newcomer, "new.marketer@example.com", PASSWORD)
    assert newcomer.locator("h1").inner_text() == "Campaigns" and newcomer.request.get("/people").status == 403
    admin.click("tr[data-email='new.marketer@example.com'] a")
    admin.click("dialog.confirm-dialog #confirm-yes")    # Disable asks first
    assert "is disabled" in admin.inner_text(".flash")
    assert admin.inner_text("tr[data-email='new.marketer@example.com'] .state") == "disabled"
    newcomer.goto("/")
    assert "/login" in newcomer.url  # the session ended
    log_in(newcomer, "new.marketer@example.com", PASSWORD)
    assert "/login" in newcomer.url


def test_an_admin_creates_an_api_key_sees_it_once_it_works_and_revokes_it(page_for, stack: ConsoleStack) -> None:
    """An admin creates a key on API keys: the key is shown once (only its hash is stored), it
    authenticates /v1, the list shows who created it and its last use; revoked, it gets 401. Both
    are in the audit trail with the admin's name. A marketer or viewer has no link and gets 403."""
    import hashlib

    import httpx
    import sqlalchemy as sa

    from worker.access.models import ApiKey
    from worker.audit import AuditEvent

    admin = page_for("admin")
    admin.goto("/")
    admin.click("nav >> text=API keys")
    assert admin.locator("h1").inner_text() == "API keys"
    assert admin.request.post("/keys", form={"name": "no token", "scope": "send"}).status == 403   # CSRF
    refused = admin.request.post("/keys", form={"csrf_token": csrf_of(admin), "name": "x" * 101, "scope": "send"})
    assert refused.status == 422 and "is 101 characters; the limit is 100" in refused.text()   # next to the name field
    admin.fill("#key-name", "CRM sync")
    admin.select_option("#key-scope", "campaigns")
    admin.click("#create-key")
    key = admin.input_value("#new-key-secret")
    assert key.startswith("bc_") and "shown this once" in admin.inner_text(".secret")
    shoot(admin, "keys-created")
    prefix = key.split("_")[1]
    row = f"#keys tr[data-prefix='{prefix}']"
    with stack.runtime.session_factory() as session:
        stored = session.scalars(sa.select(ApiKey).where(ApiKey.prefix == prefix)).one()
        assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in str(stored.__dict__)
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        assert client.get("/v1/campaigns").status_code == 200
        admin.goto("/keys")
        assert admin.locator(".secret").count() == 0 and key not in admin.content()    # never shown again
        cells = admin.inner_text(row)
        assert "CRM sync" in cells and "campaigns" in cells and stack.emails["admin"] in cells and "never" not in cells
        shoot(admin, "keys")
        admin.click(f"{row} a")
        admin.click("dialog.confirm-dialog #confirm-yes")    # Revoke asks first
        assert f"API key {prefix} (CRM sync) is revoked" in admin.inner_text(".flash")
        assert admin.inner_text(f"{row} .state").startswith("revoked")
        wait_until(lambda: client.get("/v1/campaigns").status_code == 401, timeout_s=10, what="the revoked key refused")
    with stack.runtime.session_factory() as session:
        trail = session.execute(sa.select(AuditEvent.action, AuditEvent.actor)
                                .where(AuditEvent.subject_type == "api_key", AuditEvent.subject_id == stored.id)
                                .order_by(AuditEvent.id)).all()
    assert [tuple(t) for t in trail] == [("api_key.created", f"user:{stack.emails['admin']}"),
                                         ("api_key.revoked", f"user:{stack.emails['admin']}")]
    for role in ("marketer", "viewer"):
        other = page_for(role)
        assert other.locator("nav >> text=API keys").count() == 0
        assert other.request.get("/keys").status == 403
        refused = other.request.post("/keys", form={"csrf_token": csrf_of(other), "name": "sneaky", "scope": "admin"})
        assert refused.status == 403
        assert other.request.post(f"/keys/{stored.id}/revoke", form={"csrf_token": csrf_of(other)}).status == 403
    with stack.runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(ApiKey.name == "sneaky")) == 0


def test_the_session_cookie_is_secure_behind_an_https_proxy(stack: ConsoleStack) -> None:
    """Given a proxy on 127.0.0.1 that says X-Forwarded-Proto: https (uvicorn believes it from there),
    the session cookie is Secure, HttpOnly and SameSite=Lax; over plain http it is not Secure."""
    import re

    import httpx

    for proto, secure in (("https", True), ("http", False)):
        with httpx.Client(base_url=stack.base_url, headers={"X-Forwarded-Proto": proto}, timeout=30) as client:
            form = client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            # httpx keeps a Secure cookie from an http:// URL to itself: hand the login cookie over as a browser on https would
            login_cookie = form.headers["set-cookie"].split(";")[0]
            done = client.post("/login", data={"email": stack.emails["viewer"], "password": PASSWORD, "csrf_token": token},
                               headers={"Cookie": login_cookie})
            assert done.status_code == 303, done.text[:300]
            cookie = next(v for k, v in done.headers.multi_items() if k == "set-cookie" and v.startswith("bc_session="))
            assert ("; secure" in cookie.lower()) is secure and "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
