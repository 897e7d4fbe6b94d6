"""Outbound hooks: endpoints, their subscriptions, and the outbox of events to deliver.

Revision ID: 0008
Revises: 0004a
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hook_endpoints",
        sa.Column("id", BigId, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("key_salt", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_endpoints")),
    )
    op.create_table(
        "hook_subscriptions",
        sa.Column("endpoint_id", BigId, nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["endpoint_id"], ["hook_endpoints.id"],
                                name=op.f("fk_hook_subscriptions_endpoint_id_hook_endpoints"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("endpoint_id", "event_type", name=op.f("pk_hook_subscriptions")),
    )
    op.create_index("ix_hook_subscriptions_event_type", "hook_subscriptions", ["event_type"])
    op.create_table(
        "hook_outbox",
        sa.Column("id", BigId, nullable=False),
        sa.Column("endpoint_id", BigId, nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("message_id", BigId, nullable=True),
        sa.Column("phone", sa.String(length=64), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("retry_since", sa.DateTime(), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("last_http_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("dead_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["hook_endpoints.id"],
                                name=op.f("fk_hook_outbox_endpoint_id_hook_endpoints"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"],
                                name=op.f("fk_hook_outbox_message_id_messages"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_outbox")),
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_hook_outbox_endpoint_event"),
    )
    op.create_index("ix_hook_outbox_status_next_attempt", "hook_outbox", ["status", "next_attempt_at"])
    op.create_index("ix_hook_outbox_event_id", "hook_outbox", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_hook_outbox_event_id", table_name="hook_outbox")
    op.drop_index("ix_hook_outbox_status_next_attempt", table_name="hook_outbox")
    op.drop_table("hook_outbox")
    op.drop_index("ix_hook_subscriptions_event_type", table_name="hook_subscriptions")
    op.drop_table("hook_subscriptions")
    op.drop_table("hook_endpoints")
