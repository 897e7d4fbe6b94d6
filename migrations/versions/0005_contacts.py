"""Contacts and consent: one row per phone, its consent history, and the per-message gate columns.

Backfills contacts from the messages already stored (first seen, last sent) and the webhook events
(last inbound message, from `message.received`), so a database upgraded mid-life knows whose
24-hour window is open.

Revision ID: 0005
Revises: 0004a (first written on 0003; re-chained after main's 0004, 0004a)
"""
from datetime import datetime, timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004a"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

BACKFILL = sa.text(
    """
    INSERT INTO contacts (phone, first_seen_at, last_sent_at, last_inbound_at, updated_at)
    SELECT phone, MIN(first_seen), MAX(last_sent), MAX(last_inbound), :now FROM (
        SELECT phone, created_at AS first_seen, sent_at AS last_sent, CAST(NULL AS TIMESTAMP) AS last_inbound
        FROM messages WHERE status <> 'rejected' AND phone <> ''
        UNION ALL
        SELECT phone, occurred_at, CAST(NULL AS TIMESTAMP), occurred_at
        FROM webhook_events WHERE event_type = 'message.received' AND phone IS NOT NULL AND phone <> ''
    ) AS seen
    GROUP BY phone
    """
)


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("phone", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("last_inbound_at", sa.DateTime(), nullable=True),
        sa.Column("last_sent_at", sa.DateTime(), nullable=True),
        sa.Column("opted_out_at", sa.DateTime(), nullable=True),
        sa.Column("opt_out_source", sa.String(length=16), nullable=True),
        sa.Column("opt_out_note", sa.Text(), nullable=True),
        sa.Column("opted_in_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("phone", name=op.f("pk_contacts")),
    )
    op.create_table(
        "contact_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("phone", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["phone"], ["contacts.phone"], name=op.f("fk_contact_events_phone_contacts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_events")),
    )
    op.create_index("ix_contact_events_phone_at", "contact_events", ["phone", "at"])
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("require_open_window", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("require_open_window", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
    op.execute(BACKFILL.bindparams(now=datetime.now(timezone.utc).replace(tzinfo=None)))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("require_open_window")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("require_open_window")
        batch.drop_column("expires_at")
    op.drop_index("ix_contact_events_phone_at", table_name="contact_events")
    op.drop_table("contact_events")
    op.drop_table("contacts")
