"""Late failures by class: the vendor's failure code and its class on each message, the index the
late-failure breaker reads, and the time from which the breaker counts a campaign's messages.

Backfills the code and class of late failures already stored, from the reason text recorded in
delivery_error (worker.failures holds the code table).

Revision ID: 0007
Revises: 0009 (main's head when this was merged; the brief says 0003, re-chained)
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0009"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BACKFILL_BATCH = 1000


def upgrade() -> None:
    op.add_column("messages", sa.Column("failure_code", sa.String(16), nullable=True))
    op.add_column("messages", sa.Column("failure_class", sa.String(32), nullable=True))
    op.add_column("campaigns", sa.Column("late_breaker_since", sa.DateTime(), nullable=True))
    op.create_index("ix_messages_campaign_sent", "messages", ["campaign_id", "sent_at"])
    _backfill()


def _backfill() -> None:
    from worker.failures import classify, parse_failure_code

    bind = op.get_bind()
    messages = sa.table("messages", sa.column("id", sa.Integer), sa.column("delivery_status", sa.String),
                        sa.column("delivery_error", sa.Text), sa.column("failure_code", sa.String),
                        sa.column("failure_class", sa.String))
    after = 0
    while True:
        rows = bind.execute(
            sa.select(messages.c.id, messages.c.delivery_error)
            .where(messages.c.delivery_status == "failed", messages.c.id > after)
            .order_by(messages.c.id).limit(BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        after = rows[-1].id
        updates = []
        for row in rows:
            code = parse_failure_code({"reason": row.delivery_error or ""})
            updates.append({"b_id": row.id, "b_code": code, "b_class": classify(code).value})
        bind.execute(
            messages.update().where(messages.c.id == sa.bindparam("b_id"))
            .values(failure_code=sa.bindparam("b_code"), failure_class=sa.bindparam("b_class")),
            updates,
        )


def downgrade() -> None:
    op.drop_index("ix_messages_campaign_sent", table_name="messages")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("late_breaker_since")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("failure_class")
        batch.drop_column("failure_code")
