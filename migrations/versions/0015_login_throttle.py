"""Console logins are slowed, never locked: login_throttle holds recent failed logins per client
address and per (address, account) (worker.access.throttle); the account lock of 0009
(console_users.failed_logins, locked_until) is gone.

Revision ID: 0015
Revises: 0014
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: Union[str, Sequence[str], None] = "0014"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address", "account", name=op.f("pk_login_throttle")),
    )
    op.create_index("ix_login_throttle_last_failed_at", "login_throttle", ["last_failed_at"])
    op.create_index("ix_login_throttle_account", "login_throttle", ["account"])
    with op.batch_alter_table("console_users") as batch:
        batch.drop_column("failed_logins")
        batch.drop_column("locked_until")


def downgrade() -> None:
    with op.batch_alter_table("console_users") as batch:
        batch.add_column(sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("locked_until", sa.DateTime(), nullable=True))
    op.drop_index("ix_login_throttle_account", table_name="login_throttle")
    op.drop_index("ix_login_throttle_last_failed_at", table_name="login_throttle")
    op.drop_table("login_throttle")
