"""A partial index of unmatched webhook events by arrival, for the sweep's time-windowed matching.

Issue 12 item 15: the sweep rescanned every unmatched event (other apps' messages, strangers'
replies) on every run, 520-640 ms for 400,000 of them. It now only retries events received within
WEBHOOK_MATCH_WINDOW_S, found through this index, so its cost no longer grows with history.

Revision ID: 0004
Revises: 0003
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

PG_UNMATCHED = sa.text("matched IS false")
SQLITE_UNMATCHED = sa.text("matched IS 0")


def upgrade() -> None:
    op.create_index("ix_webhook_events_unmatched_received", "webhook_events", ["received_at", "id"],
                    postgresql_where=PG_UNMATCHED, sqlite_where=SQLITE_UNMATCHED)


def downgrade() -> None:
    op.drop_index("ix_webhook_events_unmatched_received", table_name="webhook_events")
