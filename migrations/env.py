"""Alembic environment: the URL comes from the caller (buttoncast db upgrade) or DATABASE_URL."""

from __future__ import annotations

from alembic import context

import worker.access.models  # noqa: F401,E402 - registers api_keys, api_idempotency, console_users, console_sessions
import worker.audit  # noqa: F401,E402 - registers audit_events
import worker.hooks.models  # noqa: F401,E402 - registers the hook tables
import worker.webhooks.models  # noqa: F401,E402 - registers webhook_events on Base.metadata
from worker.db import make_engine
from worker.models import Base
from worker.settings import Settings

config = context.config
url = config.attributes.get("database_url") or Settings.from_env().database_url


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render our UTCDateTime as a plain DateTime, so migrations never import application code."""
    if type_ == "type" and type(obj).__name__ == "UTCDateTime":
        return "sa.DateTime()"
    return False


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
