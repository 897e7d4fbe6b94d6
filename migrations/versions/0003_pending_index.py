"""A partial index of pending messages per campaign, for the dispatcher's claim.

Without it the claim walks the primary key in id order and steps over every row a campaign has
already sent: ticks of a 1,000,000-recipient campaign got slower as it progressed.

Revision ID: 0003
Revises: 0002
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_index("ix_messages_pending_campaign_id", "messages", ["campaign_id", "id"],
                    postgresql_where=PENDING, sqlite_where=PENDING)


def downgrade() -> None:
    op.drop_index("ix_messages_pending_campaign_id", table_name="messages")
