"""Issue 25, "the first hour, tried as a new user would": what `buttoncast run`, `campaign create`
and the demo tell a newcomer, and what they no longer leave unsaid.

- `run` against the sandbox paced at the default 1000/h (294 messages: 18 minutes) without a word:
  it now says the pace and how long the queue takes, and a sandbox on this machine tells it its limit;
- a metrics port in use left `worker` and `run` without /metrics, silently: now a WARNING naming it;
- a start time in the past was accepted without a word;
- the demo's summary said "6 opted out (never sent)" of six people who were sent to, then opted out;
- Celery's "running as root" warning filled the demo's first screen.
"""

from __future__ import annotations

import socket
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from scheduler import report
from scheduler.campaigns import past_start_note
from tests.cli.test_embedded import buttoncast, campaign_phones, create_campaign, statuses
from tests.conftest import make_runtime, stack_env
from worker.cli import main
from worker.cli.ops import how_long_it_takes
from worker.models import Contact, Message, utcnow

pytestmark = pytest.mark.slow
#: fast ticks, and no AWAL_RATE_LIMIT: what `run` paces at is the question
QUICK = {"DISPATCH_INTERVAL_S": "0.2", "SWEEP_INTERVAL_S": "1"}


@pytest.fixture()
def limited_sandbox():  # noqa: ANN201
    """A sandbox of its own with a rate limit of 50/s."""
    from worker.sandbox import SandboxClient, SandboxConfig, SandboxServer

    server = SandboxServer(SandboxConfig(rate_limit="50/s", seed=7))
    base_url = server.start_in_thread()
    try:
        yield base_url, SandboxClient(base_url)
    finally:
        server.stop()


def test_first_hour_run_paces_at_the_local_sandboxs_own_limit_and_says_how_long_the_queue_takes(
        sqlite_url: str, limited_sandbox, tmp_path: Path) -> None:  # noqa: ANN001
    # Given: a sandbox on this machine limited to 50/s, three messages stored, AWAL_RATE_LIMIT not set
    base_url, vendor = limited_sandbox
    env = stack_env(database_url=sqlite_url, sandbox_url=base_url, **QUICK)
    assert "AWAL_RATE_LIMIT" not in env
    phones = campaign_phones(3)
    create_campaign(env, tmp_path, phones)
    # When: the embedded mode runs
    run = buttoncast(env, tmp_path, "run", "--until-idle", "--concurrency", "2")
    # Then: its first words say the pace, where it comes from, and how long the three take
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"run: pacing at 50/s, the sandbox's own limit (AWAL_RATE_LIMIT is not set and {base_url} is a sandbox)" \
        in run.stderr, run.stderr[:2000]
    assert "3 message(s) wait to be sent: about 60 ms at this rate" in run.stderr, run.stderr[:2000]
    # ...and everything went out once
    assert statuses(env) == {p: "sent" for p in phones} and vendor.counts_per_phone() == {p: 1 for p in phones}


def test_first_hour_run_says_it_paces_at_the_configured_limit_and_the_queue_takes_18_minutes(sqlite_url: str,
                                                                                              tmp_path: Path) -> None:
    # Given: the audit's 294 messages and the documented plan's 1000/h
    env = stack_env(database_url=sqlite_url, sandbox_url="https://api.example.com", AWAL_RATE_LIMIT="1000/h")
    create_campaign(env, tmp_path, campaign_phones(294))
    runtime = make_runtime(env)
    try:
        # When / Then: the line `run` starts with
        line = how_long_it_takes(runtime, " (AWAL_RATE_LIMIT)")
    finally:
        runtime.close()
    assert line == ("run: pacing at 1000/h (AWAL_RATE_LIMIT); 294 message(s) wait to be sent: about 18 min at this rate "
                    "(longer if a send window or a start time holds some back)")


def test_first_hour_an_unlimited_local_sandbox_and_a_remote_api_are_said_too(sqlite_url: str, sandbox) -> None:  # noqa: ANN001
    from worker.cli.ops import UNLIMITED_SANDBOX_RATE, pace_of
    from worker.settings import Settings

    base_url, _ = sandbox   # no rate limit of its own
    settings, source = pace_of(Settings.from_env(stack_env(database_url=sqlite_url, sandbox_url=base_url)))
    assert str(settings.rate_limit) == UNLIMITED_SANDBOX_RATE and "has no limit" in source
    remote = Settings.from_env(stack_env(database_url=sqlite_url, sandbox_url="https://api.example.com"))
    settings, source = pace_of(remote)
    assert settings is remote and str(settings.rate_limit) == "1000/h" and "set AWAL_RATE_LIMIT" in source


def test_first_hour_a_metrics_port_in_use_is_a_warning_naming_the_port_and_the_setting(
        sqlite_url: str, sandbox, tmp_path: Path) -> None:  # noqa: ANN001
    # Given: something else already listens on METRICS_PORT
    base_url, _ = sandbox
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = stack_env(database_url=sqlite_url, sandbox_url=base_url, METRICS_PORT=str(port), AWAL_RATE_LIMIT="100/s",
                        **QUICK)
        create_campaign(env, tmp_path, campaign_phones(2))
        # When: `run` starts
        run = buttoncast(env, tmp_path, "run", "--until-idle", "--concurrency", "2")
    # Then: it says so loudly, naming the address and the setting, and still sends
    assert run.returncode == 0, run.stderr[-4000:]
    assert "WARNING" in run.stderr and f"127.0.0.1:{port} (METRICS_PORT={port}) cannot be served" in run.stderr, \
        run.stderr[:3000]
    assert set(statuses(env).values()) == {"sent"}


def test_first_hour_a_start_time_in_the_past_is_said_on_standard_error(sqlite_url: str, tmp_path: Path) -> None:
    # Given: a message, a CSV and a start time three days ago
    env = stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9")
    (tmp_path / "message.json").write_text('{"body_text": "Hi {{name}}", "buttons": [{"id": "ok", "title": "OK"}]}')
    (tmp_path / "people.csv").write_text("phone,name\n966501234567,Lina\n")
    past = (utcnow() - timedelta(days=3)).replace(microsecond=0).isoformat()
    args = ["campaign", "create", "--name", "Late", "--message", str(tmp_path / "message.json"),
            "--recipients", str(tmp_path / "people.csv")]
    # When: it is created with that start
    done = CliRunner().invoke(main, [*args, "--at", past], env=env, catch_exceptions=False)
    # Then: it is created, and standard error says it starts at once
    assert done.exit_code == 0, done.output
    assert "warning: the start time" in done.stderr and "is already past (3 days ago): the campaign starts at once" in done.stderr
    # ...and a time to come, or none, gets no such word
    future = (utcnow() + timedelta(days=3)).isoformat()
    for extra in (["--at", future], []):
        quiet = CliRunner().invoke(main, [*args, *extra], env=env, catch_exceptions=False)
        assert quiet.exit_code == 0 and "already past" not in quiet.stderr
    assert past_start_note(utcnow() - timedelta(seconds=30)) is None   # "now", typed to the minute


def test_first_hour_demo_summary_counts_opt_outs_after_send_as_such(sqlite_url: str, tmp_path: Path) -> None:
    # Given: a campaign where one person was sent to and then replied STOP, one opted out before
    # their message went, and one was sent to and stayed
    env = stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9")
    sent_then_stop, stop_before, stayed = campaign_phones(3)
    campaign_id = create_campaign(env, tmp_path, [sent_then_stop, stop_before, stayed])
    runtime = make_runtime(env)
    try:
        now = utcnow()
        with runtime.session_factory.begin() as s:
            s.execute(sa.update(Message).where(Message.phone.in_([sent_then_stop, stayed]))
                      .values(status="sent", sent_at=now - timedelta(minutes=5)))
            s.execute(sa.update(Contact).where(Contact.phone.in_([sent_then_stop, stop_before])).values(opted_out_at=now))
        # When: the summary's audience line is written (the demo's `campaign show` lines)
        with runtime.read_sessions() as session:
            line = report.describe_audience(report.audience(session, campaign_id), require_open_window=False)
    finally:
        runtime.close()
    # Then: the one sent to is not called "never sent"
    assert "; 1 opted out (never sent)" in line, line
    assert "; 1 opted out after they were sent it" in line, line


def test_first_hour_celerys_root_warning_is_dropped_for_our_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: a process running as root (containers often do), with our Celery app built
    from celery.exceptions import SecurityWarning
    from celery.platforms import check_privileges

    from worker.celery_app import create_celery
    from worker.settings import Settings

    for name in ("getuid", "geteuid"):
        monkeypatch.setattr(f"os.{name}", lambda: 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        app = create_celery(Settings.from_env({}))
        # When: the worker checks its privileges, as `celery worker` does at start
        check_privileges(app.conf.accept_content)
    # Then: no "running the worker with superuser privileges" screenful
    assert not [w for w in caught if issubclass(w.category, SecurityWarning)], [str(w.message)[:80] for w in caught]
