"""The migrations build exactly the tables the models describe, on SQLite and on Postgres: every
column, index and constraint (alembic's autogenerate comparison finds nothing to change)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import worker.audit  # noqa: F401 - its table is in Base.metadata
from worker.db import upgrade
from worker.models import Base


def differences(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_sqlite_head_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert differences(url) == []


def test_postgres_head_matches_the_models(migrated_postgres: str) -> None:
    assert differences(migrated_postgres) == []
