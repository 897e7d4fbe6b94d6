"""Segments, campaigns from a segment and follow-ups in the web console, in a real browser: Playwright
driving Debian's Chromium against real `buttoncast api`, worker, beat and webhook processes, the
sandbox (which taps buttons), Postgres and Redis (tests/console_stack.py).

Every page is photographed at desktop (1366 px) and phone (390 px) width into tests/screenshots/
for a person to look at, and at phone width the page must not scroll sideways.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler import campaigns
from scheduler.campaigns import create_with_recipients
from tests.conftest import wait_until
from tests.console.test_console_browser import _chromium, browser, browser_pages, stack  # noqa: F401 - the same fixtures
from tests.console_stack import ConsoleStack
from worker.audit import AuditEvent
from worker.contacts import segments
from worker.contacts.attributes import edit_contact
from worker.models import Campaign, Message, Segment, utcnow

pytestmark = pytest.mark.slow
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
DESKTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}
TEMPLATE = {"body_text": "Hello {{name}}, 20 % off this week. Interested?",
            "buttons": [{"id": "yes", "title": "Yes please"}, {"id": "no", "title": "No thanks"}]}
#: contacts of the builder test: (phone, city, tags)
PEOPLE = [("966581000001", "Riyadh", ["vip"]), ("966581000002", "Riyadh", ["vip"]), ("966581000003", "Riyadh", []),
          ("966581000004", "Riyadh", []), ("966581000005", "Riyadh", []), ("966581000006", "Jeddah", ["vip"]),
          ("966581000007", "Jeddah", []), ("966581000008", "Jeddah", [])]


@pytest.fixture()
def page_for(browser, stack: ConsoleStack):  # noqa: ANN001, ANN201
    """page_for(role) -> a logged-in page in a fresh browser context (its own cookies)."""
    with browser_pages(browser, stack, bypass_csp=True) as make:
        yield make


def shoot(page, name: str) -> None:  # noqa: ANN001
    """The page at desktop and phone width (whole page), then back to desktop; at phone width
    nothing may be wider than the screen (no sideways scroll)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.screenshot(path=str(SCREENSHOTS / f"{name}_{label}.png"), full_page=True)
        if label == "phone":
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= PHONE["width"], f"{name}: the page is {wide} px wide at {PHONE['width']} px"
    page.set_viewport_size(DESKTOP)


def csrf_of(page) -> str:  # noqa: ANN001
    return page.get_attribute("form[action='/logout'] input[name=csrf_token]", "value")


def live_count_is(page, text: str) -> None:  # noqa: ANN001
    """Wait until the builder's count says `text` (and is not being recounted)."""
    page.wait_for_function("([want]) => { const c = document.getElementById('live-count');"
                           " return c.textContent.trim() === want && !c.classList.contains('stale'); }", arg=[text])


def load(stack: ConsoleStack, campaign_id: int) -> Campaign:
    with stack.runtime.session_factory() as session:
        return campaigns.get_campaign(session, campaign_id)


def id_in(url: str) -> int:
    return int(url.rstrip("/").split("/")[-1].split("?")[0])


@pytest.fixture(scope="module")
def people(stack: ConsoleStack) -> list[str]:
    for phone, city, tags in PEOPLE:
        edit_contact(stack.runtime, phone, attributes={"city": city, "name": f"Person {phone[-2:]}"}, tags_add=tags,
                     actor="test")
    return [p for p, _, _ in PEOPLE]


def test_a_marketer_builds_a_segment_with_a_live_count_and_uses_it_in_a_campaign(page_for, stack: ConsoleStack,
                                                                                   people: list[str]) -> None:
    """Given 8 contacts (5 in Riyadh, 3 tagged vip, 2 of them both): the builder's count follows each
    change of the rows (city is Riyadh: 5; and has tag vip: 2; any: 6; not vip: 3), a row's problem is
    said next to it, the JSON follows the rows and the rows follow an edited JSON. Saved, the segment
    page says who and how many; "Use in a campaign" opens the wizard with it chosen, the review says
    who and counts them, and once confirmed the campaign sends to those 2 members."""
    page = page_for("marketer")
    page.click("nav >> text=Segments")
    page.click("#new-segment")
    assert page.locator("h1").inner_text() == "New segment" and page.inner_text("#live-count") == "–"
    page.fill("#row-0-attribute", "city")
    page.fill("#row-0-value", "Riyadh")
    live_count_is(page, "5")
    assert page.inner_text("#live-words") == "city is Riyadh"
    page.click("#add-row")
    page.select_option("#row-1-kind", "tag")
    assert page.is_hidden("#row-1-attribute") and page.inner_text("label[for=row-1-value]") == "Tag"
    page.fill("#row-1-value", "vip")
    live_count_is(page, "2")
    riyadh_vips = {"all": [{"attribute": "city", "equals": "Riyadh"}, {"tag": "vip"}]}
    assert json.loads(page.input_value("#rules_json")) == riyadh_vips
    page.check("#match-any")
    live_count_is(page, "6")
    page.check("#match-all")
    page.check("#row-1-not")
    live_count_is(page, "3")
    assert page.inner_text("#live-words") == "city is Riyadh and not (has tag vip)"
    page.uncheck("#row-1-not")
    live_count_is(page, "2")

    # a problem in words, next to its row; the count waits for it to be fixed
    page.select_option("#row-1-kind", "last_inbound_within")
    page.fill("#row-1-value", "7x")
    live_count_is(page, "–")
    assert "is not a duration" in page.inner_text("#row-1-error") and page.is_hidden("#row-0-error")
    assert "invalid" in page.get_attribute(".rule-row[data-row='1']", "class")
    shoot(page, "segment_builder_problem")
    page.select_option("#row-1-kind", "tag")
    page.fill("#row-1-value", "vip")
    live_count_is(page, "2")
    assert page.is_hidden("#row-1-error")

    # an advanced person edits the JSON: the count and the rows follow it
    page.click("#rules-details summary")
    page.fill("#rules_json", json.dumps({"all": [{"attribute": "city", "equals": "Jeddah"}, {"tag": "vip"}]}))
    live_count_is(page, "1")
    assert page.input_value("#row-0-value") == "Jeddah" and page.input_value("#row-1-value") == "vip"
    page.fill("#row-0-value", "Riyadh")   # and back to the rows
    live_count_is(page, "2")
    assert json.loads(page.input_value("#rules_json"))["all"][0] == {"attribute": "city", "equals": "Riyadh"}
    page.fill("#name", "Riyadh VIPs")
    shoot(page, "segment_builder")

    page.click("#save-segment")
    page.wait_for_selector("#segment-words")
    segment_id = id_in(page.url)
    assert page.inner_text("#segment-words") == "city is Riyadh and has tag vip"
    assert page.inner_text("#segment-count").startswith("2")
    assert sorted(page.locator("#sample tbody tr td:first-child").all_inner_texts()) == people[:2]
    shoot(page, "segment_page")
    with stack.runtime.session_factory() as session:
        saved = session.get(Segment, segment_id)
        assert saved.created_by == "user:marketer@example.com"
        assert saved.rules == riyadh_vips

    page.click("#use-in-campaign")
    page.wait_for_url(f"**/campaigns/new?segment={segment_id}")
    assert page.is_checked("#audience-segment") and page.input_value("#segment") == str(segment_id)
    assert page.is_hidden("#recipients") and page.is_disabled("#recipients")
    page.fill("#name", "Riyadh VIP offer")
    page.fill("#body_text", "Hello {{name}}, a VIP offer in {{city}}")
    page.fill("#button_title_1", "Yes please")
    shoot(page, "segment_campaign_new")
    page.click("#import")
    page.wait_for_selector("#segment-audience")
    assert page.inner_text("#review-segment-words") == "city is Riyadh and has tag vip"
    assert page.inner_text("#review-segment-count") == "2"
    shoot(page, "segment_campaign_review")
    cid = int(page.get_attribute("form[action$='/schedule']", "action").split("/")[2])
    draft = load(stack, cid)
    assert draft.status == "draft" and draft.segment_id == segment_id and draft.series_every_s is None
    page.click("#confirm")
    page.wait_for_url(f"**/campaigns/{cid}")
    assert f"is in segment {segment_id} (Riyadh VIPs); 2 member(s) now" in page.inner_text("#audience-lines")
    assert page.locator(f"#audience-lines a[href='/segments/{segment_id}']").count() == 1
    wait_until(lambda: load(stack, cid).status == "completed", timeout_s=60, what="the segment's campaign to finish")
    with stack.runtime.session_factory() as session:
        sent = dict(session.execute(sa.select(Message.phone, Message.content).where(Message.campaign_id == cid)).all())
    assert sorted(sent) == people[:2]
    assert sent[people[0]]["body_text"] == "Hello Person 01, a VIP offer in Riyadh"


def test_a_campaign_to_a_segment_repeats_weekly_and_its_page_links_its_runs(page_for, stack: ConsoleStack,
                                                                             people: list[str]) -> None:
    """Given a saved segment, a marketer makes a campaign to it that repeats every week: the review
    says so, the series page says every 1w and, once beat starts the first run, links to it."""
    segment = segments.create_segment(stack.runtime, name="Jeddah", rules={"attribute": "city", "equals": "Jeddah"},
                                      actor="test")
    page = page_for("marketer")
    page.goto("/segments")
    page.click(f"tr[data-segment='{segment.id}'] >> text=Use in a campaign")
    page.fill("#name", "Weekly Jeddah news")
    page.fill("#body_text", "This week in Jeddah")
    page.fill("#button_title_1", "Tell me more")
    page.select_option("#every", "custom")
    page.fill("#every_custom", "30m")   # too short: refused next to the field
    page.click("#import")
    page.wait_for_selector("#every_custom-error")
    assert "too short" in page.inner_text("#every_custom-error")
    assert page.is_checked("#audience-segment") and page.input_value("#segment") == str(segment.id)
    page.select_option("#every", "1w")
    assert page.is_hidden("#every_custom")
    page.click("#import")
    page.wait_for_selector("#review-series")
    assert page.inner_text("#review-series").startswith("every 1w")
    assert page.inner_text("#review-segment-count") == "3"
    page.click("#confirm")
    page.wait_for_url("**/campaigns/*")
    series_id = id_in(page.url)
    assert load(stack, series_id).series_every_s == 7 * 86_400
    assert "every 1w" in page.inner_text("#audience-lines")

    def first_run() -> int | None:
        with stack.runtime.session_factory() as session:
            return session.scalar(sa.select(Campaign.id).where(Campaign.series_id == series_id))

    run_id = wait_until(first_run, timeout_s=30, what="beat to start the series' first run")
    wait_until(lambda: load(stack, run_id).status == "completed", timeout_s=60, what="the first run to finish")
    page.reload()
    link = page.locator(f"#audience-lines a[href='/campaigns/{run_id}']")
    assert link.count() == 1, page.inner_text("#audience-lines")
    shoot(page, "campaign_series")
    link.click()
    page.wait_for_url(f"**/campaigns/{run_id}")
    assert page.locator("h1").inner_text().startswith("Weekly Jeddah news ·")
    assert page.locator(f"#audience-lines a[href='/campaigns/{series_id}']").count() == 1   # run of series N
    shoot(page, "campaign_series_run")


def test_follow_up_from_the_funnel_goes_to_everyone_who_tapped_the_button(page_for, stack: ConsoleStack,
                                                                          tmp_path: Path) -> None:
    """Given a sent campaign of 24 (seeded: 9 tapped "Yes please", 4 "No thanks", 4 did not read it):
    its funnel offers "Follow up with everyone who tapped “Yes please”"; the form counts them (9),
    writes a button's id from its title, and creates a campaign whose audience is those tappers,
    which the real stack then sends to exactly those 9."""
    phones = [f"96658200{i:04d}" for i in range(24)]
    upload = tmp_path / "recipients.csv"
    upload.write_text("phone,name\n" + "".join(f"{p},Name {i}\n" for i, p in enumerate(phones)), encoding="utf-8")
    cid, _ = create_with_recipients(stack.runtime.session_factory, upload, name="Spring sale", phone_number_id="123456",
                                    template=TEMPLATE, draft=True)
    tapped = phones[:9]
    now = utcnow()
    with stack.runtime.session_factory.begin() as session:   # seeded: as if sent, read and answered
        mine = Message.campaign_id == cid
        session.execute(sa.update(Message).where(mine).values(status="sent", sent_at=now, finished_at=now,
                                                              delivered_at=now, read_at=now, delivery_status="read"))
        for who, values in ((tapped, {"reply_button_id": "yes", "replied_at": now}),
                            (phones[9:13], {"reply_button_id": "no", "replied_at": now}),
                            (phones[20:], {"read_at": None, "delivery_status": "delivered"})):
            session.execute(sa.update(Message).where(mine, Message.phone.in_(who)).values(**values))
        session.execute(sa.update(Campaign).where(Campaign.id == cid)
                        .values(status="completed", started_at=now, finished_at=now))
    page = page_for("marketer")
    page.goto(f"/campaigns/{cid}")
    link = page.locator("#follow-ups a[data-button='yes']")
    link.wait_for()
    assert link.inner_text() == "Follow up with everyone who tapped “Yes please”"
    nothing = page.locator("#follow-ups a[data-follow-up='not_tapped']")
    assert nothing.inner_text() == "Follow up with everyone who tapped nothing"
    assert page.locator("#follow-ups a[data-follow-up='not_read']").count() == 1
    assert "(9)" in page.inner_text("#follow-ups li:first-child")
    shoot(page, "follow_up_funnel")
    link.click()
    page.wait_for_selector("#follow-up-count")
    assert page.locator("h2").first.inner_text() == "To everyone who tapped “Yes please”"
    assert page.inner_text("#follow-up-count").startswith(f"{len(tapped)} contact(s)")
    page.fill("#body_text", "Thanks! Book your table now.")
    page.fill("#button_title_1", "Book a table")
    assert page.get_attribute("#button_id_1", "placeholder") == "book_a_table"   # written from the title
    page.fill("#button_title_2", "Later")
    page.click("#button-ids summary")                             # "Advanced": the ids
    page.fill("#button_id_2", "remind_me")                        # an id the person wrote stays theirs
    page.fill("#button_title_2", "Remind me later")
    assert page.input_value("#button_id_2") == "remind_me"
    shoot(page, "follow_up_form")
    page.click("#create-follow-up")
    page.wait_for_selector("#audience-lines")
    follow_id = id_in(page.url)
    assert follow_id != cid and "Follow-up of campaign" in page.inner_text(".flash")
    lines = page.inner_text("#audience-lines")
    assert f"follow-up of campaign {cid}" in lines and f'tapped "Yes please" in campaign {cid} (Spring sale)' in lines
    follow = load(stack, follow_id)
    assert follow.follow_up_of == cid and follow.audience == {"tapped": {"campaign": cid, "button": "yes"}}
    assert follow.template["buttons"] == [{"id": "book_a_table", "title": "Book a table"},
                                          {"id": "remind_me", "title": "Remind me later"}]
    with stack.runtime.session_factory() as session:
        actor = session.scalar(sa.select(AuditEvent.actor).where(AuditEvent.subject_type == "campaign",
                                                                 AuditEvent.subject_id == follow_id))
    assert actor == "user:marketer@example.com"
    wait_until(lambda: load(stack, follow_id).status == "completed", timeout_s=60, what="the follow-up to finish")
    with stack.runtime.session_factory() as session:
        reached = session.execute(sa.select(Message.phone, Message.status)
                                  .where(Message.campaign_id == follow_id)).all()
    assert sorted(phone for phone, _ in reached) == tapped and {status for _, status in reached} == {"sent"}
    page.wait_for_function("document.querySelector('[data-count=sent]') && "
                           "document.querySelector('[data-count=sent]').textContent.trim() === '9'")   # no reload
    page.wait_for_function("document.getElementById('audience-lines').textContent.includes('into 9 recipient(s)')")
    shoot(page, "follow_up_campaign")


def test_a_viewer_cannot_build_use_or_delete_a_segment_and_an_admin_deletes_one_after_confirming(
        page_for, stack: ConsoleStack) -> None:
    """Given a segment: a viewer sees it but no New / Use / Delete controls, and every hand-made POST
    (with a valid CSRF token) is a 403 that changes nothing; a marketer cannot delete either; an
    admin deletes it after a confirmation step, and the audit trail names them."""
    segment = segments.create_segment(stack.runtime, name="To delete", rules={"tag": "vip"}, actor="test")
    viewer = page_for("viewer")
    viewer.goto("/segments")
    assert viewer.locator(f"tr[data-segment='{segment.id}']").count() == 1
    for control in ("#new-segment", "text=Use in a campaign"):
        assert viewer.locator(control).count() == 0, control
    viewer.goto(f"/segments/{segment.id}")
    for control in ("#use-in-campaign", "#edit-segment", "#delete-segment"):
        assert viewer.locator(control).count() == 0, control
    token = csrf_of(viewer)
    assert viewer.request.get("/segments/new").status == 403
    form = {"csrf_token": token, "name": "Sneaky", "match": "all", "row-0-kind": "tag", "row-0-value": "vip"}
    assert viewer.request.post("/segments/new", form=form).status == 403
    assert viewer.request.post("/segments/count", form=form).status == 403
    assert viewer.request.post(f"/segments/{segment.id}/delete", form={"csrf_token": token}).status == 403
    marketer = page_for("marketer")
    marketer.goto(f"/segments/{segment.id}")
    assert marketer.locator("#delete-segment").count() == 0
    assert marketer.request.post(f"/segments/{segment.id}/delete", form={"csrf_token": csrf_of(marketer)}).status == 403
    assert marketer.request.post(f"/segments/{segment.id}/delete", form={}).status == 403   # no CSRF token
    with stack.runtime.session_factory() as session:
        assert session.get(Segment, segment.id) is not None
        assert session.scalar(sa.select(sa.func.count()).select_from(Segment).where(Segment.name == "Sneaky")) == 0

    admin = page_for("admin")
    admin.goto(f"/segments/{segment.id}")
    assert admin.is_hidden("#confirm-delete")          # the confirmation step first
    admin.click("#delete-segment summary")
    shoot(admin, "segment_delete")
    admin.click("#confirm-delete")
    admin.wait_for_url(f"{stack.base_url}/segments")
    assert f"Segment {segment.id} deleted" in admin.inner_text(".flash")
    assert admin.locator(f"tr[data-segment='{segment.id}']").count() == 0
    shoot(admin, "segments")
    with stack.runtime.session_factory() as session:
        assert session.get(Segment, segment.id) is None
        actor = session.scalar(sa.select(AuditEvent.actor).where(AuditEvent.action == "segment.deleted",
                                                                 AuditEvent.subject_id == segment.id))
    assert actor == "user:admin@example.com"
