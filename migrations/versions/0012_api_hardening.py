"""API hardening: Idempotency-Keys per caller with an expiry, the API key that created a message,
and indexes for the reads that scanned whole tables.

- api_idempotency: keyed by (scope, key), scope "apikey:<id>" (a key is each caller's own), with
  `expires_at` (24 hours after first use; indexed for the retention job's delete). Rows already
  expired are dropped; the others keep answering replays.
- messages.api_key_id: the API key that created the message (a `send` key reads only these),
  filled in for the messages made before from their first event's actor ("apikey:<prefix>:<name>").
- partial indexes: messages by API key, a campaign's recipients by button tapped and by error code
  (newest first), opted-out contacts in phone order, hook_outbox counts per endpoint and status and
  each endpoint's latest failure. The messages indexes are partial (IS NOT NULL): they stay small,
  and the send path's updates that leave those columns empty keep their HOT updates.

Revision ID: 0012
Revises: 0011
"""
from datetime import datetime, timedelta, timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: Union[str, Sequence[str], None] = "0011"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
KEY_TTL = timedelta(hours=24)
PARTIAL_INDEXES = (  # (name, table, columns, predicate)
    ("ix_messages_api_key_id", "messages", ["api_key_id", "id"], "api_key_id IS NOT NULL"),
    ("ix_messages_campaign_button", "messages", ["campaign_id", "reply_button_id", "id"],
     "reply_button_id IS NOT NULL"),
    ("ix_messages_campaign_error", "messages", ["campaign_id", "last_error_code", "id"], "last_error_code IS NOT NULL"),
    ("ix_contacts_opted_out_phone", "contacts", ["phone"], "opted_out_at IS NOT NULL"),
    ("ix_hook_outbox_endpoint_failed", "hook_outbox", ["endpoint_id", "last_attempt_at"], "last_error IS NOT NULL"),
)


def _idempotency_upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("api_idempotency") as batch:
        batch.add_column(sa.Column("scope", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
    table = sa.table("api_idempotency", sa.column("scope", sa.String()), sa.column("api_key_id", sa.BigInteger()),
                     sa.column("created_at", sa.DateTime()), sa.column("expires_at", sa.DateTime()))
    cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - KEY_TTL
    op.execute(table.delete().where(table.c.created_at < cutoff))
    expires = (sa.func.datetime(table.c.created_at, "+24 hours") if sqlite
               else table.c.created_at + sa.text("interval '24 hours'"))
    op.execute(table.update().values(
        scope=sa.literal("apikey:") + sa.func.coalesce(sa.cast(table.c.api_key_id, sa.String()), "legacy"),
        expires_at=expires))
    if sqlite:
        with op.batch_alter_table("api_idempotency", recreate="always") as batch:
            batch.alter_column("scope", existing_type=sa.String(length=40), nullable=False)
            batch.alter_column("expires_at", existing_type=sa.DateTime(), nullable=False)
            batch.drop_constraint("pk_api_idempotency", type_="primary")
            batch.create_primary_key("pk_api_idempotency", ["scope", "key"])
    else:
        op.alter_column("api_idempotency", "scope", existing_type=sa.String(length=40), nullable=False)
        op.alter_column("api_idempotency", "expires_at", existing_type=sa.DateTime(), nullable=False)
        op.drop_constraint("pk_api_idempotency", "api_idempotency", type_="primary")
        op.create_primary_key("pk_api_idempotency", "api_idempotency", ["scope", "key"])
    op.create_index("ix_api_idempotency_expires_at", "api_idempotency", ["expires_at"])


def _message_keys_upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("api_key_id", BigId, nullable=True))
    # A message made over the API before: its first event names the key ("apikey:<8-char prefix>:<name>").
    op.execute(sa.text(
        "UPDATE messages SET api_key_id = (SELECT k.id FROM message_events e JOIN api_keys k "
        "ON k.prefix = substr(e.actor, 8, 8) WHERE e.message_id = messages.id AND e.from_status IS NULL "
        "AND e.actor LIKE 'apikey:%' ORDER BY e.id LIMIT 1) "
        "WHERE campaign_id IS NULL AND id IN (SELECT message_id FROM message_events "
        "WHERE from_status IS NULL AND actor LIKE 'apikey:%')"))


def upgrade() -> None:
    _idempotency_upgrade()
    _message_keys_upgrade()
    for name, table, columns, predicate in PARTIAL_INDEXES:
        where = sa.text(predicate)
        op.create_index(name, table, columns, postgresql_where=where, sqlite_where=where)
    op.create_index("ix_hook_outbox_endpoint_status", "hook_outbox", ["endpoint_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_hook_outbox_endpoint_status", table_name="hook_outbox")
    for name, table, _columns, _predicate in reversed(PARTIAL_INDEXES):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("api_key_id")
    op.drop_index("ix_api_idempotency_expires_at", table_name="api_idempotency")
    # One key per row again: where two callers used the same key, the most recent row stays.
    op.execute(sa.text("DELETE FROM api_idempotency WHERE EXISTS (SELECT 1 FROM api_idempotency newer "
                       "WHERE newer.key = api_idempotency.key AND (newer.created_at > api_idempotency.created_at "
                       "OR (newer.created_at = api_idempotency.created_at AND newer.scope > api_idempotency.scope)))"))
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("api_idempotency", recreate="always") as batch:
            batch.drop_constraint("pk_api_idempotency", type_="primary")
            batch.create_primary_key("pk_api_idempotency", ["key"])
            batch.drop_column("expires_at")
            batch.drop_column("scope")
    else:
        op.drop_constraint("pk_api_idempotency", "api_idempotency", type_="primary")
        op.create_primary_key("pk_api_idempotency", "api_idempotency", ["key"])
        op.drop_column("api_idempotency", "expires_at")
        op.drop_column("api_idempotency", "scope")
