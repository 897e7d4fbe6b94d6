"""Issue 22 item 1: contacts keep attributes and tags. The CSV import (merge, tags, the per-row
report, opt-out untouched), one contact's edit, `contacts import --attributes` and `contacts show`,
`campaign create --recipients` storing the file's columns (and `--no-save-attributes`), the API's
GET/PATCH, and the console's contact page (form posts on both databases; a browser at desktop and
phone width). Each test but the browser's runs on SQLite and on Postgres."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.conftest import IN_CI, REPO_ROOT, make_runtime, stack_env
from worker.audit import AuditEvent
from worker.cli import main
from worker.contacts import attributes as attrs
from worker.contacts import service as contacts
from worker.contacts.attributes import AttributeFileError, edit_contact, import_attributes
from worker.errors import MessageInvalid
from worker.models import Contact, ContactEvent
from worker.runtime import install_runtime

_seq = iter(range(1_000_000, 9_999_999))
PASSWORD = "attributes test password"
MESSAGE = {"body_text": "Hi {{name}}", "buttons": [{"id": "go", "title": "Go"}]}


def new_phone() -> str:
    return f"96658{next(_seq):07d}"   # valid Saudi mobile numbers, a range no other test uses


@pytest.fixture()
def env(database_url, sandbox):  # noqa: ANN001
    return stack_env(database_url=database_url, sandbox_url=sandbox[0])


@pytest.fixture()
def runtime(env):  # noqa: ANN001
    rt = make_runtime(env)
    yield rt
    rt.close()


def run(env: dict[str, str], *args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def stored(rt, phone: str) -> tuple[dict, list]:  # noqa: ANN001
    with rt.read_sessions() as session:
        return attrs.attributes_of(session, phone)


def consent(rt, phone: str) -> tuple:  # noqa: ANN001
    with rt.read_sessions() as session:
        row = session.get(Contact, phone)
        events = session.scalar(sa.select(sa.func.count()).select_from(ContactEvent).where(ContactEvent.phone == phone))
        return row.opted_out_at, row.opt_out_source, row.opt_out_note, row.opted_in_at, events


# --- the import ------------------------------------------------------------------------------------

def test_an_import_merges_attributes_adds_tags_reports_rows_by_line_and_never_touches_opt_out(runtime, tmp_path) -> None:
    """Given a contact with name and plan who opted out, and a file that renames them, leaves their
    city empty and tags them, with a bad phone and a too-long value between valid rows: the valid
    rows are stored (new phones become contacts), the bad ones are reported by line, and the opt-out
    is exactly as it was."""
    known, fresh, other = new_phone(), new_phone(), new_phone()
    import_attributes(runtime, write(tmp_path / "first.csv", f"phone,name,plan\n{known},Old name,gold\n"), actor="test")
    contacts.operator_opt_out(runtime, [known], reason="asked by phone", actor="test")
    before = consent(runtime, known)

    long_value = "x" * (attrs.ATTRIBUTE_VALUE_MAX_CHARS + 1)
    path = write(tmp_path / "people.csv", "Phone,name,city,Tags\n"
                 f"+{known},Lina,, VIP ;New \n"          # line 2: city empty -> unchanged; tags trimmed, lower-cased
                 "12ab,Nobody,Riyadh,\n"                 # line 3: not a phone
                 f"{other},Sami,{long_value},\n"         # line 4: a value over the limit
                 "\n"                                    # line 5: blank, skipped
                 f"{fresh},Majed,Jeddah,gold;vip\n")     # line 6
    result = import_attributes(runtime, path, actor="test")

    assert (result.rows, result.contacts, result.created, result.tags_added, result.rejected) == (2, 2, 1, 4, 2)
    assert result.columns == ["name", "city"]
    assert [p.split(":")[0] for p in result.problems] == ["line 3", "line 4"]
    assert f"city: is {len(long_value):,} characters; the limit is 1,024" in result.problems[1]
    assert stored(runtime, known) == ({"name": "Lina", "plan": "gold"}, ["new", "vip"])
    assert stored(runtime, fresh) == ({"name": "Majed", "city": "Jeddah"}, ["gold", "vip"])
    with runtime.read_sessions() as session:
        assert session.get(Contact, other) is None            # a rejected row creates nothing
    assert consent(runtime, known) == before                  # opt-out state and history untouched
    assert consent(runtime, fresh)[0] is None

    # the same file again: nothing new, the same report
    again = import_attributes(runtime, path, actor="test")
    assert (again.rows, again.created, again.tags_added, again.rejected) == (2, 0, 0, 2)
    assert stored(runtime, known) == ({"name": "Lina", "plan": "gold"}, ["new", "vip"])
    with runtime.read_sessions() as session:
        audited = session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "contacts.attributes_imported",
                                                              AuditEvent.actor == "test")).all()
    assert any(a.detail["source"] == "people.csv" and a.detail["rows"] == 2 for a in audited)


def test_a_row_over_the_limits_is_rejected_and_its_neighbours_kept_across_windows(runtime, tmp_path, monkeypatch) -> None:
    """With small limits (3 attributes, 2 tags a contact) and windows of 2 rows: a row that would
    give its contact a 4th attribute or a 3rd tag is rejected with its line; the rows around it,
    and a phone repeated in a later window, are applied."""
    monkeypatch.setattr(attrs, "ATTRIBUTES_MAX", 3)
    monkeypatch.setattr(attrs, "TAGS_MAX", 2)
    full, tagged, fine = new_phone(), new_phone(), new_phone()
    import_attributes(runtime, write(tmp_path / "seed.csv", f"phone,a,b,tags\n{full},1,2,\n{tagged},,,one\n"), actor="test")

    path = write(tmp_path / "more.csv", "phone,c,d,tags\n"
                 f"{fine},3,,x\n"          # line 2: kept
                 f"{full},3,4,\n"          # line 3: a, b + c, d = 4 attributes
                 f"{tagged},,,two;three\n"  # line 4: one + two, three = 3 tags
                 f"{fine},,4,y\n")         # line 5: a later window, merged: c, d; tags x, y
    result = import_attributes(runtime, path, actor="test", batch_rows=2)

    assert result.problems == ["line 3: would give the contact 4 attributes; a contact keeps at most 3",
                               "line 4: would give the contact 3 tags; a contact keeps at most 2"]
    assert (result.rows, result.rejected) == (2, 2)
    assert stored(runtime, full) == ({"a": "1", "b": "2"}, [])
    assert stored(runtime, tagged) == ({}, ["one"])
    assert stored(runtime, fine) == ({"c": "3", "d": "4"}, ["x", "y"])


@pytest.mark.parametrize(("content", "expected"), [
    (b"name,city\nLina,Riyadh\n", "has no 'phone' column"),
    (b"phone,first name\n966500000001,Lina\n", "column 'first name' is not a valid attribute name"),
    (b"phone,city,city\n966500000001,a,b\n", "'city' appear more than once"),
    (b"phone,name\n966500000001,\xff\xfe\n", "not UTF-8"),
])
def test_a_file_that_cannot_be_used_is_refused_naming_the_problem(runtime, tmp_path, content, expected) -> None:  # noqa: ANN001
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(AttributeFileError, match=re.escape(expected)):
        import_attributes(runtime, path, actor="test")


# --- one contact's edit ----------------------------------------------------------------------------

def test_an_edit_sets_and_removes_attributes_and_tags_with_field_named_problems(runtime) -> None:
    phone = new_phone()
    edited = edit_contact(runtime, phone, attributes={"name": "Lina", "city": "Riyadh", "age": 31},
                          tags_add=["VIP", "trial"], actor="user:ana@example.com")
    assert (edited.attributes, edited.tags, edited.changed) == ({"name": "Lina", "city": "Riyadh", "age": "31"},
                                                                ["trial", "vip"], True)
    edited = edit_contact(runtime, phone, attributes={"city": None, "age": ""}, tags_remove=["trial"], actor="user:ana@example.com")
    assert (edited.attributes, edited.tags) == ({"name": "Lina"}, ["vip"])
    assert edit_contact(runtime, phone, attributes={"name": "Lina"}, actor="x").changed is False

    with pytest.raises(MessageInvalid) as refused:
        edit_contact(runtime, phone, attributes={"1st": "a", "city": "y" * 1025, "tags": "b", "ok": ["list"]},
                     tags_add=["a;b", " "], tags_remove=["z" * 65], actor="x")
    assert [p.field for p in refused.value.problems] == ["attributes.1st", "attributes.city", "attributes.tags",
                                                         "attributes.ok", "tags_add[0]", "tags_add[1]", "tags_remove[0]"]
    assert stored(runtime, phone) == ({"name": "Lina"}, ["vip"])   # nothing written

    assert set_and_read_in_batches(runtime, phone) == ({phone: {"name": "Lina"}}, {phone: ["vip"]})
    with runtime.read_sessions() as session:
        actions = session.scalars(sa.select(AuditEvent.action).where(AuditEvent.subject_type == "contact",
                                                                     AuditEvent.subject_id == int(phone))).all()
    assert sorted(actions) == ["contact.attributes_changed"] * 2 + ["contact.tags_changed"] * 2


def set_and_read_in_batches(rt, phone: str) -> tuple[dict, dict]:  # noqa: ANN001
    with rt.read_sessions() as session:
        return attrs.attributes_for(session, [phone, new_phone()]), attrs.tags_for(session, [phone])


# --- the commands ----------------------------------------------------------------------------------

def test_contacts_import_attributes_prints_a_per_row_report_and_show_prints_them(env, tmp_path) -> None:
    a, b = new_phone(), new_phone()
    path = write(tmp_path / "people.csv", f"phone,name,city,tags\n{a},Lina,Riyadh,vip\nnope,x,y,\n{b},Majed,,\n")
    out = run(env, "contacts", "import", "--attributes", str(path))
    assert out.exit_code == 0, out.output
    assert ("stored attributes from 2 row(s) on 2 contact(s) (2 new; columns: name, city); added 1 tag(s); "
            "rejected 1 row(s)") in out.stderr
    assert "line 3: phone:" in out.stderr

    shown = run(env, "contacts", "show", a).stdout
    assert "tags:          vip" in shown and re.search(r"attributes \(2\):\n +city +Riyadh\n +name +Lina\n", shown)
    listed = {r["phone"]: r for r in json.loads(run(env, "contacts", "list", "--format", "json").stdout)}
    assert listed[a]["attributes"] == {"name": "Lina", "city": "Riyadh"} and listed[a]["tags"] == ["vip"]
    rows = {r["phone"]: r for r in csv.DictReader(io.StringIO(run(env, "contacts", "list").stdout))}
    assert json.loads(rows[b]["attributes"]) == {"name": "Majed"} and rows[a]["tags"] == "vip"

    both = run(env, "contacts", "import", "--attributes", str(path), "--optouts", str(path))
    neither = run(env, "contacts", "import")
    assert both.exit_code == neither.exit_code == 2 and "exactly one of --optouts FILE" in both.stderr
    bad = run(env, "contacts", "import", "--attributes", str(write(tmp_path / "bad.csv", "name\nx\n")))
    assert bad.exit_code == 2 and "has no 'phone' column" in bad.stderr


def test_campaign_create_stores_the_files_columns_unless_told_not_to(env, runtime, tmp_path) -> None:
    """`campaign create --recipients` keeps the columns (a column that cannot be an attribute is
    named and skipped; a bad phone is the campaign's rejection only); `--no-save-attributes` does not."""
    a, b, c = new_phone(), new_phone(), new_phone()
    message = write(tmp_path / "message.json", json.dumps(MESSAGE))
    recipients = write(tmp_path / "r.csv", f"phone,name,city,tags,plan type\n{a},Lina,Riyadh,vip,x\n{b},Majed,,,\nbad,X,,,\n")
    made = run(env, "campaign", "create", "--name", "keeps", "--message", str(message), "--recipients", str(recipients),
               "--phone-number-id", "1", "--draft")
    assert made.exit_code == 0, made.output
    assert "contacts: stored the file's columns (name, city) on 2 contact(s); added 1 tag(s)" in made.stderr
    assert "not stored: column 'plan type' is not a valid attribute name" in made.stderr
    assert "not stored for" not in made.stderr                     # the bad phone is reported once, by the import
    assert stored(runtime, a) == ({"name": "Lina", "city": "Riyadh"}, ["vip"])
    assert stored(runtime, b) == ({"name": "Majed"}, [])

    skipped = write(tmp_path / "s.csv", f"phone,name\n{c},Sara\n")
    made = run(env, "campaign", "create", "--name", "skips", "--message", str(message), "--recipients", str(skipped),
               "--phone-number-id", "1", "--draft", "--no-save-attributes")
    assert made.exit_code == 0, made.output
    assert "contacts: stored" not in made.stderr and stored(runtime, c) == ({}, [])


# --- the API and the console (in process) ----------------------------------------------------------

@pytest.fixture()
def app_client(runtime):  # noqa: ANN001
    install_runtime(runtime)
    try:
        from worker.asgi import create_app

        with TestClient(create_app()) as client:
            yield client
    finally:
        install_runtime(None)


def test_the_api_shows_and_edits_attributes_and_tags(runtime, app_client) -> None:
    from worker.access.keys import create_key

    suffix = uuid.uuid4().hex[:8]
    admin = {"Authorization": f"Bearer {create_key(runtime, name=f'a-{suffix}', scope='admin', actor='test')[1]}"}
    campaigns_key = {"Authorization": f"Bearer {create_key(runtime, name=f'c-{suffix}', scope='campaigns', actor='test')[1]}"}
    phone = new_phone()

    body = {"attributes": {"name": "Lina", "city": "Riyadh"}, "tags_add": ["VIP"]}
    assert app_client.patch(f"/v1/contacts/{phone}", json=body, headers=campaigns_key).status_code == 403
    patched = app_client.patch(f"/v1/contacts/+{phone}", json=body, headers=admin)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["attributes"], patched.json()["tags"], patched.json()["changed"]) == (
        {"name": "Lina", "city": "Riyadh"}, ["vip"], True)
    patched = app_client.patch(f"/v1/contacts/{phone}", json={"attributes": {"city": None}, "tags_remove": ["vip"]},
                               headers=admin).json()
    assert (patched["attributes"], patched["tags"], patched["opted_out"]) == ({"name": "Lina"}, [], False)
    shown = app_client.get(f"/v1/contacts/{phone}", headers=admin).json()
    assert shown["attributes"] == {"name": "Lina"} and shown["tags"] == []

    refused = app_client.patch(f"/v1/contacts/{phone}", headers=admin,
                               json={"attributes": {"first name": "x", "city": "y" * 1025}, "tags_add": ["a;b"]})
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["attributes.first name", "attributes.city", "tags_add[0]"]
    unknown = app_client.patch(f"/v1/contacts/{phone}", headers=admin, json={"tags": ["x"]})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "tags"
    assert app_client.get(f"/v1/contacts/{phone}", headers=admin).json()["attributes"] == {"name": "Lina"}

    # a campaign from JSON stores its recipients' columns, unless save_attributes is false
    kept, skipped = new_phone(), new_phone()
    for phone_, save in ((kept, True), (skipped, False)):
        made = app_client.post("/v1/campaigns", headers=campaigns_key, json={
            "name": f"api {save}", "message": MESSAGE, "recipients": [{"phone": phone_, "name": "Noor"}],
            "phone_number_id": "1", "draft": True, **({} if save else {"save_attributes": False})})
        assert made.status_code == 201, made.text
        assert made.json()["attributes_stored"] == (1 if save else None)
    assert stored(runtime, kept)[0] == {"name": "Noor"} and stored(runtime, skipped)[0] == {}


def console_login(runtime, client: TestClient, role: str = "admin") -> str:  # noqa: ANN001
    from worker.access.users import create_user

    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    create_user(runtime, email=email, role=role, password=PASSWORD, actor="test")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/"},
                       follow_redirects=False).status_code == 303
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/contacts").text).group(1)


def test_the_console_contact_page_edits_them_and_a_viewer_may_only_look(runtime, app_client) -> None:
    phone = new_phone()
    edit_contact(runtime, phone, attributes={"name": "Lina"}, actor="test")
    token = console_login(runtime, app_client)
    post = lambda **form: app_client.post("/contacts/attributes", data={"csrf_token": token, "phone": phone, **form})  # noqa: E731
    assert "Saved." in post(name="city", value="Riyadh").text
    assert "Saved." in post(tags_add="vip; Gold").text
    assert "Saved." in post(name="name", value="").text          # an empty value removes it
    assert "Saved." in post(tag_remove="gold").text
    page = post(name="first name", value="x").text
    assert "Not done: attributes.first name: is not a valid attribute name" in page
    assert stored(runtime, phone) == ({"city": "Riyadh"}, ["vip"])
    assert 'data-attribute="city">Riyadh<' in page and 'data-tag="vip"' in page and 'id="set-attribute"' in page
    assert app_client.post("/contacts/attributes", data={"phone": phone, "name": "x", "value": "y"}).status_code == 403

    # a new campaign from the console keeps the columns unless the box is unchecked
    kept, skipped = new_phone(), new_phone()
    for phone_, box in ((kept, ["off", "on"]), (skipped, ["off"])):
        form = {"csrf_token": token, "name": f"console {phone_}", "body_text": "Hi {{name}}", "button_id_1": "go",
                "button_title_1": "Go", "phone_number_id": "1", "save_attributes": box}
        review = app_client.post("/campaigns/new", data=form,
                                 files={"recipients": ("r.csv", f"phone,name\n{phone_},Noor\n".encode(), "text/csv")})
        assert review.status_code == 200, review.text[:500]
    assert stored(runtime, kept)[0] == {"name": "Noor"} and stored(runtime, skipped)[0] == {}

    viewer = TestClient(app_client.app)
    with viewer:
        console_login(runtime, viewer, role="viewer")
        page = viewer.get(f"/contacts?phone={phone}").text
        assert 'data-attribute="city">Riyadh<' in page and 'id="set-attribute"' not in page and "Remove tag" not in page


# --- the contact page in a browser ----------------------------------------------------------------

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "tests" / "screenshots"


@pytest.mark.slow
def test_the_contact_page_edits_attributes_and_tags_in_a_browser(migrated_postgres, redis_url, spawn, tmp_path) -> None:
    """An admin sets, changes and removes an attribute and adds and removes a tag on the contact
    page; it is photographed at 1366 and 390 px wide (tests/screenshots/contact_attributes_*.png)
    and has no horizontal scroll at 390 px."""
    if not os.access(CHROMIUM_PATH, os.X_OK):
        (pytest.fail if IN_CI else pytest.skip)(f"no Chromium at {CHROMIUM_PATH}")
    from playwright.sync_api import sync_playwright

    from tests.conftest import free_port

    port = free_port()
    env = stack_env(database_url=migrated_postgres, sandbox_url="http://127.0.0.1:9", broker_url=redis_url)
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    made = subprocess.run([sys.executable, "-m", "worker.cli", "user", "create", "--email", email, "--role", "admin",
                           "--password-stdin"], input=PASSWORD + "\n", env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
    assert made.returncode == 0, made.stderr
    spawn(env, "api", "--port", str(port), ready="Application startup complete.")
    phone = new_phone()
    rt = make_runtime(env)
    try:
        edit_contact(rt, phone, attributes={"name": "Lina Al-Harbi", "city": "Riyadh", "plan": "gold"},
                     tags_add=["vip", "ramadan-2026"], actor="test")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1366, "height": 900}, base_url=f"http://127.0.0.1:{port}")
            page.set_default_timeout(20_000)
            page.goto("/login")
            page.fill("#email", email)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            page.goto(f"/contacts?phone={phone}")

            page.fill("#attribute-name", "city")                     # change
            page.fill("#attribute-value", "Jeddah")
            page.click("#set-attribute-button")
            assert page.inner_text("[data-attribute=city]") == "Jeddah"
            page.fill("#attribute-name", "language")                 # add
            page.fill("#attribute-value", "ar")
            page.click("#set-attribute-button")
            page.click("button[aria-label='Remove plan']")            # remove
            assert page.locator("[data-attribute=plan]").count() == 0
            page.fill("#tags-add", "Gold; new customer")
            page.click("#add-tags-button")
            page.click("button[aria-label='Remove tag ramadan-2026']")
            assert [t.strip() for t in page.locator("[data-tag]").all_inner_texts()] == ["gold", "new customer", "vip"]
            assert stored(rt, phone) == ({"name": "Lina Al-Harbi", "city": "Jeddah", "language": "ar"},
                                         ["gold", "new customer", "vip"])

            SCREENSHOTS.mkdir(exist_ok=True)
            for width in (1366, 390):
                page.set_viewport_size({"width": width, "height": 900})
                page.screenshot(path=str(SCREENSHOTS / f"contact_attributes_{width}.png"), full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            browser.close()
    finally:
        rt.close()


def test_a_campaigns_file_stores_the_same_attributes_without_judging_its_recipients_phones_again(
        runtime, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """`campaign create` stores the file's columns after its import; the phones that import already
    judged valid (written as E.164) are matched by their digits instead of libphonenumber again, and
    every other form (national, with a trunk 0 after the country code, invalid) is judged as before."""
    from scheduler.campaigns import create_with_recipients
    e164, spaced, national, trunk = new_phone(), new_phone(), new_phone(), new_phone()
    path = write(tmp_path / "r.csv", "phone,name,city\n"
                 f"+{e164},Amal,Riyadh\n"
                 f"+{spaced[:3]} {spaced[3:5]}-{spaced[5:]},Badr,Jeddah\n"
                 f"0{national[3:]},Dana,Abha\n"
                 f"+966 0{trunk[3:]},Eyad,Hail\n"
                 "+1234,Nobody,Nowhere\n")
    campaign_id, imported = create_with_recipients(runtime.session_factory, path, name="c", phone_number_id="1",
                                                   template=MESSAGE, default_region="SA", processes=1)
    judged = []
    real = attrs.judge_phone
    monkeypatch.setattr(attrs, "judge_phone", lambda raw, **kw: judged.append(raw) or real(raw, **kw))
    kept = attrs.store_campaign_attributes(runtime, path, default_region="SA", campaign_id=campaign_id)
    assert (kept.rows, kept.contacts, kept.rejected) == (imported.imported, imported.imported, 0)
    assert judged == [f"0{national[3:]}", f"+966 0{trunk[3:]}", "+1234"]   # the E.164 ones were known
    for phone, name in ((e164, "Amal"), (spaced, "Badr"), (national, "Dana")):
        assert stored(runtime, phone)[0]["name"] == name
