"""Shared CLI plumbing: settings, one-line errors (never a traceback for bad input or config)."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import click

from worker.errors import ConfigError, MessageInvalid
from worker.logs import configure_logging
from worker.runtime import Runtime, get_runtime, install_runtime
from worker.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def fail(text: str, code: int = 2) -> None:
    click.echo(f"error: {text}", err=True)
    sys.exit(code)


def friendly_errors(func: F) -> F:
    """Turn configuration and validation errors into one clear line and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(f"configuration: {exc}")
        except MessageInvalid as exc:
            for problem in exc.problems:
                click.echo(f"invalid: {problem}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def load_runtime() -> Runtime:
    """The process runtime from the environment; a bad setting stops with one line naming it."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        fail(f"configuration: {exc}")
    configure_logging(settings.log_format)
    runtime = Runtime(settings)
    install_runtime(runtime)
    return get_runtime()


def ensure_schema(runtime: Runtime) -> None:
    """The embedded SQLite default migrates itself; other databases use `buttoncast db upgrade`."""
    if runtime.settings.sqlite:
        from worker.db import upgrade

        upgrade(runtime.settings.database_url)
