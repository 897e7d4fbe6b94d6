"""A/B tests in the web console, in a real browser: Playwright driving Debian's Chromium against real
`buttoncast api`, worker, beat and webhook processes, the sandbox (which taps buttons), Postgres and
Redis (tests/console_stack.py, the fixtures of test_console_browser).

The wizard with two variants (a problem in variant B shown next to its input, nothing created; fixed,
the review shows both), the campaign page's Variants section while the test waits, and "Decide now"
with its confirmation step. Every page is photographed at 1366 and 390 px into the test's tmp dir
and /tmp/shots/ab_*.png for a person to look at; at 390 px nothing may scroll sideways.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler import campaigns, experiments
from tests.conftest import wait_until
from tests.console.test_console_browser import _chromium, browser, browser_pages, stack  # noqa: F401 - the same fixtures
from tests.console_stack import ConsoleStack
from worker.audit import AuditEvent
from worker.contacts import segments
from worker.contacts.attributes import edit_contact
from worker.models import Campaign, Experiment, Message

pytestmark = pytest.mark.slow
SHOTS = Path("/tmp/shots")
DESKTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}
BUTTONS = [{"id": "yes", "title": "Yes please"}, {"id": "no", "title": "No thanks"}]
A = {"header_text": "Spring sale", "body_text": "Hello {{name}}, 20 % off this week. Interested?", "buttons": BUTTONS}
B = {"body_text": "{{name}}, this weekend only: 20 % off everything", "buttons": BUTTONS}


@pytest.fixture()
def page_for(browser, stack: ConsoleStack):  # noqa: ANN001, ANN201, F811 - the imported fixtures
    """page_for(role) -> a logged-in page in a fresh browser context (its own cookies)."""
    with browser_pages(browser, stack, bypass_csp=True) as make:
        yield make


@pytest.fixture()
def shoot(tmp_path: Path):  # noqa: ANN201
    """shoot(page, name): the whole page at 1366 and 390 px into tmp_path and /tmp/shots/ab_<name>_<width>.png;
    at 390 px nothing may be wider than the screen."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def _shoot(page, name: str) -> None:  # noqa: ANN001
        for size in (DESKTOP, PHONE):
            page.set_viewport_size(size)
            page.evaluate("window.scrollTo(0, 0)")   # the previews are sticky: photograph them where they start
            path = tmp_path / f"ab_{name}_{size['width']}.png"
            page.screenshot(path=str(path), full_page=True)
            shutil.copy(path, SHOTS / path.name)
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= size["width"], f"{name}: the page is {wide} px wide at {size['width']} px: " + page.evaluate(
                "(w) => Array.from(document.querySelectorAll('body *'))"
                ".filter((e) => e.getBoundingClientRect().right > w)"
                ".slice(0, 8).map((e) => e.tagName + '#' + e.id + '.' + e.className).join(', ')", size["width"])
        page.set_viewport_size(DESKTOP)

    return _shoot


def write_csv(path: Path, phones: list[str]) -> Path:
    path.write_text("phone,name\n" + "".join(f"{p},Name {i}\n" for i, p in enumerate(phones)), encoding="utf-8")
    return path


def named(console: ConsoleStack, name: str) -> list[Campaign]:
    with console.runtime.session_factory() as session:
        return list(session.scalars(sa.select(Campaign).where(Campaign.name == name)))


def results(console: ConsoleStack, cid: int) -> dict:
    with console.runtime.session_factory() as session:
        return experiments.results(session, cid, console.runtime.settings.opt_out_button_ids)


def fill_message(page, px: str, message: dict) -> None:  # noqa: ANN001
    for name in ("header_text", "body_text", "footer_text"):
        if name in message:
            page.fill(f"#{px}{name}", message[name])
    for i, button in enumerate(message["buttons"], start=1):
        page.fill(f"#{px}button_title_{i}", button["title"])
    if page.get_attribute(f"#{px}button-ids", "open") is None:     # the ids are "Advanced"
        page.click(f"#{px}button-ids summary")
    for i, button in enumerate(message["buttons"], start=1):
        page.fill(f"#{px}button_id_{i}", button["id"])


def test_the_wizard_takes_two_variants_shows_a_variant_b_problem_next_to_it_and_reviews_both(
        page_for, shoot, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """Given a marketer on New campaign with a CSV of 40: "Add a variant" shows variant B with its own
    preview and the test's options. Variant B repeating a button title is refused by the server next
    to B's second title, the other values kept, nothing created; fixed, the review shows both
    variants and the split (the test group of 50 % split over A and B, the rest held), and the
    draft holds the test as asked."""
    phones = [f"96658300{i:04d}" for i in range(40)]
    upload = write_csv(tmp_path / "ab.csv", phones)
    page = page_for("marketer")
    page.click("text=New campaign")
    assert page.is_hidden("#variant-b") and page.is_hidden("#ab-options") and page.is_disabled("#vb_body_text")
    assert page.inner_text("#variant-a legend") == "Message"
    page.fill("#name", "Spring A/B")
    page.set_input_files("#recipients", str(upload))
    fill_message(page, "", A)
    page.click("#add-variant")
    assert page.is_visible("#variant-b") and page.is_visible("#ab-options") and page.is_hidden("#variant-c")
    assert page.inner_text("#variant-a legend") == "Variant A" and page.inner_text("#variant-b legend") == "Variant B"
    assert page.evaluate("document.activeElement.id") == "vb_body_text"
    assert page.locator("#default_variant option:not([hidden])").all_inner_texts() == ["Variant A", "Variant B"]
    repeated = [{"id": "yes", "title": "Yes please"}, {"id": "later", "title": "Yes please"}]   # a title twice
    fill_message(page, "vb_", {"body_text": B["body_text"], "buttons": repeated})
    page.select_option("#preview-row", index=1)
    assert page.inner_text("#preview-body_text") == "Hello Name 1, 20 % off this week. Interested?"
    assert page.inner_text("#preview-vb_body_text") == "Name 1, this weekend only: 20 % off everything"
    assert page.locator("#preview-vb_buttons .b-button").all_inner_texts() == ["Yes please", "Yes please"]
    assert page.is_hidden("#preview-vb_header_text")   # B has no header: its preview shows none
    page.fill("#test_share_percent", "50")
    page.fill("#decide_after", "1h")
    page.select_option("#metric", "taps")
    # a third variant can be added and removed again; B is the last one then and can be removed
    page.click("#add-variant")
    assert page.is_visible("#variant-c") and page.is_hidden("#add-variant") and page.is_hidden("#remove-variant-b")
    page.click("#remove-variant-c")
    assert page.is_hidden("#variant-c") and page.is_visible("#remove-variant-b") and page.is_visible("#add-variant")
    shoot(page, "wizard")

    page.click("#import")
    page.wait_for_selector("#vb_button_title_2-error")
    assert "repeats an earlier button's title" in page.inner_text("#vb_button_title_2-error")
    assert page.get_attribute("#vb_button_title_2", "aria-invalid") == "true"
    assert page.locator(".field-error").count() == 1          # only B's second title: A is fine
    assert "1 field(s) need fixing" in page.inner_text("#form-problems")
    link = page.locator("#form-problems a[href='#vb_button_title_2']")   # the list atop links to the input
    assert link.inner_text() == "Variant B: button 2 title"
    assert page.is_visible("#variant-b") and page.input_value("#vb_body_text") == B["body_text"]
    assert page.input_value("#test_share_percent") == "50" and page.input_value("#decide_after") == "1h"
    assert named(stack, "Spring A/B") == []                    # nothing was created
    shoot(page, "wizard_error")

    assert "ab.csv (40 rows) is kept" in page.inner_text("#kept-upload")    # not chosen again
    page.fill("#vb_button_title_2", "Maybe later")
    page.click("#import")
    page.wait_for_selector("#review-test, #form-problems")
    assert page.locator("#form-problems").count() == 0, page.inner_text("main")
    assert page.locator("#review-test figure").count() == 2
    assert "Name" not in page.inner_text("#review-test figure[data-variant='B']")   # the message as written
    assert "{{name}}, this weekend only" in page.inner_text("#review-test figure[data-variant='B']")
    plan = page.inner_text("#review-test-plan")
    assert plan.startswith("A test group of 50 % of the recipients, split evenly (25 % each)") and "1h after" in plan
    (draft,) = named(stack, "Spring A/B")
    x = results(stack, draft.id)
    split = page.inner_text("#review-test-split")
    assert split == (f"Variant A: {x['variants'][0].recipients} · Variant B: {x['variants'][1].recipients}"
                     f" · held for the winner: {x['held']}")
    assert sum(v.recipients for v in x["variants"]) + x["held"] == 40
    shoot(page, "review")
    assert draft.status == "draft" and [v["body_text"] for v in draft.variants] == [A["body_text"], B["body_text"]]
    assert draft.variants[1]["buttons"] == [{"id": "yes", "title": "Yes please"},
                                            {"id": "later", "title": "Maybe later"}]
    assert (x["test_share"], x["decide_after"], x["metric"], x["default_variant"]) == (0.5, "1h", "taps", "A")
    page.click("#discard")
    page.wait_for_url(f"{stack.base_url}/")


def test_a_campaign_to_a_segment_takes_variants_too_and_a_test_of_100_percent_only_reports(
        page_for, shoot, stack: ConsoleStack) -> None:  # noqa: F811 - the imported fixture
    """Given a saved segment, a marketer's campaign to it with two variants at 100 %: the review says
    every member gets one of them and nothing is decided; the draft's test is report-only."""
    for i in range(3):
        edit_contact(stack.runtime, f"96658400000{i}", attributes={"name": f"Member {i}"}, tags_add=["ab"],
                     actor="test")
    segment = segments.create_segment(stack.runtime, name="A/B members", rules={"tag": "ab"}, actor="test")
    page = page_for("marketer")
    page.goto(f"/campaigns/new?segment={segment.id}")
    page.fill("#name", "Segment A/B")
    fill_message(page, "", A)
    page.click("#add-variant")
    fill_message(page, "vb_", B)
    page.fill("#test_share_percent", "100")
    page.fill("#decide_after", "4h")       # no use at 100 %: refused next to it
    page.click("#import")
    page.wait_for_selector("#decide_after-error")
    assert "has no use with test_share 1" in page.inner_text("#decide_after-error")
    assert page.is_checked("#audience-segment") and page.is_visible("#variant-b")
    page.fill("#decide_after", "")
    page.click("#import")
    page.wait_for_selector("#review-test")
    assert page.inner_text("#review-test-plan").startswith("Every recipient gets one of the 2 variants, split evenly")
    assert "split when it starts" in page.inner_text("#review-test-split")
    (draft,) = named(stack, "Segment A/B")
    assert draft.segment_id == segment.id and results(stack, draft.id)["phase"] == experiments.REPORT
    page.click("#discard")
    page.wait_for_url(f"{stack.base_url}/")


def test_the_campaign_page_shows_the_variants_while_the_test_waits_and_an_admin_decides_now(
        page_for, shoot, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """Given an A/B test of 60 (test group 50 %, winner 1h after it is sent) started on the real stack:
    once the test group is sent, the campaign page's Variants section says it waits until a time,
    shows each variant's figures with its rate and interval and how many are held (also as `held` in
    the status filter). A viewer has no "Decide now" and gets 403 posting it; an admin chooses
    variant B, confirms on the next page, and the page says who decided and when; the held
    recipients all get B and the campaign completes. The audit trail names the admin."""
    phones = [f"96658500{i:04d}" for i in range(60)]
    campaign, _ = campaigns.create_from_options(stack.runtime, write_csv(tmp_path / "r.csv", phones), name="Decide me",
                                                template=None, variants=[A, B], test_share=0.5, decide_after="1h")
    cid = campaign.id
    wait_until(lambda: results(stack, cid)["phase"] == experiments.WAITING, timeout_s=60,
               what="the test group to be sent and the clock to start")
    x = results(stack, cid)
    held = x["held"]
    assert held > 0 and sum(v.sent for v in x["variants"]) == 60 - held

    viewer = page_for("viewer")
    viewer.goto(f"/campaigns/{cid}")
    assert viewer.inner_text("#ab-phase").startswith("Waiting until ")
    assert viewer.locator("#decide-form").count() == 0
    token = viewer.get_attribute("form[action='/logout'] input[name=csrf_token]", "value")
    assert viewer.request.post(f"/campaigns/{cid}/decide", form={"csrf_token": token, "variant": "B"}).status == 403
    assert results(stack, cid)["phase"] == experiments.WAITING

    admin = page_for("admin")
    admin.goto(f"/campaigns/{cid}")
    phase = admin.inner_text("#ab-phase")
    assert phase == f"Waiting until {x['decide_at']:%Y-%m-%d %H:%M:%S} UTC to choose the winner.", phase
    assert admin.inner_text("#ab-held").startswith(f"{held} recipient(s) held for the winner")
    after = results(stack, cid)   # taps keep arriving from the sandbox: the page shows a count between the two reads
    rows = admin.locator("#variants-table tbody tr")
    assert rows.count() == 2
    for row, v, w in zip(rows.all(), x["variants"], after["variants"]):
        assert row.get_attribute("data-variant") == v.letter
        assert row.locator("[data-figure=sent]").inner_text() == str(v.sent)
        if v.metric.rate is not None:
            rate = row.locator("[data-figure=rate]").inner_text()
            shown = re.search(r"\((\d+) of (\d+)\)", rate)
            assert shown and v.metric.successes <= int(shown[1]) <= w.metric.successes, (rate, v.metric, w.metric)
            assert int(shown[2]) == v.metric.trials and "–" in rate
    assert admin.locator("[data-count=waiting]").inner_text() == str(held)
    shoot(admin, "campaign_waiting")
    admin.select_option("#r-status", "held")                       # the filter offers `held` in words
    assert admin.inner_text("#r-status option:checked") == "held (for the A/B winner)"
    admin.click("#recipients button[type=submit]")
    admin.wait_for_url("**/recipients?status=held*")
    rows_shown = admin.locator(".recipients tbody tr").count()
    assert admin.locator(".recipients .s-held").count() == min(held, 50) == rows_shown
    assert set(admin.locator(".recipients tbody td:nth-child(3)").all_inner_texts()) == {"–"}   # no variant yet
    admin.goto(f"/campaigns/{cid}")

    admin.click("#decide-now")                                     # "by the numbers so far" first: what they say now
    admin.wait_for_selector("#decide-verdict")
    assert admin.inner_text("#decide-verdict").startswith("The numbers now: ")
    assert admin.inner_text("#confirm-decide") == "Yes, decide by the numbers now"
    admin.click("#not-now")
    admin.wait_for_url(f"**/campaigns/{cid}")
    admin.select_option("#decide-variant", "B")
    admin.click("#decide-now")
    admin.wait_for_selector("#decide-confirm")
    assert admin.inner_text("#decide-what") == f"Send variant B to the {held} recipient(s) who are held, now."
    assert results(stack, cid)["phase"] == experiments.WAITING     # the confirmation step changed nothing
    shoot(admin, "decide_confirm")
    admin.click("#confirm-decide")
    admin.wait_for_url(f"**/campaigns/{cid}")
    assert admin.inner_text(".flash") == f"Decided: variant B goes to the {held} recipient(s) who were held."
    phase = admin.inner_text("#ab-phase")
    assert phase.startswith("Decided by user:admin@example.com at ") and ": variant B chosen (the numbers: " in phase
    assert admin.locator("#decide-form").count() == 0
    assert admin.locator("#variants-table tr[data-variant='B'] .badge").inner_text() == "sent to the rest"
    with stack.runtime.session_factory() as session:
        test = session.get(Experiment, cid)
        assert (test.phase, test.sent_variant, test.decided_by) == ("decided", "B", "user:admin@example.com")
        actor = session.scalar(sa.select(AuditEvent.actor).where(AuditEvent.action == "campaign.decided",
                                                                 AuditEvent.subject_id == cid))
        assert actor == "user:admin@example.com"
    again = admin.request.post(f"/campaigns/{cid}/decide", form={
        "csrf_token": admin.get_attribute("form[action='/logout'] input[name=csrf_token]", "value")})
    assert f"Not done: campaign {cid} was decided already: variant B" in again.text()
    wait_until(lambda: campaigns_status(stack, cid) == "completed", timeout_s=60, what="the rest to be sent variant B")
    with stack.runtime.session_factory() as session:
        by_variant = dict(session.execute(sa.select(Message.variant, sa.func.count()).where(Message.campaign_id == cid)
                                          .group_by(Message.variant)).all())
    assert by_variant["B"] == x["variants"][1].recipients + held and by_variant["A"] == x["variants"][0].recipients
    admin.reload()
    assert "went to the " + str(held) + " recipient(s) who were held" in admin.inner_text("#ab-released")
    admin.wait_for_function("document.querySelector('[data-count=left]').textContent.trim() === '0' && "
                            "document.querySelector('[data-count=sent]').textContent.trim() === '60'")   # recounted
    shoot(admin, "campaign_decided")


def campaigns_status(console: ConsoleStack, cid: int) -> str:
    with console.runtime.session_factory() as session:
        return campaigns.get_campaign(session, cid).status
