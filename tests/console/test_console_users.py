"""Console people and sessions on SQLite and Postgres: argon2 hashes, sessions stored as hashes,
disable/reset ending sessions, roles; and the `user` CLI. (Wrong passwords slow an address down,
never lock an account: tests/console/test_console_security.py.)"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.conftest import REPO_ROOT, make_runtime, stack_env
from worker.access.models import ConsoleSession, ConsoleUser
from worker.access.roles import Permission, Role
from worker.access.sessions import end_session, person_for, start_session, token_hash
from worker.access.users import (
    LoginRefused,
    create_user,
    disable_user,
    log_in,
    reset_password,
)
from worker.console import csrf
from worker.errors import MessageInvalid
from worker.models import utcnow

PASSWORD = "a long enough password"
ADDRESS = "192.0.2.10"


@pytest.fixture()
def rt(empty_database: str, sandbox):  # noqa: ANN001
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url=sandbox[0]))
    yield runtime
    runtime.close()


def test_a_password_is_stored_as_an_argon2_hash_and_logs_in(rt) -> None:  # noqa: ANN001
    person = create_user(rt, email=" Ana@Example.COM ", role="marketer", password=PASSWORD, actor="cli")
    assert person.email == "ana@example.com" and person.role is Role.MARKETER
    with rt.session_factory() as session:
        stored = session.scalar(sa.select(ConsoleUser.password_hash))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert log_in(rt, "ANA@example.com", PASSWORD, address=ADDRESS).id == person.id


def test_bad_input_is_refused_naming_the_field(rt) -> None:  # noqa: ANN001
    with pytest.raises(MessageInvalid, match="password"):
        create_user(rt, email="b@example.com", role="viewer", password="short", actor="cli")
    with pytest.raises(MessageInvalid, match="role"):
        create_user(rt, email="b@example.com", role="owner", password=PASSWORD, actor="cli")
    create_user(rt, email="b@example.com", role="viewer", password=PASSWORD, actor="cli")
    with pytest.raises(MessageInvalid, match="already has an account"):
        create_user(rt, email="B@example.com", role="viewer", password=PASSWORD, actor="cli")


def test_an_unknown_email_is_refused_like_a_wrong_password(rt) -> None:  # noqa: ANN001
    with pytest.raises(LoginRefused, match="^wrong email or password$"):
        log_in(rt, "nobody@example.com", PASSWORD, address=ADDRESS)


def test_sessions_are_stored_as_hashes_and_end_at_logout_expiry_disable_and_reset(rt) -> None:  # noqa: ANN001
    person = create_user(rt, email="d@example.com", role="admin", password=PASSWORD, actor="cli")
    token = start_session(rt, person, ttl_s=3600)
    with rt.session_factory() as session:
        assert session.scalar(sa.select(ConsoleSession.token_hash)) == token_hash(token) != token
        assert person_for(session, token).email == "d@example.com"
        assert person_for(session, token, now=utcnow() + timedelta(hours=2)) is None  # expired
        assert person_for(session, token + "x") is None
    end_session(rt, token)
    with rt.session_factory() as session:
        assert person_for(session, token) is None
    for end in (lambda: disable_user(rt, "d@example.com", actor="cli"),
                lambda: reset_password(rt, "d@example.com", PASSWORD + "!", actor="cli")):
        token = start_session(rt, person, ttl_s=3600)
        end()
        with rt.session_factory() as session:
            assert person_for(session, token) is None
    # reset re-enabled the disabled account, with the new password only
    assert log_in(rt, "d@example.com", PASSWORD + "!", address=ADDRESS).email == "d@example.com"
    with pytest.raises(LoginRefused):
        log_in(rt, "d@example.com", PASSWORD, address=ADDRESS)


def test_roles_are_nested_and_the_csrf_token_belongs_to_its_session() -> None:
    assert [r.allows(Permission.SEND) for r in Role] == [False, True, True]
    assert [r.allows(Permission.ADMIN) for r in Role] == [False, False, True]
    assert all(r.allows(Permission.VIEW) for r in Role)
    token = csrf.token_for_session("session-a")
    assert csrf.matches(token, csrf.token_for_session("session-a"))
    assert not csrf.matches(token, csrf.token_for_session("session-b")) and not csrf.matches(token, "") and not csrf.matches(None, None)


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", "user", *args], input=stdin, env=env, capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)


def test_the_user_cli_creates_lists_disables_and_resets(migrated_postgres: str, tmp_path) -> None:  # noqa: ANN001
    env = stack_env(database_url=migrated_postgres, sandbox_url="http://127.0.0.1:9")
    email = f"cli-{tmp_path.name[-8:]}@example.com".lower()
    done = _cli(env, "create", "--email", email, "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0 and f"user {email} (viewer) created" in done.stdout, done.stderr
    short = _cli(env, "create", "--email", "x" + email, "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "invalid: password" in short.stderr
    assert _cli(env, "disable", "--email", email).returncode == 0
    listed = _cli(env, "list").stdout
    assert any(line.startswith(email) and "disabled" in line for line in listed.splitlines())
    assert _cli(env, "reset-password", "--email", email, "--password-stdin", stdin=PASSWORD + "2\n").returncode == 0
    assert any(line.startswith(email) and "active" in line for line in _cli(env, "list").stdout.splitlines())
    missing = _cli(env, "disable", "--email", "nobody@example.com")
    assert missing.returncode == 1 and "no console user" in missing.stderr
