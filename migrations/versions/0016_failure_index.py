"""A partial index of late failures per campaign: messages the vendor accepted and later reported
failed (`failure_class` set by a `failed` status webhook), by class, newest first.

The console counts them as failed and finds them by status `failed`, by vendor code (131047) or by
class (window_closed); without it those filters walk every sent row of a campaign (800,000 of a
1,000,000-recipient one). Partial (IS NOT NULL): it holds only the late failures, and the send
path, which never sets failure_class, keeps its HOT updates.

Revision ID: 0016
Revises: 0015
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: Union[str, Sequence[str], None] = "0015"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LATE = sa.text("failure_class IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_messages_campaign_late", "messages", ["campaign_id", "failure_class", "id"],
                    postgresql_where=LATE, sqlite_where=LATE)


def downgrade() -> None:
    op.drop_index("ix_messages_campaign_late", table_name="messages")
