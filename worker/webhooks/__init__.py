"""Vendor webhooks: receive, verify, record, and apply delivery receipts and button replies.

Public API: `create_app` (the WSGI receiver), `match_pending_events` (for the sweeper),
`WebhookEvent` (the table). `webhooks_command` lives in `worker.cli.webhooks`.
"""

from worker.webhooks.app import WebhookApp, create_app
from worker.webhooks.apply import Outcome, match_pending_events, record_and_apply
from worker.webhooks.models import EventKind, WebhookEvent

__all__ = ["EventKind", "Outcome", "WebhookApp", "WebhookEvent", "create_app", "match_pending_events", "record_and_apply"]
