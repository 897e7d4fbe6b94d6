"""Experiments: A/B tests of a campaign's button message.

- campaigns.variants: every variant's message (A, B[, C]); `template` stays the first, so whatever
  reads one message still reads a valid one.
- messages.variant: the variant a recipient gets, fixed once assigned; messages.alternatives: every
  variant's filled message for a `held` recipient (the rest of the audience, waiting for the winner).
- experiments: how a campaign's test runs (share, metric, decide-after), its phase and clock, and
  the decision with its numbers.

No index: results per variant read one campaign's rows (its own indexes), and the nullable columns
added here cost the send path nothing.

Revision ID: 0013
Revises: 0012
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: Union[str, Sequence[str], None] = "0012"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("variants", sa.JSON(), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("variant", sa.String(length=1), nullable=True))
        batch.add_column(sa.Column("alternatives", sa.JSON(), nullable=True))
    op.create_table(
        "experiments",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("test_share", sa.Float(), nullable=False),
        sa.Column("decide_after_s", sa.Integer(), nullable=True),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("default_variant", sa.String(length=1), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("test_done_at", sa.DateTime(), nullable=True),
        sa.Column("decide_at", sa.DateTime(), nullable=True),
        sa.Column("clock_paused_at", sa.DateTime(), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("sent_variant", sa.String(length=1), nullable=True),
        sa.Column("winner", sa.String(length=1), nullable=True),
        sa.Column("decision", sa.JSON(), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name=op.f("fk_experiments_campaign_id_campaigns"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("campaign_id", name=op.f("pk_experiments")),
    )


def downgrade() -> None:
    op.drop_table("experiments")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("alternatives")
        batch.drop_column("variant")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("variants")
