"""Forms that help, times in the campaign's zone, and every page at phone width (issue 24 items 4, 5, 8).

The New campaign form keeps the chosen CSV after a problem (the next try needs no file), shows
every problem at once next to its field in a marketer's words, reads its date-time pickers in the
chosen time zone (stored as UTC) and writes button ids from the titles unless "Advanced" sets them.
A campaign's pages show its times in its window's zone with UTC on hover; every console page, listed
from the routers, fits 360 px without scrolling sideways. Browser tests drive Debian's Chromium
against the real stack (tests/console_stack.py, the fixtures of test_console_browser); screenshots
go to /tmp/shots/i24_<item>_<width>.png for a person to look at.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import os
import pkgutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from scheduler import campaigns
from scheduler.campaigns import create_with_recipients
from tests.conftest import wait_until
from tests.console.test_console_browser import _chromium, browser, browser_pages, stack  # noqa: F401 - the same fixtures
from tests.console_stack import ConsoleStack
from worker import console
from worker.access.keys import create_key
from worker.console import kept_uploads, when_form
from worker.console.message_form import button_ids, template_from
from worker.contacts import segments
from worker.models import Campaign, Message
from worker.window import Window, parse_window

SHOTS = Path("/tmp/shots")
WIDTHS = (1366, 390, 360)
PHONE_WIDTH = 360
RIYADH = ZoneInfo("Asia/Riyadh")
LONG_TITLES = [{"id": "remind", "title": "Remind me next week"}, {"id": "table", "title": "Book a table for two"}]


# --- binding, without a browser ---------------------------------------------------------------

def test_a_picker_in_asia_riyadh_is_the_right_utc_and_a_skipped_wall_time_is_refused() -> None:
    assert when_form.to_utc("2026-12-01T09:00", "Asia/Riyadh") == (datetime(2026, 12, 1, 6, 0, tzinfo=timezone.utc), None)
    assert when_form.to_utc("", "Asia/Riyadh") == (None, None)
    at, problem = when_form.to_utc("2026-03-29T02:30", "Europe/Berlin")   # the clocks jump 02:00 -> 03:00
    assert at is None and "does not exist in Europe/Berlin" in problem
    assert when_form.to_utc("tomorrow", "UTC")[1] == "choose a date and a time (e.g. 2026-12-01 09:00)"
    times = when_form.read_times({"at": "2026-12-01T09:00", "expires_at": "soon"}, ("at", "expires_at"), "Asia/Riyadh")
    assert times.values == {"at": datetime(2026, 12, 1, 6, 0, tzinfo=timezone.utc), "expires_at": "soon"}
    assert list(times.problems) == ["expires_at"]


def test_button_ids_come_from_the_titles_unique_short_and_never_an_opt_out_id() -> None:
    rows = [(1, "Yes, please!", ""), (2, "Yes please", ""), (3, "Stop", "")]
    assert button_ids(rows, frozenset({"stop"})) == ["yes_please", "yes_please_2", "stop_2"]
    assert button_ids([(1, "👍", ""), (2, "Café olé", "")]) == ["button_1", "cafe_ole"]
    assert button_ids([(1, "Later", ""), (2, "Later", "later")]) == ["later_2", "later"]   # a given id is kept
    long = button_ids([(1, "x" * 300, ""), (2, "x" * 300, "")])
    assert [len(i) for i in long] == [256, 256] and long[1].endswith("_2")
    form = {"body_text": "Hi", "button_title_1": "Book a table", "button_title_3": "Later", "button_id_3": "remind_me"}
    assert template_from(form, ids_from_titles=True)["buttons"] == [{"id": "book_a_table", "title": "Book a table"},
                                                                    {"id": "remind_me", "title": "Later"}]


class _Upload:
    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    async def read(self, size: int = -1) -> bytes:
        return self.data.read(size)


def test_a_kept_upload_is_its_owners_only_until_it_expires_and_the_area_stays_under_its_cap(tmp_path: Path) -> None:
    kept = asyncio.run(kept_uploads.keep(_Upload(b"phone,name\n1,a\n\n2,b\n"), "C:\\Users\\m\\ab.csv", "user:a",
                                         max_bytes=1000, root=tmp_path))
    assert (kept.filename, kept.rows) == ("ab.csv", 2)
    assert kept_uploads.find(kept.token, "user:a", root=tmp_path) == kept
    assert kept_uploads.find(kept.token, "user:b", root=tmp_path) is None            # another person's
    assert kept_uploads.find("../../etc", "user:a", root=tmp_path) is None
    assert kept_uploads.find(kept.token, "user:a", root=tmp_path,
                             now=time.time() + kept_uploads.KEPT_UPLOAD_TTL_S + 1) is None
    with pytest.raises(kept_uploads.UploadTooLarge):
        asyncio.run(kept_uploads.keep(_Upload(b"x" * 2000), "big.csv", "user:a", max_bytes=1000, root=tmp_path))
    assert [d.name for d in tmp_path.iterdir()] == [kept.token]                     # nothing left of the refused one
    newer = asyncio.run(kept_uploads.keep(_Upload(b"phone\n1\n"), "b.csv", "user:a", max_bytes=1000, root=tmp_path))
    os.utime(kept.path.parent, (time.time() - 10, time.time() - 10))
    newer_bytes = sum(f.stat().st_size for f in newer.path.parent.iterdir())
    assert kept_uploads.sweep(tmp_path, max_bytes=newer_bytes) == 1                 # over the cap: the oldest goes
    assert [d.name for d in tmp_path.iterdir()] == [newer.token]
    assert kept_uploads.sweep(tmp_path, now=time.time() + kept_uploads.KEPT_UPLOAD_TTL_S + 1) == 1
    assert list(tmp_path.iterdir()) == []


# --- in the browser -----------------------------------------------------------------------------

@pytest.fixture()
def page_for(browser, stack: ConsoleStack):  # noqa: ANN001, ANN201, F811 - the imported fixtures
    """page_for(role) -> a logged-in page in a fresh browser context (its own cookies)."""
    with browser_pages(browser, stack, viewport={"width": 1366, "height": 800}, bypass_csp=True) as make:
        yield make


def wider_than(page, width: int) -> str:  # noqa: ANN001
    """What sticks out past `width`, and what holds content wider than itself (for the failure message)."""
    return page.evaluate(
        "(w) => { const name = (e) => e.tagName + '#' + e.id + '.' + e.className.toString().slice(0, 40);"
        " const all = Array.from(document.querySelectorAll('body *'));"
        " return all.filter((e) => e.getBoundingClientRect().right > w + 0.5).slice(0, 8).map(name).join(', ')"
        " + ' | overflowing: ' + all.filter((e) => e.scrollWidth > e.clientWidth + 1"
        " && getComputedStyle(e).overflowX === 'visible').slice(0, 8).map(name).join(', '); }", width)


def shoot(page, item: int, what: str = "") -> None:  # noqa: ANN001
    """The whole page at 1366, 390 and 360 px into /tmp/shots/i24_<item>[_<what>]_<width>.png; at phone
    widths the page itself must not scroll sideways."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(SHOTS / f"i24_{item}{'_' + what if what else ''}_{width}.png"), full_page=True)
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= width, f"{page.url} is {wide} px wide at {width}: {wider_than(page, width)}"
    page.set_viewport_size({"width": 1366, "height": 800})


def named(stack: ConsoleStack, name: str) -> list[Campaign]:  # noqa: F811
    with stack.runtime.session_factory() as session:
        return list(session.scalars(sa.select(Campaign).where(Campaign.name == name)))


@pytest.mark.slow
def test_the_form_keeps_the_csv_shows_every_problem_at_once_and_reads_the_pickers_in_the_chosen_zone(
        page_for, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """Given a marketer on New campaign with a 2,000-row ab.csv (phone, name) and a message using
    {{city}}: a daily window of "9-21" and an expiry before the start are refused with the missing
    column in ONE round trip, 3 notes each next to its field, in words (no command-line option); the
    file is kept ("ab.csv (2,000 rows)"). Fixed without choosing the file again, the draft starts at
    09:00 Asia/Riyadh = 06:00 UTC, its button ids come from the titles but the one set under
    "Advanced", and the review shows its times in Asia/Riyadh with UTC on hover."""
    upload = tmp_path / "ab.csv"
    upload.write_text("phone,name\n" + "".join(f"9665860{i:05d},Name {i}\n" for i in range(2000)), encoding="utf-8")
    page = page_for("marketer")
    page.goto("/campaigns/new")
    assert page.input_value("#tz") == "UTC"                                    # the console's default zone
    assert page.get_attribute("#at", "type") == page.get_attribute("#expires_at", "type") == "datetime-local"
    assert page.is_hidden("#button_id_1")                                      # ids are "Advanced"
    page.fill("#name", "Riyadh weekend")
    page.set_input_files("#recipients", str(upload))
    page.fill("#body_text", "Hello {{name}}, a table in {{city}} this weekend?")
    page.fill("#button_title_1", "Yes please")
    page.fill("#button_title_2", "Remind me next week")
    assert page.get_attribute("#button_id_1", "placeholder") == "yes_please"   # what the server will write
    page.click("#button-ids summary")
    page.fill("#button_id_2", "remind")
    page.select_option("#tz", "Asia/Riyadh")
    page.fill("#at", "2031-01-01T09:00")
    page.fill("#expires_at", "2030-12-31T09:00")
    page.fill("#window", "9-21")
    page.click("#import")
    page.wait_for_selector("#form-problems")
    notes = {e.get_attribute("id"): e.inner_text() for e in page.locator(".field-error").all()}
    assert set(notes) == {"window-error", "expires_at-error", "recipients-error"}, notes
    assert notes["window-error"] == "write it as 09:00-21:00 (or 22:00-06:00 overnight), not '9-21'"
    assert "{{city}}" in notes["recipients-error"] and "ab.csv" in notes["recipients-error"]
    assert "before the campaign starts" in notes["expires_at-error"]
    fixes = page.locator("#form-problems .fixes li").all_inner_texts()
    assert len(fixes) == 3 and "Daily window: write it as 09:00-21:00 (or 22:00-06:00 overnight), not '9-21'" in fixes
    assert "--" not in page.inner_text("#form-problems")
    assert page.inner_text("#kept-upload").startswith("ab.csv (2,000 rows) is kept")
    assert page.input_value("#at") == "2031-01-01T09:00" and page.input_value("#tz") == "Asia/Riyadh"
    assert page.input_value("#button_id_2") == "remind" and page.is_visible("#button_id_2")   # Advanced stays open
    assert page.locator("#placeholders .chip").all_inner_texts() == ["{{name}}"]   # the kept file's columns
    assert named(stack, "Riyadh weekend") == []
    shoot(page, 4)

    token = page.get_attribute("input[name=upload_token]", "value")
    assert (kept_uploads.ROOT / token / "recipients.csv").exists()
    page.fill("#body_text", "Hello {{name}}, a table this weekend?")
    page.fill("#window", "09:00-21:00")
    page.fill("#expires_at", "2031-01-02T21:00")
    page.click("#import")                                                      # no file chosen: the kept one
    page.wait_for_selector("#review-expires, #form-problems")
    assert page.locator("#form-problems").count() == 0, page.inner_text("main")
    assert page.inner_text("#imported") == "2,000"
    expires = page.locator("#review-expires time")
    assert expires.inner_text() == "2031-01-02 21:00:00 Asia/Riyadh"
    assert expires.get_attribute("title") == "2031-01-02 18:00:00 UTC"
    (draft,) = named(stack, "Riyadh weekend")
    assert draft.scheduled_at == datetime(2031, 1, 1, 6, 0, tzinfo=timezone.utc)
    assert draft.expires_at == datetime(2031, 1, 2, 18, 0, tzinfo=timezone.utc)
    assert (draft.window_start, draft.window_end, draft.window_tz) == ("09:00", "21:00", "Asia/Riyadh")
    assert draft.template["buttons"] == [{"id": "yes_please", "title": "Yes please"},
                                         {"id": "remind", "title": "Remind me next week"}]
    assert not (kept_uploads.ROOT / token).exists()                           # the draft is made: not kept
    page.click("#discard")
    page.wait_for_url(f"{stack.base_url}/")


@pytest.mark.slow
def test_the_segment_path_and_the_follow_up_show_every_problem_at_once_too(
        page_for, stack: ConsoleStack) -> None:  # noqa: F811 - the imported fixture
    """A campaign to a saved segment with an "until" before its start, a window of "25:00-26:00" and
    no body: the three notes at once, in words, the choices kept."""
    segment = segments.create_segment(stack.runtime, name="Forms", rules={"tag": "forms"}, actor="test")
    page = page_for("marketer")
    page.goto(f"/campaigns/new?segment={segment.id}")
    page.fill("#name", "Weekly forms")
    page.fill("#button_title_1", "More")
    page.select_option("#every", "1w")
    page.select_option("#tz", "Asia/Riyadh")
    page.fill("#at", "2031-01-08T09:00")
    page.fill("#until", "2031-01-01T09:00")
    page.fill("#window", "25:00-26:00")
    page.eval_on_selector("#body_text", "e => e.removeAttribute('required')")   # as a browser without checks posts it
    page.click("#import")
    page.wait_for_selector("#form-problems")
    ids = sorted(e.get_attribute("id") for e in page.locator(".field-error").all())
    assert ids == ["body_text-error", "until-error", "window-error"], page.inner_text("#form-problems")
    assert "not a time of day" in page.inner_text("#window-error") and "--" not in page.inner_text("#form-problems")
    assert page.is_checked("#audience-segment") and page.input_value("#until") == "2031-01-01T09:00"


@pytest.mark.slow
def test_a_campaigns_pages_show_its_times_in_its_window_zone_with_utc_on_hover(
        page_for, stack: ConsoleStack, riyadh: int) -> None:  # noqa: F811 - the imported fixture
    """Given a finished campaign whose window is in Asia/Riyadh (and buttons with long titles): its
    page, its live part, its recipients page and a message's page show every time in Asia/Riyadh
    with the UTC time in the title; the campaigns list (not one campaign's) shows the console's UTC.
    A follow-up of it starts at a time picked in Asia/Riyadh, stored as UTC, ids from its titles."""
    cid = riyadh
    page = page_for("admin")
    page.goto(f"/campaigns/{cid}")
    page.wait_for_selector("#live[data-final=true]", timeout=30_000)
    assert_zoned(page, "main", "Asia/Riyadh", at_least=1)
    live = page.request.get(f"/campaigns/{cid}/live").text()
    assert " UTC</time>" not in live                                           # an ended campaign has no ETA
    funnel = page.locator("#live").inner_text()
    assert "Book a table for two" in funnel and "Remind me next week" in funnel   # not clipped
    shoot(page, 5)
    page.goto(f"/campaigns/{cid}/recipients")
    assert_zoned(page, "main", "Asia/Riyadh", at_least=0)
    with stack.runtime.session_factory() as session:
        mid = session.scalar(sa.select(sa.func.min(Message.id)).where(Message.campaign_id == cid))
    page.goto(f"/messages/{mid}")
    assert_zoned(page, "main", "Asia/Riyadh", at_least=3)
    page.goto("/")
    assert_zoned(page, "main", "UTC", at_least=0)

    # a follow-up's start is a picker in the source's window zone; its button ids come from the titles
    page.goto(f"/campaigns/{cid}/follow-up?result=tapped&button=table")
    assert page.input_value("#tz") == "Asia/Riyadh" and page.get_attribute("#at", "type") == "datetime-local"
    page.fill("#body_text", "Your table is ready to book")
    page.fill("#button_title_1", "Book a table")
    page.fill("#at", "2031-01-01T09:00")
    page.click("#create-follow-up")
    page.wait_for_selector("#audience-lines")
    (follow,) = named(stack, "Follow-up of Riyadh nights: tapped table")
    assert follow.scheduled_at == datetime(2031, 1, 1, 6, 0, tzinfo=timezone.utc)
    assert follow.template["buttons"] == [{"id": "book_a_table", "title": "Book a table"}]
    assert_zoned(page, "#campaign-meta", "Asia/Riyadh", at_least=1)


def assert_zoned(page, scope: str, zone: str, at_least: int) -> None:  # noqa: ANN001
    """Every <time> in `scope` is shown in `zone` (named) with its UTC time in the title."""
    times = page.locator(f"{scope} time").all()
    assert len(times) >= at_least, page.inner_text(scope)
    for t in times:
        shown, title, iso = t.inner_text(), t.get_attribute("title"), t.get_attribute("datetime")
        assert shown.endswith(zone) and title.endswith(" UTC"), (shown, title)
        utc = datetime.fromisoformat(iso.replace("Z", "+00:00"))
        assert title.startswith(utc.strftime("%Y-%m-%d %H:%M:%S"))
        assert utc.astimezone(ZoneInfo(zone)).strftime("%H:%M") in shown


@pytest.fixture(scope="module")
def riyadh(stack: ConsoleStack, tmp_path_factory: pytest.TempPathFactory) -> int:  # noqa: F811
    """A campaign of 12, its window open now in Asia/Riyadh, finished with some taps."""
    tmp_path = tmp_path_factory.mktemp("riyadh")
    now = datetime.now(RIYADH)
    window = parse_window(f"{(now - timedelta(hours=3)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}", "Asia/Riyadh")
    assert isinstance(window, Window)
    path = tmp_path / "riyadh.csv"
    path.write_text("phone,name\n" + "".join(f"9665870{i:05d},Name {i}\n" for i in range(12)), encoding="utf-8")
    cid, _ = create_with_recipients(stack.runtime.session_factory, path, name="Riyadh nights", phone_number_id="123456",
                                    template={"body_text": "Hello {{name}}, dinner tonight?", "buttons": LONG_TITLES},
                                    window=window)

    def done() -> bool:
        with stack.runtime.session_factory() as session:
            counts = campaigns.status_counts(session, cid)
            replied = session.scalar(sa.select(sa.func.count()).where(Message.campaign_id == cid,
                                                                      Message.reply_button_id.is_not(None)))
            return campaigns.get_campaign(session, cid).status == "completed" and counts["pending"] == 0 and replied > 0

    wait_until(done, timeout_s=60, what="the Riyadh campaign to finish with taps")
    return cid


def console_get_paths() -> list[str]:
    """Every GET path of the console's routers (worker/console/routes_*.py)."""
    paths = set()
    for info in pkgutil.iter_modules(console.__path__):
        if info.name.startswith("routes_"):
            module = importlib.import_module(f"{console.__name__}.{info.name}")
            paths |= {r.path for r in module.router.routes if "GET" in getattr(r, "methods", ())}
    return sorted(paths)


@pytest.fixture(scope="module")
def every_page(stack: ConsoleStack, riyadh: int) -> list[str]:  # noqa: F811
    """The URL of every page the routers serve (downloads aside), filled with real ids."""
    cid = riyadh
    with stack.runtime.session_factory() as session:
        mid = session.scalar(sa.select(sa.func.min(Message.id)).where(Message.campaign_id == cid))
    segment = segments.create_segment(stack.runtime, name="Wide", rules={"tag": "wide"}, actor="test")
    key, _secret = create_key(stack.runtime, name="phone width", scope="campaigns", actor="test")
    values = {"campaign_id": cid, "message_id": mid, "segment_id": segment.id, "key_id": key.id}
    queries = {"/campaigns/{campaign_id}/follow-up": "?result=tapped&button=table", "/messages": "?q=966587000001",
               "/contacts": "?phone=966587000001", "/campaigns/{campaign_id}/preview": "?phone=966587000001",
               "/people/disable": f"?email={stack.emails['viewer']}"}
    return [path.format(**values) + queries.get(path, "") for path in console_get_paths()
            if not path.endswith((".csv", ".json", ".{fmt}")) and path != "/login"]


#: what the accessibility run fails on (axe-core's impact levels: minor, moderate, serious, critical)
A11Y_FAILING = ("serious", "critical")


@pytest.mark.slow
def test_every_console_page_has_no_serious_accessibility_violation(
        page_for, stack: ConsoleStack, every_page: list[str]) -> None:  # noqa: F811 - the imported fixture
    """axe-core (WCAG 2 A/AA rules and best practices, as bundled by axe-playwright-python) on every
    page as an admin, and on the login page: no violation of serious or critical impact."""
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    page = page_for("admin")
    anonymous = page_for(None)
    found, checked = [], 0
    for p, url in [(page, u) for u in every_page] + [(anonymous, "/login")]:
        p.goto(url)
        if p.locator("main#main").count() == 0 and url != "/login":   # a fragment the page polls, not a page
            continue
        checked += 1
        for violation in axe.run(p).response["violations"]:
            if violation["impact"] in A11Y_FAILING:
                targets = [", ".join(n["target"]) for n in violation["nodes"][:3]]
                found.append(f"{url}: {violation['impact']} {violation['id']}: {violation['help']} {targets}")
    assert not found, "\n".join(found)
    assert checked >= 16, checked


@pytest.mark.slow
def test_every_console_page_fits_360_px_without_scrolling_sideways(
        page_for, stack: ConsoleStack, riyadh: int, every_page: list[str]) -> None:  # noqa: F811 - the imported fixture
    """Every page the routers serve (downloads and polled fragments aside), as an admin at 360 px:
    document.documentElement.scrollWidth <= 360; a table wider than the screen scrolls in its own box,
    which says so."""
    cid = riyadh
    page = page_for("admin")
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 780})
    visited, too_wide = [], []
    for url in every_page:
        response = page.goto(url)
        assert response is not None and response.status < 500, f"{url}: {response and response.status}"
        if page.locator("main#main").count() == 0:   # a fragment the page polls, not a page
            continue
        visited.append(url)
        if page.evaluate("document.documentElement.scrollWidth") > PHONE_WIDTH:
            too_wide.append(f"{url}: {wider_than(page, PHONE_WIDTH)}")
    anonymous = page_for(None)
    anonymous.set_viewport_size({"width": PHONE_WIDTH, "height": 780})
    anonymous.goto("/login")
    if anonymous.evaluate("document.documentElement.scrollWidth") > PHONE_WIDTH:
        too_wide.append(f"/login: {wider_than(anonymous, PHONE_WIDTH)}")
    assert not too_wide, "\n".join(too_wide)
    assert len(visited) >= 15, visited
    page.goto(f"/campaigns/{cid}")
    box = page.locator("#recipients .table-wrap")
    assert box.evaluate("e => e.scrollWidth > e.clientWidth")                  # DELIVERY, TAPPED: past the edge...
    page.wait_for_selector("#recipients .table-wrap[data-scrolls]")            # ... and the box says so
    assert "Scroll sideways" in box.evaluate("e => getComputedStyle(e, '::before').content")
    shoot(page, 8)
    page.goto(f"/campaigns/{cid}/recipients")
    shoot(page, 8, "recipients")
