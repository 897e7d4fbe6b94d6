"""The operator's commands as a user runs them: `send`, `message show`, `limits`, `db upgrade`,
and the one-line errors for bad input and bad settings (never a traceback, never a secret)."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from tests.conftest import stack_env
from worker.cli import main
from worker.db import SQLITE_BUSY_TIMEOUT_MS
from worker.sending.send import send_deps


@pytest.fixture()
def env(sqlite_url, sandbox):  # noqa: ANN001
    return stack_env(database_url=sqlite_url, sandbox_url=sandbox[0])


def run(env: dict[str, str], *args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_send_prints_the_new_message_id_alone_on_stdout(env) -> None:
    result = run(env, "send", "--phone", "+966 50 000 0001", "--body", "Hello 🎉", "--button", "yes:Yes", "--button", "no:No")
    assert result.exit_code == 0
    assert result.stdout.strip().isdigit()
    assert "queued message" in result.stderr


def test_send_with_invalid_input_names_each_field_and_limit_and_exits_2(env) -> None:
    result = run(env, "send", "--phone", "12ab", "--body", "x" * 1025, "--button", "a:" + "T" * 21)
    assert result.exit_code == 2 and result.stdout == ""
    assert "phone" in result.stderr
    assert "body_text: is 1025 characters; the limit is 1024" in result.stderr
    assert "buttons[0].title: is 21 characters; the limit is 20" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_setting_stops_with_one_line_naming_it_and_never_the_secret(env) -> None:
    result = run({**env, "AWAL_RATE_LIMIT": "lots", "AWAL_HMAC_SECRET": "s3cr3t-value"}, "send", "--phone", "966500000001",
                 "--body", "x", "--button", "a:A")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: configuration: AWAL_RATE_LIMIT='lots' is not a rate; write requests per period, e.g. 1000/h, 80/s, 100/10s"]
    assert "s3cr3t-value" not in result.output


def test_worker_without_the_vendor_settings_names_every_missing_one(env) -> None:
    bare = {k: v for k, v in env.items() if not k.startswith("AWAL_")}
    result = run(bare, "worker")
    assert result.exit_code == 2
    assert "AWAL_BASE_URL, AWAL_CLIENT_ID, AWAL_DOMAIN, AWAL_HMAC_SECRET" in result.stderr


def test_message_show_prints_status_ids_and_the_audit_trail(env, sqlite_url) -> None:
    from tests.conftest import make_runtime
    from worker.sending.send import send_message

    message_id = int(run(env, "send", "--phone", "966500000002", "--body", "Hi", "--button", "yes:Yes").stdout)
    rt = make_runtime(env)
    send_message(message_id, send_deps(rt))
    rt.close()

    result = run(env, "message", "show", str(message_id))
    assert result.exit_code == 0
    assert "status:        sent" in result.stdout
    assert "messageId:     wamid." in result.stdout
    assert "attempt  HTTP  200 sent" in result.stdout


def test_message_show_of_an_unknown_id_says_so(env) -> None:
    result = run(env, "message", "show", "999999")
    assert result.exit_code == 1 and "no message 999999" in result.stderr


def test_limits_shows_the_configured_limit_the_vendors_report_and_a_429_block(env, redis_url) -> None:
    import redis

    from worker.ratelimit import build_rate_limiter
    from worker.settings import Settings

    redis.Redis.from_url(redis_url).flushdb()
    env = {**env, "REDIS_URL": redis_url, "AWAL_RATE_LIMIT": "1000/h"}
    limiter = build_rate_limiter(Settings.from_env(env))
    reset = time.time() + 1800
    limiter.observe("sandbox.local:button", limit=1000, remaining=412, reset_at=reset)
    limiter.block("sandbox.local:button", until=limiter.state("sandbox.local:button").as_of + 600)

    result = run(env, "limits")
    assert result.exit_code == 0
    out = result.stdout
    assert "sandbox.local:button" in out
    assert "configured limit:  1000/h (paced at 1000/h, burst 1)" in out   # the headroom frees each window's end, not pace
    assert "vendor limit:      1000" in out and "vendor remaining:  412" in out
    assert "sending:           blocked until" in out


def test_db_upgrade_reports_the_revision(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = run({"DATABASE_URL": url}, "db", "upgrade")
    assert result.exit_code == 0 and "database at revision" in result.stderr


def test_a_long_read_on_sqlite_does_not_hold_the_write_lock_workers_need(env) -> None:
    # Given a report-style read transaction left open (a big `campaign report` streaming rows)
    import sqlalchemy as sa

    from tests.conftest import make_runtime
    from worker.models import Message

    run(env, "send", "--phone", "966500000003", "--body", "Hi", "--button", "yes:Yes")
    rt = make_runtime(env)
    with rt.read_sessions() as reader:
        reader.execute(sa.select(Message.id)).all()  # the read transaction is open
        # When a worker writes meanwhile, it gets the lock (held by the reader it would wait out
        # SQLITE_BUSY_TIMEOUT_MS, 30 s, then fail: half of that is a bound no busy machine reaches)
        started = time.monotonic()
        with rt.session_factory.begin() as writer:
            writer.execute(sa.update(Message).values(vendor_status="touched"))
        assert time.monotonic() - started < SQLITE_BUSY_TIMEOUT_MS / 1000 / 2
    rt.close()


def test_send_refuses_a_trunk_zero_number_unless_default_country_code_is_set(env) -> None:
    """Issue 12 item 9: `send --phone 0501234567` names the missing country code; DEFAULT_COUNTRY_CODE=966 fixes it."""
    import sqlalchemy as sa

    from tests.conftest import make_runtime
    from worker.models import Message

    refused = run(env, "send", "--phone", "0501234567", "--body", "Hi", "--button", "yes:Yes")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "phone" in refused.stderr and "country calling code" in refused.stderr and "DEFAULT_COUNTRY_CODE" in refused.stderr
    sent = run({**env, "DEFAULT_COUNTRY_CODE": "966"}, "send", "--phone", "0501234567", "--body", "Hi", "--button", "yes:Yes")
    assert sent.exit_code == 0, sent.stderr
    rt = make_runtime(env)
    with rt.session_factory() as session:
        assert session.scalar(sa.select(Message.phone).where(Message.id == int(sent.stdout))) == "966501234567"
    rt.close()


def test_campaign_create_default_country_reads_national_numbers(env, tmp_path) -> None:
    """Issue 12 item 9: `campaign create --default-country SA` imports 0501234567 as 966501234567; XX is refused."""
    import json

    message, recipients = tmp_path / "message.json", tmp_path / "recipients.csv"
    message.write_text(json.dumps({"body_text": "Hi", "buttons": [{"id": "yes", "title": "Yes"}]}))
    recipients.write_text("phone\n0501234567\n+966501234567\n0501234568\n")
    args = ["campaign", "create", "--name", "n", "--message", str(message), "--recipients", str(recipients), "--draft"]
    result = run(env, *args, "--default-country", "SA")
    assert result.exit_code == 0, result.stderr
    assert "imported 2 recipient(s); rejected 0 row(s)" in result.stderr
    bad = run(env, *args, "--default-country", "XX")
    assert bad.exit_code == 2 and "--default-country='XX'" in bad.stderr


def test_worker_and_beat_output_never_shows_the_passwords_in_the_urls(sqlite_url, redis_url, sandbox, spawn) -> None:  # noqa: ANN001
    """Issue 12 item 16: `buttoncast worker` and `beat` print their banners and connection lines
    with the broker, result and limiter URLs masked (redis://:**@...)."""
    password = "redisPW-do-not-print"
    host_and_db = redis_url.split("://", 1)[1]
    env = stack_env(database_url=sqlite_url, sandbox_url=sandbox[0], broker_url=f"redis://:{password}@{host_and_db}",
                    REDIS_URL=f"redis://:{password}@{host_and_db}")
    worker = spawn(env, "worker", "--concurrency", "1", ready="Connected to")
    beat = spawn(env, "beat", ready="beat lease")
    worker.wait_for("ready.")
    for proc in (worker, beat):
        output = proc.log_path.read_text(errors="replace")
        assert password not in output
        assert "redis://:**@" in output
