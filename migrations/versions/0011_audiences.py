"""Audiences: contacts' attributes and tags, saved segments, campaigns from a segment or a
follow-up, recurring series and their runs, recipients' own time zones.

Revision ID: 0011
Revises: 0010
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: Union[str, Sequence[str], None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JsonDoc = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("attributes", JsonDoc, server_default=sa.text("'{}'"), nullable=False))
    op.create_table(
        "contact_tags",
        sa.Column("phone", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["phone"], ["contacts.phone"], name=op.f("fk_contact_tags_phone_contacts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("phone", "tag", name=op.f("pk_contact_tags")),
    )
    op.create_index("ix_contact_tags_tag_phone", "contact_tags", ["tag", "phone"])
    op.create_table(
        "segments",
        sa.Column("id", BigId, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sa.UniqueConstraint("name", name=op.f("uq_segments_name")),
    )
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("audience", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("audience_resolved_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("segment_id", BigId, nullable=True))
        batch.add_column(sa.Column("follow_up_of", BigId, nullable=True))
        batch.add_column(sa.Column("series_every_s", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("series_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("series_next_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("series_id", BigId, nullable=True))
        batch.add_column(sa.Column("run_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("zones", sa.JSON(), nullable=True))
    # Indexes only, no constraint: on SQLite a new constraint makes batch mode copy and DROP the
    # campaigns table, and the drop cascades (foreign keys on) to every message. A unique index
    # holds "one run per (series, slot)" as well; a run is never deleted without its series.
    op.create_index("uq_campaigns_series_run", "campaigns", ["series_id", "run_at"], unique=True)
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("zone", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("zone")
    op.drop_index("uq_campaigns_series_run", table_name="campaigns")
    with op.batch_alter_table("campaigns") as batch:
        for column in ("zones", "run_at", "series_id", "series_next_at", "series_until", "series_every_s",
                       "follow_up_of", "segment_id", "audience_resolved_at", "audience"):
            batch.drop_column(column)
    op.drop_table("segments")
    op.drop_index("ix_contact_tags_tag_phone", table_name="contact_tags")
    op.drop_table("contact_tags")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("attributes")
