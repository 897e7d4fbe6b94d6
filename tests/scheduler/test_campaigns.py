"""Campaign lifecycle, counts, window, report and the `campaign` CLI, on Postgres and SQLite."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from scheduler import campaigns as c
from scheduler.report import REPORT_COLUMNS, funnel, report_rows, write_csv, write_json
from worker.cli.campaigns import campaign_group
from worker.db import make_engine, make_session_factory, upgrade
from worker.models import Campaign, Message, utcnow
from worker.status import CampaignStatus, MessageStatus
from worker.window import WindowInvalid, in_window, next_opening, parse_window

DATA = Path(__file__).resolve().parents[2] / "scheduler" / "data"
TEMPLATE = {"body_text": "Hello {{name}}", "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]}
_migrated: set[str] = set()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'campaigns.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    if url not in _migrated:
        upgrade(url)
        _migrated.add(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sf(engine: sa.Engine) -> sa.orm.sessionmaker:
    return make_session_factory(engine)


def new_campaign(sf, statuses: list[str] = (), *, status: str | None = None, started: bool = False) -> int:  # noqa: ANN001
    """A campaign with one message per given status (phones 9665000000NN)."""
    now = utcnow()
    with sf.begin() as session:
        campaign = c.create_campaign(session, name="t", phone_number_id="123456", template=TEMPLATE, draft=True)
        if status:
            campaign.status = status
        campaign.started_at = now if started else None
        for i, s in enumerate(statuses):
            session.add(Message(campaign_id=campaign.id, phone_number_id="123456", phone=f"9665000000{i:02d}",
                                content={"body_text": f"Hello {i}", "buttons": TEMPLATE["buttons"]}, status=s,
                                created_at=now, updated_at=now))
        return campaign.id


def status_of(sf, campaign_id: int) -> str:  # noqa: ANN001
    with sf() as session:
        return session.get(Campaign, campaign_id).status


def test_every_pair_of_statuses_follows_the_table(sf):
    for current in CampaignStatus:
        for wanted in CampaignStatus:
            campaign_id = new_campaign(sf, status=current.value)
            with sf.begin() as session:
                if c.operator_may(current, wanted):
                    assert c.transition(session, campaign_id, wanted).status == wanted.value
                    continue
                with pytest.raises(c.IllegalTransition) as err:
                    c.transition(session, campaign_id, wanted)
            assert f"is {current.value}; it cannot become {wanted.value}" in str(err.value)
            assert status_of(sf, campaign_id) == current.value


def test_lifecycle_draft_schedule_pause_resume(sf):
    at = datetime(2030, 1, 1, 9, tzinfo=timezone(timedelta(hours=3)))
    campaign_id = new_campaign(sf)
    with sf.begin() as session:
        assert c.schedule(session, campaign_id, at).scheduled_at == at
        assert c.pause(session, campaign_id).pause_reason == "paused by operator"
        resumed = c.resume(session, campaign_id)  # never started: back to scheduled
        assert (resumed.status, resumed.pause_reason) == ("scheduled", None)
    started = new_campaign(sf, status="running", started=True)
    with sf.begin() as session:
        c.pause(session, started, reason="auto: 401")
        session.execute(sa.update(Campaign).where(Campaign.id == started).values(consecutive_failures=7))
        resumed = c.resume(session, started)
        assert (resumed.status, resumed.pause_reason, resumed.consecutive_failures) == ("running", None, 0)
        with pytest.raises(c.IllegalTransition, match="from running it can become: cancelled, completed, paused"):
            c.schedule(session, started)
        with pytest.raises(c.CampaignNotFound):
            c.pause(session, 10**9)


def test_cancel_marks_pending_and_queued_cancelled_in_one_update(sf, engine):
    statuses = ["pending", "pending", "queued", "sending", "sent", "failed"]
    campaign_id = new_campaign(sf, statuses, status="running", started=True)
    other = new_campaign(sf, ["pending"], status="running")
    with sf.begin() as session:
        campaign, cancelled = c.cancel(session, campaign_id)
    assert cancelled == 3 and campaign.status == "cancelled" and campaign.finished_at is not None
    with sf() as session:
        rows = session.execute(sa.select(Message.status, Message.finished_at).where(Message.campaign_id == campaign_id).order_by(Message.id)).all()
        assert [r.status for r in rows] == ["cancelled", "cancelled", "cancelled", "sending", "sent", "failed"]
        assert all(r.finished_at is not None for r in rows[:3])
        assert c.status_counts(session, other)["pending"] == 1
    with sf.begin() as session, pytest.raises(c.IllegalTransition, match="cancelled is final"):
        c.cancel(session, campaign_id)


def test_counts_come_from_one_grouped_query(sf, engine):
    first = new_campaign(sf, ["pending"] * 3 + ["sent"] * 2 + ["failed"])
    second = new_campaign(sf, ["queued"])
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with sf() as session:
        counts = c.status_counts(session, first)
        many = c.status_counts_many(session, [first, second, 10**9])
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2 and all("GROUP BY" in s for s in selects)
    assert counts == {**c.empty_counts(), "pending": 3, "sent": 2, "failed": 1}
    assert many[second]["queued"] == 1 and sum(many[10**9].values()) == 0


def test_window_in_zone_and_overnight():
    riyadh = parse_window("9:00-21:00", "Asia/Riyadh")
    assert (riyadh.start, riyadh.end) == ("09:00", "21:00")
    utc = lambda h, m=0: datetime(2030, 1, 1, h, m, tzinfo=timezone.utc)  # noqa: E731
    assert riyadh.contains(utc(6)) and not riyadh.contains(utc(5, 59)) and not riyadh.contains(utc(18))  # UTC+3
    assert in_window("22:00", "06:00", "UTC", utc(23, 30)) and in_window("22:00", "06:00", "UTC", utc(5, 59))
    assert not in_window("22:00", "06:00", "UTC", utc(6)) and not in_window("22:00", "06:00", "UTC", utc(12))
    assert in_window(None, None, None, utc(3))
    assert next_opening("09:00", "21:00", "UTC", utc(22)) == datetime(2030, 1, 2, 9, tzinfo=timezone.utc)
    for text, tz, option in (("9-21", "UTC", "--window"), ("09:00-24:00", "UTC", "--window"),
                             ("09:00-21:00", "Nowhere/City", "--tz"), ("09:00-21:00", None, "--tz")):
        with pytest.raises(WindowInvalid, match=option):
            parse_window(text, tz)


def _mark_sent(sf, campaign_id: int) -> None:  # noqa: ANN001
    now = utcnow()
    with sf.begin() as session:
        ids = session.scalars(sa.select(Message.id).where(Message.campaign_id == campaign_id).order_by(Message.id)).all()
        session.execute(sa.update(Message).where(Message.id == ids[0]).values(
            status="sent", vendor_id=12346, vendor_message_id=f"wamid.A{campaign_id}", attempts=1, sent_at=now,
            delivery_status="read", delivered_at=now, read_at=now, replied_at=now,
            reply_button_id="yes", reply_button_title="Yes"))
        session.execute(sa.update(Message).where(Message.id == ids[1]).values(
            status="failed", attempts=2, last_error_code="invalid_phone_number", last_error_message="bad, \"quoted\""))


def test_report_rows_csv_json_and_funnel(sf):
    campaign_id = new_campaign(sf, ["pending", "pending", "pending"], status="running")
    _mark_sent(sf, campaign_id)
    with sf() as session:
        f = funnel(session, campaign_id)
        text = io.StringIO()
        assert write_csv(report_rows(session, campaign_id), text) == 3
        out = io.StringIO()
        write_json(report_rows(session, campaign_id), out)
    assert (f.sent, f.delivered, f.read, f.replied, f.sent_last_minute) == (1, 1, 1, 1, 1)
    assert f.taps == [("yes", "Yes", 1)] and f.rate(f.replied) == 1.0
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert tuple(rows[0]) == REPORT_COLUMNS
    assert rows[0]["vendor_message_id"] == f"wamid.A{campaign_id}" and rows[0]["vendor_id"] == "12346" and rows[0]["sent_at"].endswith("+00:00")
    assert rows[1]["last_error_message"] == 'bad, "quoted"' and rows[2]["status"] == "pending"
    doc = json.loads(out.getvalue())
    assert [r["status"] for r in doc] == ["sent", "failed", "pending"] and doc[0]["reply_button_title"] == "Yes"


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"])
def test_report_csv_neutralises_formula_cells_but_not_json_or_phones(sf, text):
    """Issue 12 item 17: a CSV cell starting with = + - @ tab or CR gets a leading ' (OWASP); JSON is unchanged."""
    campaign_id = new_campaign(sf, ["pending", "pending"], status="running")
    _mark_sent(sf, campaign_id)
    with sf.begin() as session:
        first = session.scalars(sa.select(Message.id).where(Message.campaign_id == campaign_id).order_by(Message.id)).first()
        session.execute(sa.update(Message).where(Message.id == first).values(reply_button_title=text, last_error_message=text))
    with sf() as session:
        text_out, json_out = io.StringIO(), io.StringIO()
        write_csv(report_rows(session, campaign_id), text_out)
        write_json(report_rows(session, campaign_id), json_out)
    rows = list(csv.DictReader(io.StringIO(text_out.getvalue(), newline="")))
    assert rows[0]["reply_button_title"] == "'" + text and rows[0]["last_error_message"] == "'" + text
    assert rows[0]["phone"].isdigit() and rows[0]["attempts"] == "1"
    assert json.loads(json_out.getvalue())[0]["reply_button_title"] == text


# --- the CLI ------------------------------------------------------------------------------------

def cli(db_url: str, *args: str, phone_number_id: str | None = "123456"):  # noqa: ANN201
    env = {"DATABASE_URL": db_url, "AWAL_PHONE_NUMBER_ID": phone_number_id or ""}
    return CliRunner().invoke(campaign_group, list(args), env=env, catch_exceptions=False)


def create_args(recipients: Path | str = DATA / "recipients.csv", *extra: str) -> list[str]:
    return ["create", "--name", "Spring", "--message", str(DATA / "message.json"), "--recipients", str(recipients), *extra]


def test_cli_create_prints_the_id_last_and_the_summary_on_stderr(db_url, sf):
    result = cli(db_url, *create_args(DATA / "recipients.csv", "--window", "09:00-21:00", "--tz", "Asia/Riyadh"))
    assert result.exit_code == 0, result.stderr
    campaign_id = int(result.stdout.strip().splitlines()[-1])
    assert "imported 294 recipient(s); rejected 4 row(s); skipped 2 duplicate(s)" in result.stderr
    assert "line 9: phone:" in result.stderr
    with sf() as session:
        campaign = session.get(Campaign, campaign_id)
        assert (campaign.status, campaign.window_tz, campaign.recipients_imported) == ("scheduled", "Asia/Riyadh", 294)
    shown = cli(db_url, "show", str(campaign_id))
    assert shown.exit_code == 0 and "pending 294" in shown.stdout and "09:00-21:00 Asia/Riyadh" in shown.stdout
    listed = cli(db_url, "list")
    assert any(line.split()[:2] == [str(campaign_id), "scheduled"] for line in listed.stdout.splitlines())


def test_cli_create_refusals_exit_non_zero(db_url, sf, tmp_path):
    bad_rows = tmp_path / "bad.csv"
    bad_rows.write_text("phone,name,city\nnope,A,B\n")
    bad_json = tmp_path / "message.json"
    bad_json.write_text('{"body_text": "Hi", "buttons": [')
    cases = [
        (create_args(bad_rows), "no valid recipient"),
        (create_args(DATA / "recipients.csv", "--strict"), "--strict"),
        (create_args(DATA / "recipients.csv", "--at", "2030-01-01T09:00:00"), "no UTC offset"),
        (create_args(DATA / "recipients.csv", "--window", "09:00-21:00"), "needs --tz"),
        (["create", "--name", "x", "--message", str(bad_json), "--recipients", str(bad_rows)], "not valid JSON"),
    ]
    with sf() as session:
        before = session.scalar(sa.select(sa.func.count(Campaign.id)))
    for args, expected in cases:
        result = cli(db_url, *args)
        assert result.exit_code != 0 and expected in result.stderr, (args, result.stderr)
        assert result.stdout == ""
    no_sender = cli(db_url, *create_args(), phone_number_id=None)
    assert no_sender.exit_code != 0 and "AWAL_PHONE_NUMBER_ID" in no_sender.stderr
    with sf() as session:
        assert session.scalar(sa.select(sa.func.count(Campaign.id))) == before


def test_cli_draft_then_schedule_pause_resume_cancel_report(db_url, tmp_path):
    created = cli(db_url, *create_args(DATA / "recipients.csv", "--draft", "--at", "2030-01-01T09:00:00+03:00"))
    campaign_id = created.stdout.strip().splitlines()[-1]
    assert created.exit_code == 0 and "draft" in created.stderr
    scheduled = cli(db_url, "schedule", campaign_id)
    assert scheduled.exit_code == 0 and "2030-01-01 06:00:00 UTC" in scheduled.stdout
    assert cli(db_url, "pause", campaign_id).exit_code == 0
    assert "scheduled" in cli(db_url, "resume", campaign_id).stdout
    cancelled = cli(db_url, "cancel", campaign_id)
    assert "294 unsent message(s) cancelled" in cancelled.stdout
    illegal = cli(db_url, "resume", campaign_id)
    assert illegal.exit_code == 1 and "cancelled is final" in illegal.stderr
    out = tmp_path / "report.json"
    assert cli(db_url, "report", campaign_id, "--format", "json", "-o", str(out)).exit_code == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 294 and {r["status"] for r in rows} == {"cancelled"}
    as_csv = cli(db_url, "report", campaign_id)
    assert as_csv.stdout.splitlines()[0] == ",".join(REPORT_COLUMNS) and len(as_csv.stdout.splitlines()) == 295
    watched = cli(db_url, "show", campaign_id, "--watch")  # ended campaign: one frame, then the summary
    assert watched.exit_code == 0 and "status:     cancelled" in watched.stdout
    assert cli(db_url, "show", "999999").exit_code == 1


def test_cli_test_send_is_an_ad_hoc_message_with_the_first_recipients_variables(db_url, sf):
    created = cli(db_url, *create_args())
    campaign_id = int(created.stdout.strip().splitlines()[-1])
    with sf() as session:
        before = c.status_counts(session, campaign_id)
        first = session.scalar(sa.select(Message.content).where(Message.campaign_id == campaign_id).order_by(Message.id).limit(1))
    sent = cli(db_url, "test", str(campaign_id), "--phone", "+966 500 000 999")
    assert sent.exit_code == 0, sent.stderr
    with sf() as session:
        message = session.get(Message, int(sent.stdout.strip().splitlines()[-1]))
        assert (message.campaign_id, message.phone, message.content) == (None, "966500000999", first)
        assert message.phone_number_id == "123456" and message.status == MessageStatus.QUEUED.value
        assert c.status_counts(session, campaign_id) == before


def test_overview_is_progress_and_late_failures_in_one_scan(sf, tmp_path):  # noqa: ANN001
    """The console's one-scan overview gives the same counts, funnel, taps and late failures as
    progress() and late_failures(), on a campaign with sent, tapped, read, failed and late-failed rows."""
    import sqlalchemy as sa

    from scheduler import report
    from worker.models import Message, utcnow

    campaign_id = new_campaign(sf, ["pending"] * 6, status="running")
    now = utcnow()
    with sf.begin() as session:
        ids = list(session.scalars(sa.select(Message.id).where(Message.campaign_id == campaign_id).order_by(Message.id)))
        changes = [dict(status="sent", sent_at=now, read_at=now, replied_at=now, reply_button_id="yes", reply_button_title="Yes"),
                   dict(status="sent", sent_at=now, delivered_at=now, replied_at=now, reply_button_id="no", reply_button_title="No"),
                   dict(status="sent", sent_at=now, replied_at=now, reply_button_id="yes", reply_button_title="Yes"),
                   dict(status="sent", sent_at=now, delivery_status="failed", delivery_error="131047 re-engagement",
                        failure_code="131047", failure_class="window_closed"),   # as the receiver records it
                   dict(status="failed", last_error_code="invalid_phone_number")]
        for message_id, values in zip(ids, changes):
            session.execute(sa.update(Message).where(Message.id == message_id).values(**values))
    with sf() as session:
        expected = report.progress(session, campaign_id, 10.0, now)
        got, late = report.overview(session, campaign_id, 10.0, now)
        assert got.counts == expected.counts and got.funnel == expected.funnel
        assert late == report.late_failures(session, campaign_id) == {"window_closed": 1}   # by class
        assert got.funnel.taps == [("yes", "Yes", 2), ("no", "No", 1)]


def test_an_operator_cannot_resume_a_completed_campaign_but_a_retry_reopens_it(sf):
    """worker.lifecycle: completed -> running is the engine's reopen(), never an operator's resume."""
    from worker import lifecycle

    campaign_id = new_campaign(sf, ["sent"], status="completed", started=True)
    with sf.begin() as session, pytest.raises(c.IllegalTransition, match="completed is final"):
        c.resume(session, campaign_id)
    with sf.begin() as session:
        assert lifecycle.reopen(session, campaign_id, utcnow()) is True
        assert lifecycle.reopen(session, campaign_id, utcnow()) is False   # already running
    assert status_of(sf, campaign_id) == "running"
