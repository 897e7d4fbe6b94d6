"""Issue 24 items 6 and 9: the console's security headers, the same-origin check of every POST, login
throttling instead of account locks, and confirmation steps before what cannot be undone.

- Every answer (pages, error pages, the API's JSON and its 401, /docs) carries a Content-Security-
  Policy without inline script or style, frame-ancestors 'none', X-Frame-Options, nosniff and
  Referrer-Policy; no template has an inline script, an on* attribute or a style attribute.
- A POST with the right CSRF token but another site's Origin (or Referer) is refused and changes
  nothing; so is a login from another site. Behind a trusted https proxy the site is https.
- Wrong passwords slow their address down (per address, and per address and account), never lock
  the account: the owner from another address logs in at once; an unknown email gets the same
  answers and the same one argon2 check; the state is shared by every process on the database.
- In Chromium: Cancel, Revoke and Disable ask first in a dialog ("No" changes nothing, "Yes" acts),
  the same step works without script, and no main page logs a CSP violation. The dialogs and the
  slowed login are photographed at 1366 and 390 px into /tmp/shots/i24_6*.png and i24_9*.png.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from scheduler import campaigns
from scheduler.campaigns import create_with_recipients
from tests.conftest import make_runtime, stack_env
from tests.console.test_console_browser import _chromium, browser, browser_pages, stack  # noqa: F401 - the same fixtures
from tests.console_stack import PASSWORD, ConsoleStack
from worker.access import users
from worker.access.keys import create_key
from worker.access.models import ConsoleSession, LoginThrottle
from worker.access.sessions import COOKIE_NAME
from worker.access.throttle import account_key
from worker.access.users import LoginRefused, create_user, log_in, reset_password
from worker.audit import AuditEvent
from worker.console import csrf
from worker.console.web import PACKAGE_DIR
from worker.models import utcnow
from worker.runtime import install_runtime

ATTACKER, OWNER = "203.0.113.66", "198.51.100.7"
TEMPLATE = {"body_text": "Hello {{name}}, 20 % off this week.", "buttons": [{"id": "yes", "title": "Yes please"}]}
SHOTS = Path("/tmp/shots")
DESKTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}
LIMITS = dict(CONSOLE_LOGIN_FREE_FAILURES="3", CONSOLE_LOGIN_ADDRESS_FREE_FAILURES="6", CONSOLE_LOGIN_DELAY_S="2",
              CONSOLE_LOGIN_DELAY_MAX_S="60")


@pytest.fixture(autouse=True)
def quick_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id at its smallest cost here (the same code path; the default costs ~0.1 s a hash)."""
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(users, "_hasher", hasher)
    monkeypatch.setattr(users, "_DUMMY_HASH", hasher.hash("not a password anyone has"))


@pytest.fixture()
def rt(empty_database: str) -> Iterator[Any]:
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", **LIMITS))
    yield runtime
    runtime.close()


@pytest.fixture()
def web_rt(clean_postgres: str) -> Iterator[Any]:
    """For the tests through HTTP: the headers and the origin check do not depend on the database."""
    runtime = make_runtime(stack_env(database_url=clean_postgres, sandbox_url="http://127.0.0.1:9", **LIMITS))
    yield runtime
    runtime.close()


@pytest.fixture()
def client(web_rt: Any) -> Iterator[TestClient]:
    install_runtime(web_rt)
    try:
        from worker.asgi import create_app

        with TestClient(create_app(), follow_redirects=False) as test_client:
            yield test_client
    finally:
        install_runtime(None)


def _refusal(rt: Any, email: str, password: str, address: str, now: Any) -> str:
    """What the person is told (the message), or "logged in"."""
    try:
        log_in(rt, email, password, now=now, address=address)
    except LoginRefused as exc:
        return f"{type(exc).__name__}: {exc}"
    return "logged in"


def _log_in(client: TestClient, email: str, origin: str | None = "http://testserver") -> Any:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    headers = {"Origin": origin} if origin else {}
    return client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token}, headers=headers)


# --- headers ---------------------------------------------------------------------------------------------

def test_every_answer_carries_the_security_headers_and_the_api_stays_json(web_rt: Any, client: TestClient) -> None:
    """Given the one app, pages, a console error page, the API's problem JSON (its 401 comes from a
    middleware) and /docs all carry the headers; the CSP allows no inline script or style."""
    answers = {"login page": client.get("/login"), "not logged in": client.get("/campaigns/1"),
               "console 404": client.get("/no-such-page", headers={"Accept": "text/html"}),
               "api 401": client.get("/v1/campaigns"), "docs": client.get("/docs"),
               "docs script": client.get("/docs/assets/buttoncast-init.js"), "static": client.get("/static/console.js")}
    for what, answer in answers.items():
        csp = answer.headers.get("content-security-policy", "")
        directives = dict((d.split(" ", 1) + [""])[:2] for d in (x.strip() for x in csp.split(";")))
        assert directives.get("script-src") == "'self'" and directives.get("style-src") == "'self'", (what, csp)
        assert directives.get("frame-ancestors") == "'none'" and directives.get("base-uri") == "'none'", (what, csp)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, (what, csp)
        assert answer.headers.get("x-frame-options") == "DENY", what
        assert answer.headers.get("x-content-type-options") == "nosniff", what
        assert answer.headers.get("referrer-policy") == "same-origin", what
    assert answers["api 401"].status_code == 401
    assert answers["api 401"].headers["content-type"].startswith("application/problem+json")
    assert answers["api 401"].json()["status"] == 401
    assert answers["console 404"].status_code in (303, 404)
    assert "<script>" not in answers["docs"].text and "buttoncast-init.js" in answers["docs"].text


def test_no_template_has_an_inline_script_an_event_attribute_or_a_style_attribute() -> None:
    """The CSP would block them (and log a violation): behaviour lives in console.js, looks in console.css."""
    found = []
    for path in sorted((PACKAGE_DIR / "templates").glob("*.html")):
        text = re.sub(r"\{#.*?#\}", "", path.read_text(encoding="utf-8"), flags=re.S)   # not the comments
        found += [f"{path.name}: inline script" for _ in re.finditer(r"<script(?![^>]*\bsrc=)[^>]*>", text)]
        found += [f"{path.name}: {m.group(1)}=" for m in re.finditer(r"\s(on[a-z]+|style)\s*=", text)]
        found += [f"{path.name}: <style>" for _ in re.finditer(r"<style\b", text)]
    assert found == []


# --- the origin check ------------------------------------------------------------------------------------

def test_a_post_with_the_right_token_from_another_site_is_refused_and_changes_nothing(web_rt: Any, client: TestClient,
                                                                                       tmp_path: Path) -> None:
    create_user(web_rt, email="m@example.com", role="marketer", password=PASSWORD, actor="cli")
    path = tmp_path / "r.csv"
    path.write_text("phone,name\n966500000001,A\n966500000002,B\n", encoding="utf-8")
    cid, _ = create_with_recipients(web_rt.session_factory, path, name="Origin", phone_number_id="123456",
                                    template=TEMPLATE,
                                    scheduled_at=utcnow() + timedelta(hours=1))
    assert _log_in(client, "m@example.com").status_code == 303
    token = csrf.token_for_session(client.cookies.get(COOKIE_NAME))
    # Given the right token, when the POST says it came from another site (or a look-alike host, or
    # an opaque origin, or only a Referer from elsewhere), then it is a 403 and the campaign is untouched
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "http://testserver.evil.example"},
                    {"Origin": "null"}, {"Origin": "http://testserver:8080"}, {"Origin": "https://testserver"},
                    {"Referer": "https://evil.example/campaigns/1"}):
        refused = client.post(f"/campaigns/{cid}/cancel", data={"csrf_token": token}, headers=headers)
        assert refused.status_code == 403 and "another site" in refused.text, headers
    with web_rt.read_sessions() as session:
        assert campaigns.get_campaign(session, cid).status == "scheduled"
    # from this site (Origin, or only a Referer here) it goes through
    same = client.post(f"/campaigns/{cid}/pause", data={"csrf_token": token}, headers={"Origin": "http://testserver"})
    assert same.status_code == 303
    by_referer = client.post(f"/campaigns/{cid}/resume", data={"csrf_token": token},
                             headers={"Referer": f"http://testserver/campaigns/{cid}"})
    assert by_referer.status_code == 303
    with web_rt.read_sessions() as session:
        assert campaigns.get_campaign(session, cid).status == "scheduled"


def test_a_login_posted_from_another_site_is_refused_and_opens_no_session(web_rt: Any, client: TestClient) -> None:
    create_user(web_rt, email="v@example.com", role="viewer", password=PASSWORD, actor="cli")
    refused = _log_in(client, "v@example.com", origin="https://evil.example")
    assert refused.status_code == 403 and "another site" in refused.text and COOKIE_NAME not in refused.cookies
    with web_rt.read_sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ConsoleSession)) == 0
    assert _log_in(client, "v@example.com").status_code == 303


# --- login throttling ------------------------------------------------------------------------------------

def test_an_attacker_is_slowed_and_the_owner_from_another_address_logs_in_at_once(rt: Any) -> None:
    """Given 3 free failures per account and address (LIMITS), when an attacker's address keeps
    guessing, each further try waits longer (2, 4, 8 s), refused before the password is checked,
    even the right one; the owner from another address logs in at once; after the wait the
    attacker's address may try again. Refusals are audited with the address, never the password."""
    create_user(rt, email="owner@example.com", role="marketer", password=PASSWORD, actor="cli")
    t = utcnow()
    answers = [_refusal(rt, "owner@example.com", f"guess {i}", ATTACKER, t) for i in range(3)]
    assert answers == ["LoginRefused: wrong email or password"] * 2 + [
        "LoginRefused: wrong email or password; try again in 2 seconds"]
    slowed = _refusal(rt, "owner@example.com", PASSWORD, ATTACKER, t + timedelta(seconds=1))
    assert slowed == "TooManyFailures: too many failed logins from this address: try again in 1 second"
    # the owner, elsewhere, at the same moment
    assert _refusal(rt, "owner@example.com", PASSWORD, OWNER, t + timedelta(seconds=1)) == "logged in"
    # the attacker waits, fails again, and waits twice as long, then four times
    def at(seconds: int, password: str) -> str:
        return _refusal(rt, "owner@example.com", password, ATTACKER, t + timedelta(seconds=seconds))

    assert at(2, "guess 3").endswith("try again in 4 seconds")
    assert at(6, "guess 4").endswith("try again in 8 seconds")
    assert at(13, PASSWORD).startswith("TooManyFailures")
    assert at(14, PASSWORD) == "logged in"
    with rt.read_sessions() as session:
        trail = session.execute(sa.select(AuditEvent.action, AuditEvent.address, AuditEvent.detail)
                                .where(AuditEvent.actor == "user:owner@example.com").order_by(AuditEvent.id)).all()
    assert [a for a, _addr, _d in trail] == (["user.login_failed"] * 3 + ["user.login_refused", "user.logged_in"]
                                             + ["user.login_failed"] * 2 + ["user.login_refused", "user.logged_in"])
    assert {addr for action, addr, _d in trail if action != "user.logged_in"} == {ATTACKER}
    assert [addr for action, addr, _d in trail if action == "user.logged_in"] == [OWNER, ATTACKER]
    assert trail[3][2] == {"reason": "slowed", "wait_s": 1}
    assert not any(PASSWORD in str(d) or "guess" in str(d) for _a, _addr, d in trail)


def test_one_address_trying_many_emails_is_slowed_for_every_email_but_not_other_addresses(rt: Any) -> None:
    create_user(rt, email="someone@example.com", role="viewer", password=PASSWORD, actor="cli")
    t = utcnow()
    for i in range(6):   # CONSOLE_LOGIN_ADDRESS_FREE_FAILURES: each email fails once
        _refusal(rt, f"guess{i}@example.com", "password1234", ATTACKER, t)
    assert _refusal(rt, "someone@example.com", PASSWORD, ATTACKER, t).startswith("TooManyFailures")
    assert _refusal(rt, "someone@example.com", PASSWORD, OWNER, t) == "logged in"


def test_an_unknown_email_gets_the_same_answers_and_the_same_one_argon2_check(rt: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a known and an unknown email tried the same way from two addresses, every answer is the
    same, and each try that reaches the password check verifies one argon2 hash (the unknown one a
    dummy hash), none when the address is made to wait: same work, so about the same time."""
    create_user(rt, email="known@example.com", role="viewer", password=PASSWORD, actor="cli")
    verified: list[str] = []
    real = users._hasher

    class Counting:
        def verify(self, stored: str, password: str) -> bool:
            verified.append(stored)
            return real.verify(stored, password)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    monkeypatch.setattr(users, "_hasher", Counting())
    t = utcnow()
    seen = {}
    for email, address in (("known@example.com", "192.0.2.1"), ("unknown@example.com", "192.0.2.2")):
        before = len(verified)
        seen[email] = [_refusal(rt, email, "not the password", address, t) for _ in range(4)]
        seen[email].append(_refusal(rt, email, "", address, t))
        assert len(verified) - before == 3, email   # three checked; the last two refused before any check
        assert all(stored.startswith("$argon2id$") for stored in verified[before:])
    assert seen["known@example.com"] == seen["unknown@example.com"]
    assert seen["known@example.com"][-1].startswith("TooManyFailures: too many failed logins from this address")


def test_the_throttle_is_shared_by_two_processes_and_forgotten_in_time(rt: Any, empty_database: str) -> None:
    """Given two runtimes on the same database (two console processes), failures counted by one slow
    the other; rows idle longer than CONSOLE_LOGIN_FORGET_S are deleted; a new password forgets the
    account's failures at every address."""
    create_user(rt, email="shared@example.com", role="viewer", password=PASSWORD, actor="cli")
    other = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9",
                                   CONSOLE_LOGIN_FORGET_S="600", **LIMITS))
    try:
        t = utcnow()
        for _ in range(3):
            _refusal(rt, "shared@example.com", "wrong wrong", ATTACKER, t)
        assert _refusal(other, "shared@example.com", PASSWORD, ATTACKER, t).startswith("TooManyFailures")
        reset_password(other, "shared@example.com", PASSWORD, actor="cli")
        assert _refusal(rt, "shared@example.com", PASSWORD, ATTACKER, t) == "logged in"
        _refusal(rt, "nobody@example.com", "wrong wrong", "192.0.2.9", t)
        _refusal(other, "shared@example.com", "wrong wrong", OWNER, t + timedelta(seconds=601))
        with other.read_sessions() as session:
            left = {(row.address, row.account) for row in session.scalars(sa.select(LoginThrottle))}
        assert left == {(OWNER, ""), (OWNER, account_key("shared@example.com"))}
    finally:
        other.close()


def test_the_console_answers_a_slowed_login_with_429_and_retry_after(web_rt: Any, client: TestClient) -> None:
    create_user(web_rt, email="w@example.com", role="viewer", password=PASSWORD, actor="cli")
    answers, page = [], client.get("/login")
    for _ in range(4):   # each answer is the form again, with a new token
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        page = client.post("/login", data={"email": "w@example.com", "password": "nope nope", "csrf_token": token},
                           headers={"Origin": "http://testserver"})
        answers.append(page)
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert "try again in 2 seconds" in answers[2].text and answers[2].headers["retry-after"] == "2"
    assert "Too many failed logins from this address" in answers[3].text and int(answers[3].headers["retry-after"]) >= 1
    with web_rt.read_sessions() as session:
        addresses = set(session.scalars(sa.select(AuditEvent.address).where(AuditEvent.actor == "user:w@example.com")))
    assert addresses == {"testclient"}


# --- in Chromium ----------------------------------------------------------------------------------------

@pytest.fixture()
def page_for(browser, stack: ConsoleStack):  # noqa: ANN001, ANN201, F811 - the imported fixtures
    """page_for(role, js=True) -> a logged-in page in a fresh browser context (no bypass of the CSP here)."""
    with browser_pages(browser, stack) as make:
        yield lambda role, js=True: make(role, java_script_enabled=js)


def shoot(page, name: str, full_page: bool = False) -> None:  # noqa: ANN001
    """The page (a dialog: the screen) at 1366 and 390 px into /tmp/shots/i24_<name>_<width>.png; at
    390 px nothing may be wider than the screen."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for size in (DESKTOP, PHONE):
        page.set_viewport_size(size)
        page.screenshot(path=str(SHOTS / f"i24_{name}_{size['width']}.png"), full_page=full_page)
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= size["width"], f"{name}: the page is {wide} px wide at {size['width']} px"
    page.set_viewport_size(DESKTOP)


def _campaign(console: ConsoleStack, tmp_path: Path, name: str, n: int) -> int:
    path = tmp_path / f"{name}.csv"
    path.write_text("phone,name\n" + "".join(f"96657{i:07d},N{i}\n" for i in range(n)), encoding="utf-8")
    cid, _ = create_with_recipients(console.runtime.session_factory, path, name=name, phone_number_id="123456",
                                    template=TEMPLATE, scheduled_at=utcnow() + timedelta(hours=2))
    return cid


def _status(console: ConsoleStack, cid: int) -> str:
    with console.runtime.session_factory() as session:
        return campaigns.get_campaign(session, cid).status


@pytest.mark.slow
def test_cancel_asks_first_in_a_dialog_no_changes_nothing_yes_cancels(
        page_for, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    cid = _campaign(stack, tmp_path, "Spring sale", 1234)
    page = page_for("marketer")
    page.goto(f"/campaigns/{cid}")
    page.click("#action-cancel")
    dialog = page.locator("dialog.confirm-dialog")
    dialog.wait_for()
    assert dialog.locator("h2").inner_text() == "Cancel campaign “Spring sale”?"
    assert "1,234 recipients not yet sent will never be sent." in dialog.inner_text()
    assert "cannot be undone" in dialog.inner_text()
    assert page.evaluate("document.activeElement.id") == "confirm-no"   # the safe answer has the focus
    shoot(page, "6")
    dialog.locator("#confirm-no").click()
    dialog.wait_for(state="detached")
    assert _status(stack, cid) == "scheduled"
    page.wait_for_function("document.activeElement && document.activeElement.id === 'action-cancel'")
    page.click("#action-cancel")
    dialog.wait_for()
    page.keyboard.press("Escape")     # Escape is "No" too
    dialog.wait_for(state="detached")
    assert _status(stack, cid) == "scheduled"
    page.click("#action-cancel")
    page.click("dialog.confirm-dialog #confirm-yes")
    assert "Cancelled" in page.inner_text(".flash") and _status(stack, cid) == "cancelled"


@pytest.mark.slow
def test_without_script_cancel_opens_the_confirmation_page(
        page_for, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    cid = _campaign(stack, tmp_path, "No script", 3)
    page = page_for("marketer", js=False)
    page.goto(f"/campaigns/{cid}")
    page.click("#action-cancel")
    assert page.url.endswith(f"/campaigns/{cid}/cancel") and "3 recipients not yet sent" in page.inner_text("#confirm")
    page.click("#confirm-no")
    assert page.url.endswith(f"/campaigns/{cid}") and _status(stack, cid) == "scheduled"
    page.click("#action-cancel")
    page.click("#confirm-yes")
    assert "Cancelled" in page.inner_text(".flash") and _status(stack, cid) == "cancelled"


@pytest.mark.slow
def test_revoking_a_key_and_disabling_a_person_ask_first(page_for, stack: ConsoleStack) -> None:  # noqa: F811
    key, _secret = create_key(stack.runtime, name="Old CRM", scope="send", actor="cli")
    create_user(stack.runtime, email="leaver@example.com", role="marketer", password=PASSWORD, actor="cli")
    page = page_for("admin")
    page.goto("/keys")
    page.click(f"#revoke-{key.id}")
    dialog = page.locator("dialog.confirm-dialog")
    assert dialog.locator("h2").inner_text() == f"Revoke API key {key.prefix} (Old CRM)?"
    shoot(page, "6-revoke")
    dialog.locator("#confirm-no").click()
    dialog.wait_for(state="detached")
    assert page.inner_text(f"#keys tr[data-prefix='{key.prefix}'] .state") == "active"
    page.click(f"#revoke-{key.id}")
    page.click("dialog.confirm-dialog #confirm-yes")
    assert f"API key {key.prefix} (Old CRM) is revoked" in page.inner_text(".flash")
    page.goto("/people")
    row = "tr[data-email='leaver@example.com']"
    page.click(f"{row} a")
    assert "They are logged out now and can no longer log in" in page.inner_text("dialog.confirm-dialog")
    shoot(page, "6-disable")
    page.click("dialog.confirm-dialog #confirm-no")
    page.locator("dialog.confirm-dialog").wait_for(state="detached")
    assert page.inner_text(f"{row} .state") == "active"
    page.click(f"{row} a")
    page.click("dialog.confirm-dialog #confirm-yes")
    assert "leaver@example.com is disabled" in page.inner_text(".flash")
    assert page.inner_text(f"{row} .state") == "disabled"


@pytest.mark.slow
def test_no_main_page_logs_a_csp_violation(page_for, stack: ConsoleStack, tmp_path: Path) -> None:  # noqa: F811
    """An admin walks the main pages (the live campaign page polls meanwhile) and /docs: Chromium
    reports no Content-Security-Policy violation, neither as an event nor in the console."""
    cid = _campaign(stack, tmp_path, "Walk", 5)
    page = page_for("admin")
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.context.add_init_script("document.addEventListener('securitypolicyviolation', (e) => console.error("
                                 "'Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI));")
    for path, ready in (("/", "h1"), (f"/campaigns/{cid}", "#campaign-status"), ("/campaigns/new", "#new-campaign"),
                        ("/segments", "h1"), ("/segments/new", "#segment-builder"), ("/messages", "h1"),
                        ("/contacts", "h1"), ("/health", "h1"), ("/people", "#people"), ("/keys", "#keys"),
                        (f"/campaigns/{cid}/cancel", "#confirm"), ("/docs", ".swagger-ui .info")):
        page.goto(path)
        page.wait_for_selector(ready)
        if path == f"/campaigns/{cid}":
            page.wait_for_function("document.querySelector('.bar svg rect.ok') !== null")
            page.click("#action-cancel")
            page.locator("dialog.confirm-dialog").wait_for()
    assert violations == []
    # Given a proxy on 127.0.0.1 that says the request came over https, the site is https: a POST
    # from https://<host> passes the origin check (then the token's), one from http:// does not
    import httpx

    host = stack.base_url.split("://", 1)[1]
    with httpx.Client(base_url=stack.base_url, headers={"X-Forwarded-Proto": "https"}, timeout=30) as client:
        for origin, status in ((f"https://{host}", 403), (f"http://{host}", 403)):
            answer = client.post("/login", data={"email": "x@example.com", "password": "p"}, headers={"Origin": origin})
            assert answer.status_code == status
            assert ("another site" in answer.text) is origin.startswith("http:"), origin   # https: "the form expired"


@pytest.mark.slow
def test_wrong_passwords_slow_the_browser_down_with_a_message_saying_how_long(
        stack: ConsoleStack, browser) -> None:  # noqa: ANN001, F811 - the imported fixtures
    """Given the stack's default limits, five wrong passwords from this browser: the fifth answer says
    to wait 2 seconds, and the right password then is refused with how long is left (no lock: the
    unit tests above show the owner elsewhere logging in, and this address after the wait)."""
    context = browser.new_context(viewport=DESKTOP, base_url=stack.base_url)
    try:
        page = context.new_page()
        page.goto("/login")
        for attempt in range(1, 6):   # CONSOLE_LOGIN_FREE_FAILURES: 5 by default
            page.fill("#email", stack.emails["viewer"])
            page.fill("#password", f"wrong password {attempt}")
            page.click("button[type=submit]")
        assert "Wrong email or password; try again in 2 seconds." == page.inner_text("#login-error")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        assert page.inner_text("#login-error").startswith("Too many failed logins from this address: try again in")
        shoot(page, "9", full_page=True)
    finally:
        context.close()
