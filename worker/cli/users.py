"""`buttoncast user create|list|disable|reset-password`: the people who log in to the console."""

from __future__ import annotations

import sys

import click

from worker.cli.common import ensure_schema, fail, friendly_errors, load_runtime

CLI_ACTOR = "cli"


def _password(from_stdin: bool) -> str:
    """From standard input's first line (scripts), else a hidden prompt asked twice."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@click.group("user")
def user_group() -> None:
    """People who log in to the console (passwords stored as argon2 hashes)."""


@user_group.command("create")
@click.option("--email", required=True)
@click.option("--role", required=True, type=click.Choice(["admin", "marketer", "viewer"]),
              help="viewer: look and download; marketer: also send, pause, retry; admin: also people, keys, contacts.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of a prompt.")
@friendly_errors
def user_create(email: str, role: str, password_stdin: bool) -> None:
    """Create a console user."""
    from worker.access.users import create_user

    runtime = load_runtime()
    ensure_schema(runtime)
    person = create_user(runtime, email=email, role=role, password=_password(password_stdin), actor=CLI_ACTOR)
    click.echo(f"user {person.email} ({person.role.value}) created")


@user_group.command("list")
@friendly_errors
def user_list() -> None:
    """Every user: email, role, state, last login."""
    from worker.access.users import list_users

    runtime = load_runtime()
    with runtime.read_sessions() as session:
        people = list_users(session)
    click.echo(f"{'email':<32}  {'role':<8}  {'state':<24}  last login (UTC)")
    for p in people:
        state = "disabled" if p.disabled else "active"
        last = f"{p.last_login_at:%Y-%m-%d %H:%M}" if p.last_login_at else "-"
        click.echo(f"{p.email:<32}  {p.role.value:<8}  {state:<24}  {last}")


@user_group.command("disable")
@click.option("--email", required=True)
@friendly_errors
def user_disable(email: str) -> None:
    """No more logins for this user; their open sessions end now."""
    from worker.access.users import UserNotFound, disable_user

    runtime = load_runtime()
    try:
        person = disable_user(runtime, email, actor=CLI_ACTOR)
    except UserNotFound as exc:
        fail(str(exc), 1)
    click.echo(f"user {person.email} disabled")


@user_group.command("reset-password")
@click.option("--email", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input instead of a prompt.")
@friendly_errors
def user_reset_password(email: str, password_stdin: bool) -> None:
    """Set a new password; also re-enables a disabled account and lets every address try again at once."""
    from worker.access.users import UserNotFound, reset_password

    runtime = load_runtime()
    try:
        person = reset_password(runtime, email, _password(password_stdin), actor=CLI_ACTOR)
    except UserNotFound as exc:
        fail(str(exc), 1)
    click.echo(f"user {person.email}: password reset, sessions ended")
