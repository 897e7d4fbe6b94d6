"""campaigns.consecutive_unknown: ambiguous outcomes since the last send, for auto-pause.

Revision ID: 0004a
Revises: 0004 (re-chained: main gained 0004_retention while this branch was open)
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004a"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("consecutive_unknown", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("consecutive_unknown")
