"""Issue 22 item 6: quiet hours in each recipient's own time zone (`--window 09:00-21:00 --tz recipient`).

A message goes out only while the window is open in EVERY zone its number may be in (libphonenumber's
zones); the dispatcher claims only the open zones' messages, the send task holds one whose zone is
closed, the import stores each number's zone group and the campaign's count per group, and
`campaign show`, the console's review and the API say how many recipients each group holds and
when it opens next. On SQLite and Postgres where a database is involved.
"""

from __future__ import annotations

import dataclasses
import html
import re
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from scheduler import dispatcher
from scheduler.campaigns import create_with_recipients
from scheduler.dispatcher import dispatch_tick
from scheduler.importer import ImportRefused
from scheduler.zones import recount_zones, zone_table
from tests.conftest import make_runtime, stack_env
from worker.cli import main
from worker.models import Campaign, Message, utcnow
from worker.sending.client import AttemptRecord, SendResult
from worker.sending.send import Outcome, send_deps, send_message
from worker.window import (
    RECIPIENT,
    UNKNOWN_ZONE,
    ZONE_GROUP_MAX_CHARS,
    Window,
    WindowInvalid,
    next_opening,
    next_opening_group,
    open_in_group,
    parse_window,
    zone_group_of,
)

CONTENT = {"body_text": "Hi", "buttons": [{"id": "a", "title": "A"}]}
TEMPLATE = {"body_text": "Hi {{name}}", "buttons": [{"id": "go", "title": "Go"}]}
IDAHO = "America/Boise|America/Los_Angeles"     # +1 208 555: Mountain or Pacific time
NEW_YORK, RIYADH = "America/New_York", "Asia/Riyadh"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# --- zone groups and "open in every zone" (no database) ------------------------------------------

def test_a_numbers_zone_group_is_every_zone_libphonenumber_says_it_may_be_in() -> None:
    assert zone_group_of("966501234567") == RIYADH
    assert zone_group_of("12124567890") == NEW_YORK
    assert zone_group_of("12085550123") == IDAHO
    assert zone_group_of("447911123456") == "Europe/Guernsey|Europe/Isle_of_Man|Europe/Jersey|Europe/London"
    # a Russian mobile may be in any of 16 zones (228 characters): zones of one clock are merged to fit
    russia = zone_group_of("79161234567")
    assert len(russia) <= ZONE_GROUP_MAX_CHARS and "Europe/Moscow" in russia and "Asia/Vladivostok" in russia
    assert "Asia/Kamchatka" not in russia and "Asia/Anadyr" in russia   # same clock all year: one is enough
    # no zone known (international freephone), or anywhere in North America (toll-free): unknown
    assert zone_group_of("80012345678") == UNKNOWN_ZONE
    assert zone_group_of("18005550123") == UNKNOWN_ZONE


def test_a_group_of_several_zones_is_open_only_while_open_in_all_of_them() -> None:
    # Given 09:00-21:00 and an Idaho number (Boise is an hour ahead of Los Angeles), on 1 June (DST)
    june_1 = (2026, 6, 1)
    # 09:30 in Boise but 08:30 in Los Angeles: closed
    assert not open_in_group("09:00", "21:00", IDAHO, utc(*june_1, 15, 30))
    # 09:30 in Los Angeles (10:30 in Boise): open
    assert open_in_group("09:00", "21:00", IDAHO, utc(*june_1, 16, 30))
    # 20:30 in Los Angeles, 21:30 in Boise: closed again
    assert not open_in_group("09:00", "21:00", IDAHO, utc(2026, 6, 2, 3, 30))
    # and it next opens at 09:00 in Los Angeles, the last of the two to open
    assert next_opening_group("09:00", "21:00", IDAHO, utc(2026, 6, 2, 3, 30)) == utc(2026, 6, 2, 16, 0)
    assert next_opening_group("09:00", "21:00", IDAHO, utc(*june_1, 16, 30)) is None   # open now
    # a group whose zones are never all inside a short window at once does not open (ask again in a week)
    russia = zone_group_of("79161234567")
    assert next_opening_group("10:00", "18:00", russia, utc(*june_1, 12)) == utc(*june_1, 12) + timedelta(days=8)
    assert not open_in_group("09:00", "21:00", UNKNOWN_ZONE, utc(*june_1, 12))
    assert not open_in_group("09:00", "21:00", None, utc(*june_1, 12))


@pytest.mark.parametrize(("now", "opens"), [
    (utc(2026, 3, 7, 3), utc(2026, 3, 7, 14)),     # Saturday 22:00 EST: 09:00 EST is 14:00 UTC
    (utc(2026, 3, 8, 3), utc(2026, 3, 8, 13)),     # clocks go forward at 02:00 on 8 March: 09:00 EDT is 13:00 UTC
    (utc(2026, 10, 31, 3), utc(2026, 10, 31, 13)),  # still EDT
    (utc(2026, 11, 1, 3), utc(2026, 11, 1, 14)),   # clocks go back at 02:00 on 1 November: 09:00 EST is 14:00 UTC
])
def test_across_a_dst_change_the_opening_moves_by_an_hour_in_utc(now: datetime, opens: datetime) -> None:
    assert next_opening_group("09:00", "21:00", NEW_YORK, now) == opens
    assert next_opening("09:00", "21:00", RECIPIENT, now, group=NEW_YORK) == opens
    assert open_in_group("09:00", "21:00", NEW_YORK, opens)
    assert not open_in_group("09:00", "21:00", NEW_YORK, opens - timedelta(minutes=1))


def test_tz_recipient_is_parsed_and_errors_still_name_the_option() -> None:
    window = parse_window("9:00-21:00", "recipient")
    assert window == Window("09:00", "21:00", RECIPIENT) and window.per_recipient
    assert parse_window("09:00-21:00", " Recipient ").tz == RECIPIENT
    assert not parse_window("09:00-21:00", "Asia/Riyadh").per_recipient
    with pytest.raises(WindowInvalid, match=r"--tz 'recipients' is not a known IANA time zone .* nor 'recipient'"):
        parse_window("09:00-21:00", "recipients")
    with pytest.raises(WindowInvalid, match="--tz 'recipient' given without --window"):
        parse_window(None, "recipient")
    with pytest.raises(WindowInvalid, match="--window '9-21' must be written HH:MM-HH:MM"):
        parse_window("9-21", "recipient")


# --- the dispatcher and the send task -----------------------------------------------------------

@pytest.fixture()
def rt(empty_database):  # noqa: ANN001, ANN201
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9",
                                     AWAL_RATE_LIMIT="1000/s"))
    yield runtime
    runtime.close()


def recipient_campaign(rt, messages: dict[str, list[str]], *, status: str = "running", window: tuple = ("09:00", "21:00"),  # noqa: ANN001
                       message_status: str = "pending") -> tuple[int, dict[str, list[int]]]:
    """A `--tz recipient` campaign with messages per zone group, its zones counted; -> (id, ids by group)."""
    now = utcnow()
    ids: dict[str, list[int]] = {}
    with rt.session_factory.begin() as s:
        camp = Campaign(name="zones", phone_number_id="1", template=CONTENT, status=status, scheduled_at=now,
                        started_at=now, window_start=window[0], window_end=window[1], window_tz=RECIPIENT)
        s.add(camp)
        s.flush()
        for group, phones in messages.items():
            for phone in phones:
                msg = Message(campaign_id=camp.id, phone_number_id="1", phone=phone, content=CONTENT, zone=group,
                              status=message_status, queued_at=now if message_status == "queued" else None,
                              enqueued_at=now - timedelta(hours=8) if message_status == "queued" else None)
                s.add(msg)
                s.flush()
                ids.setdefault(group, []).append(msg.id)
        recount_zones(s, camp.id)
    return camp.id, ids


def test_the_dispatcher_claims_only_the_messages_of_zones_open_now(rt, monkeypatch) -> None:
    # Given a running 09:00-21:00 recipient-zone campaign with two numbers in Riyadh and two in New York
    campaign_id, ids = recipient_campaign(rt, {RIYADH: ["966501234567", "966501234568"],
                                               NEW_YORK: ["12124567890", "12124567891"]})
    published: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, batch, *, queue: published.extend(batch))
    # When the dispatcher ticks at 08:00 UTC on 8 March: 11:00 in Riyadh, 04:00 (EDT) in New York
    report = dispatch_tick(rt, now=utc(2026, 3, 8, 8))
    # Then only the Riyadh messages went out
    assert sorted(published) == sorted(ids[RIYADH]) and report.published == {str(campaign_id): 2}
    # And at 12:59 UTC New York is still closed (08:59 EDT); at 13:00 it opens (09:00 EDT, an hour earlier in UTC than the day before)
    assert dispatch_tick(rt, now=utc(2026, 3, 8, 12, 59)).total_published == 0
    dispatch_tick(rt, now=utc(2026, 3, 8, 13))
    assert sorted(published) == sorted(ids[RIYADH] + ids[NEW_YORK])
    with rt.session_factory() as s:
        assert set(s.scalars(sa.select(Message.status).where(Message.campaign_id == campaign_id))) == {"queued"}


def test_open_zones_with_nothing_left_are_counted_again_after_a_minute_not_every_tick(rt, monkeypatch) -> None:
    # Given a campaign whose Riyadh messages went out at 08:00 UTC while New York sleeps
    campaign_id, ids = recipient_campaign(rt, {RIYADH: ["966501234567"], NEW_YORK: ["12124567890"]})
    published: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, batch, *, queue: published.extend(batch))
    dispatch_tick(rt, now=utc(2026, 3, 9, 8))
    assert published == ids[RIYADH]
    counted: list[int] = []
    real_count = dispatcher._ready_count
    monkeypatch.setattr(dispatcher, "_ready_count",
                        lambda s, cid, *a, **k: counted.append(cid) or real_count(s, cid, *a, **k))
    # When its Riyadh message comes back to pending (a pause and resume) and the dispatcher ticks
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Message).where(Message.id == ids[RIYADH][0]).values(status="pending", enqueued_at=None))
    dispatch_tick(rt, now=utc(2026, 3, 9, 8, 0, 1))          # then it goes out again
    assert published == ids[RIYADH] * 2
    dispatch_tick(rt, now=utc(2026, 3, 9, 8, 0, 2))          # nothing left in the open zones: remembered
    assert dispatch_tick(rt, now=utc(2026, 3, 9, 8, 0, 30)).total_published == 0
    assert counted.count(campaign_id) == 2                     # the 08:00:30 tick did not walk the backlog again
    # Then a minute later it is counted again, and when New York opens it is counted at once
    dispatch_tick(rt, now=utc(2026, 3, 9, 8, 1, 3))
    assert counted.count(campaign_id) == 3
    dispatch_tick(rt, now=utc(2026, 3, 9, 13))
    assert published == ids[RIYADH] * 2 + ids[NEW_YORK]


def test_a_campaign_whose_zones_are_all_closed_gets_no_share(rt, monkeypatch) -> None:
    # Given a campaign with an Idaho number only, at 15:30 UTC on 1 June: 09:30 in Boise, 08:30 in Los Angeles
    recipient_campaign(rt, {IDAHO: ["12085550123"]})
    published: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, batch, *, queue: published.extend(batch))
    assert dispatch_tick(rt, now=utc(2026, 6, 1, 15, 30)).published == {}
    # a quarter of an hour after 09:00 in Los Angeles, it goes
    assert len(dispatch_tick(rt, now=utc(2026, 6, 1, 16, 15)).published) == 1 and len(published) == 1


class RecordingClient:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, message, phone_number_id, *, before_request=None, on_attempt=None) -> SendResult:  # noqa: ANN001
        before_request()
        self.sent.append(message.phone)
        on_attempt(AttemptRecord(started_at=utcnow(), duration_ms=2, http_status=200, outcome="sent"))
        return SendResult(vendor_id=1, message_id="wamid-1", vendor_status="sent", http_status=200)


def test_the_send_task_holds_a_message_whose_zone_is_closed_and_sends_one_whose_zone_is_open(rt) -> None:
    # Given a window from two hours from now to three hours from now, in UTC's clock, and a message
    # whose task is on the broker for a number in UTC, and one in a zone where the window is open now
    now = utcnow()
    opens = now + timedelta(hours=2)
    window = (f"{opens:%H:%M}", f"{now + timedelta(hours=3):%H:%M}")
    open_zone = "Etc/GMT-2"   # UTC+2 (POSIX sign): the window's clock is two hours ahead there
    _, ids = recipient_campaign(rt, {"UTC": ["966501234567"], open_zone: ["966501234568"]}, window=window,
                                message_status="queued")
    client = RecordingClient()
    deps = dataclasses.replace(send_deps(rt), client=client)

    # When a worker takes the closed zone's task: nothing is sent, it is due when the window opens there
    assert send_message(ids["UTC"][0], deps) is Outcome.DEFERRED
    assert client.sent == []
    with rt.session_factory() as s:
        row = s.get(Message, ids["UTC"][0])
        assert (row.status, row.enqueued_at, row.attempts) == ("queued", None, 0)
        assert row.not_before == opens.replace(second=0, microsecond=0)
    # And the open zone's message is sent
    assert send_message(ids[open_zone][0], deps) is Outcome.SENT and client.sent == ["966501234568"]


# --- the import stores each number's zone group and the campaign's counts -------------------------

def write_csv(tmp_path, rows: list[tuple[str, str]]):  # noqa: ANN001, ANN201
    path = tmp_path / "recipients.csv"
    path.write_text("phone,name\n" + "".join(f"{p},{n}\n" for p, n in rows), encoding="utf-8")
    return path


RECIPIENTS = [("+966 50 123 4567", "Lina"), ("+1 212 456 7890", "Ann"), ("+1 212 456 7891", "Bob"),
              ("+1 208 555 0123", "Cal"), ("+800 1234 5678", "Free"), ("+966 50 123 4567", "Lina again")]


@pytest.mark.parametrize("processes", [1, 2], ids=["in-process", "pool"])
def test_the_import_stores_each_numbers_zone_group_and_counts_per_group(rt, tmp_path, processes: int) -> None:
    path = write_csv(tmp_path, RECIPIENTS)
    campaign_id, result = create_with_recipients(
        rt.session_factory, path, name="own hours", phone_number_id="1", template=TEMPLATE,
        window=parse_window("09:00-21:00", "recipient"), processes=processes)
    # the freephone number (line 6) has no zone: refused with the reason; the repeated phone is a duplicate
    assert (result.imported, result.rejected, result.duplicates) == (4, 1, 1)
    assert result.problems[0].line == 6 and "no time zone is known for this number" in result.problems[0].reason
    with rt.session_factory() as s:
        zones = dict(s.execute(sa.select(Message.phone, Message.zone).where(Message.campaign_id == campaign_id)).all())
        campaign = s.get(Campaign, campaign_id)
    assert zones == {"966501234567": RIYADH, "12124567890": NEW_YORK, "12124567891": NEW_YORK, "12085550123": IDAHO}
    assert campaign.window_tz == RECIPIENT and campaign.zones == {RIYADH: 1, NEW_YORK: 2, IDAHO: 1}


def test_strict_refuses_a_file_with_a_number_of_no_known_zone_and_a_fixed_zone_campaign_stores_none(rt, tmp_path) -> None:
    path = write_csv(tmp_path, RECIPIENTS)
    with pytest.raises(ImportRefused):
        create_with_recipients(rt.session_factory, path, strict=True, name="strict", phone_number_id="1",
                               template=TEMPLATE, window=parse_window("09:00-21:00", "recipient"), processes=1)
    # a campaign in one fixed zone does no zone work: the freephone number is fine, no zone stored
    campaign_id, result = create_with_recipients(rt.session_factory, path, name="riyadh", phone_number_id="1",
                                                 template=TEMPLATE, window=parse_window("09:00-21:00", RIYADH), processes=1)
    assert (result.imported, result.rejected) == (5, 0)
    with rt.session_factory() as s:
        assert set(s.scalars(sa.select(Message.zone).where(Message.campaign_id == campaign_id))) == {None}
        assert s.get(Campaign, campaign_id).zones is None
        assert zone_table(s.get(Campaign, campaign_id), utcnow()) is None


# --- what an operator sees: campaign show, the API and the console's review -----------------------

def test_campaign_create_with_tz_recipient_and_campaign_show_list_the_zones(database_url, empty_database, tmp_path) -> None:  # noqa: ANN001
    env = stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9")
    (tmp_path / "message.json").write_text('{"body_text": "Hi {{name}}", "buttons": [{"id": "go", "title": "Go"}]}')
    path = write_csv(tmp_path, RECIPIENTS[:4])
    run = CliRunner()
    created = run.invoke(main, ["campaign", "create", "--name", "own hours", "--message", str(tmp_path / "message.json"),
                                "--recipients", str(path), "--window", "09:00-21:00", "--tz", "recipient", "--draft"],
                         env=env, catch_exceptions=False)
    assert created.exit_code == 0, created.stderr
    campaign_id = int(created.stdout.strip().splitlines()[-1])

    shown = run.invoke(main, ["campaign", "show", str(campaign_id)], env=env, catch_exceptions=False)
    assert shown.exit_code == 0, shown.stderr
    out = shown.stdout
    assert "window:     09:00-21:00 recipient (each recipient's own time zone)" in out
    assert "zones:      3 zone group(s)" in out
    lines = {zone: line for line in out.splitlines() for zone in (RIYADH, NEW_YORK, IDAHO)
             if line.strip().startswith(zone + " ")}
    assert re.search(r"\b2 recipient\(s\)", lines[NEW_YORK]) and re.search(r"\b1 recipient\(s\)", lines[RIYADH])
    for zone, line in lines.items():   # each: open now, or its next opening in that zone and in UTC
        opens = re.search(r"opens (\S+ \S+) (\S+) \((\S+ \S+) UTC\)", line)
        assert "open now" in line or opens, line
        if opens:
            local = datetime.fromisoformat(opens.group(1))
            assert opens.group(2) in zone.split("|") and local.strftime("%H:%M") == "09:00"

    bad = run.invoke(main, ["campaign", "create", "--name", "x", "--message", str(tmp_path / "message.json"),
                            "--recipients", str(path), "--window", "09:00-21:00", "--tz", "recipients"], env=env)
    assert bad.exit_code == 2 and "--tz 'recipients'" in bad.stderr


def test_the_api_resource_and_the_console_review_show_the_zones(sqlite_url, tmp_path) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from worker.access.keys import create_key
    from worker.access.users import create_user
    from worker.runtime import install_runtime

    env = stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9")
    rt = make_runtime(env)
    install_runtime(rt)
    try:
        from worker.asgi import create_app

        _, key = create_key(rt, name="zones", scope="campaigns", actor="test")
        create_user(rt, email="ana@example.com", role="marketer", password="zones test password", actor="test")
        with TestClient(create_app()) as client:
            made = client.post("/v1/campaigns", headers={"Authorization": f"Bearer {key}"},
                               json={"name": "API", "message": TEMPLATE, "window": "09:00-21:00", "tz": "recipient",
                                     "draft": True, "recipients": [{"phone": "+12124567890", "name": "Ann"},
                                                                   {"phone": "+12085550123", "name": "Cal"}]})
            assert made.status_code == 201, made.text
            got = client.get(f"/v1/campaigns/{made.json()['id']}", headers={"Authorization": f"Bearer {key}"}).json()
            assert got["window"] == {"start": "09:00", "end": "21:00", "tz": "recipient"}
            zones = {z["zone"]: z for z in got["zones"]}
            assert set(zones) == {NEW_YORK, IDAHO} and zones[NEW_YORK]["recipients"] == 1
            for z in zones.values():
                assert z["open"] == (z["next_opening"] is None)

            form = client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            client.post("/login", data={"email": "ana@example.com", "password": "zones test password",
                                        "csrf_token": token, "next": "/"}, follow_redirects=False)
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/campaigns/new").text).group(1)
            csv_text = "phone,name\n+966501234567,Lina\n+12124567890,Ann\n+12124567891,Bob\n"
            review = client.post("/campaigns/new", files={"recipients": ("r.csv", csv_text.encode(), "text/csv")},
                                 data={"csrf_token": token, "name": "Console", "body_text": "Hi {{name}}",
                                       "button_id_1": "go", "button_title_1": "Go", "phone_number_id": "123456",
                                       "window": "09:00-21:00", "tz": "recipient"})
            assert review.status_code == 200, review.text[:500]
            table = re.search(r'<table id="zones">.*?</table>', review.text, re.S).group(0)
            rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", table)
            assert [(zone, n) for zone, n, _ in rows] == [(NEW_YORK, "2"), (RIYADH, "1")]
            assert all(when == "open now" or when.startswith("opens ") for _, _, when in rows)
            assert "only 09:00–21:00 in each recipient's own time zone" in html.unescape(review.text)
            draft_id = re.search(r'action="/campaigns/(\d+)/schedule"', review.text).group(1)
            page = html.unescape(client.get(f"/campaigns/{draft_id}").text)
            assert "sends only 09:00–21:00 in each recipient's own time zone" in page
    finally:
        install_runtime(None)
        rt.close()
