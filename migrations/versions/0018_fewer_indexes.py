"""Fewer index writes on `messages` (issue 26 item 3): a status change writes an entry into every
index whose predicate the new row version meets (status is indexed, so it is never a HOT update);
indexes no query needs go, and those needed for a subset of rows hold only that subset.

- ix_messages_unfinished (status, campaign_id, id) WHERE status IN ('pending', 'queued', 'sending'):
  the questions asked across campaigns about what is left (the dispatcher's in-flight count, the
  sweeper's lost and stale rows and broker-loss hand-back, the queue depth, `run --until-idle`).
  Whole on SQLite, whose planner uses a partial index only for a query holding the predicate's own
  term (`status = 'sending'` would not), and which writes an index entry only when the index's
  columns change, so a partial index would save it nothing. It replaces ix_messages_status_not_before
  (status, not_before) and ix_messages_status_updated (status, updated_at): no query filters or
  orders by not_before or updated_at through them; they served only the status prefix, and took an
  entry on every new version of every row. Without updated_at in an index, the sweeper's hand-back
  of a queued row (enqueued_at, updated_at) is a HOT update.
- ix_messages_campaign_sent (campaign_id, sent_at) becomes partial WHERE sent_at IS NOT NULL: the
  late-failure breaker reads only sent messages; the unsent ones no longer take an entry.
- Kept: ix_messages_pending_campaign_id, though ix_messages_campaign_status holds the same range:
  without it the planner walks the primary key for a campaign's first pending rows (195 ms behind
  750,000 older rows, against 0.1 ms); only a row whose new version is pending takes an entry.

bench/index_audit.py measures each query's plan and time on 1,000,000 rows and the cost of a
status change before and after; docs/scaling.md "Indexes of `messages`" has the table.

Revision ID: 0018
Revises: 0017
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: Union[str, Sequence[str], None] = "0017"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

UNFINISHED = sa.text("status IN ('pending', 'queued', 'sending')")
SENT = sa.text("sent_at IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_messages_unfinished", "messages", ["status", "campaign_id", "id"], postgresql_where=UNFINISHED)
    op.drop_index("ix_messages_status_not_before", table_name="messages")
    op.drop_index("ix_messages_status_updated", table_name="messages")
    op.drop_index("ix_messages_campaign_sent", table_name="messages")
    op.create_index("ix_messages_campaign_sent", "messages", ["campaign_id", "sent_at"],
                    postgresql_where=SENT, sqlite_where=SENT)


def downgrade() -> None:
    op.drop_index("ix_messages_campaign_sent", table_name="messages")
    op.create_index("ix_messages_campaign_sent", "messages", ["campaign_id", "sent_at"])
    op.create_index("ix_messages_status_updated", "messages", ["status", "updated_at"])
    op.create_index("ix_messages_status_not_before", "messages", ["status", "not_before"])
    op.drop_index("ix_messages_unfinished", table_name="messages")
