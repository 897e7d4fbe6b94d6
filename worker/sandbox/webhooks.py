"""Webhook events the sandbox sends after it accepts a message, as the vendor would.

Only when `webhook_url` is set. For each accepted message (answered 200, and also a read-timeout
fault: the vendor did send that message, only its answer was lost) one background task, never awaited by the send path, POSTs in this order:

1. at `delivered_after_s` after acceptance::

     {"event": "message.status.updated", "timestamp": "<ISO 8601 UTC>",
      "data": {"message_id": "wamid.…", "status": "delivered", "timestamp": "<ISO 8601 UTC>",
               "recipient": "<phone>", "phone_number_id": "<sender id>"}}

2. with probability `read_share`, at `read_after_s` after acceptance (never before delivered):
   the same shape with `"status": "read"`.
3. only if read, with probability `tap_share`, right after the read event, an inbound button reply::

     {"event": "message.received", "timestamp": "<ISO 8601 UTC>",
      "data": {"message_id": "wamid.<new>", "conversation_id": "conv_<hex>",
               "from": "<phone>", "to": "<phone_number_id>", "type": "button_reply",
               "body": "<button title>", "button": {"id": "<id>", "title": "<title>"},
               "context": {"message_id": "<the wamid we answered at send time>"},
               "timestamp": "<ISO 8601 UTC>"}}

   The button is `tap_button_id` when set (and present in the message), else the first button.

Every POST has `Content-Type: application/json` and `X-Awal-Signature-256: sha256=<hex
HMAC-SHA256(webhook_secret, raw body)>` (worker.signing.sign_body); without a webhook secret the
header is left out. A POST that fails (connection error or a non-2xx answer) is retried up to
`webhook_attempts` times in all, backing off `webhook_retry_base_s * 2**n`. Outcomes are counted in
stats()["webhooks"] under "delivered", "retried" and "failed".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import datetime, timezone
from typing import Any

import aiohttp

from worker.sandbox.config import WEBHOOK_TIMEOUT_S, SandboxConfig
from worker.sandbox.faults import FaultPlan
from worker.sandbox.state import Record, SandboxState, new_wamid
from worker.signing import SIGNATURE_HEADER, sign_body

log = logging.getLogger(__name__)


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_event(record: Record, status: str) -> dict[str, Any]:
    now = iso_now()
    return {
        "event": "message.status.updated",
        "timestamp": now,
        "data": {
            "message_id": record.message_id,
            "status": status,
            "timestamp": now,
            "recipient": record.phone,
            "phone_number_id": record.phone_number_id,
        },
    }


def tap_event(record: Record, button: dict[str, str]) -> dict[str, Any]:
    now = iso_now()
    return {
        "event": "message.received",
        "timestamp": now,
        "data": {
            "message_id": new_wamid(),
            "conversation_id": "conv_" + os.urandom(6).hex(),
            "from": record.phone,
            "to": record.phone_number_id,
            "type": "button_reply",
            "body": button.get("title"),
            "button": {"id": button.get("id"), "title": button.get("title")},
            "context": {"message_id": record.message_id},
            "timestamp": now,
        },
    }


def chosen_button(record: Record, tap_button_id: str | None) -> dict[str, str] | None:
    buttons = [b for b in record.body.get("buttons") or [] if isinstance(b, dict)]
    if not buttons:
        return None
    if tap_button_id is not None:
        for button in buttons:
            if button.get("id") == tap_button_id:
                return button
    return buttons[0]


class WebhookEmitter:
    """Schedules and delivers the events for accepted messages, on the server's event loop."""

    def __init__(self, config: SandboxConfig, state: SandboxState, faults: FaultPlan) -> None:
        self._config = config
        self._state = state
        self._faults = faults
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, record: Record) -> None:
        """Plan this message's events now (decisions drawn in send order), deliver them later."""
        cfg = self._config
        if not cfg.webhook_url:
            return
        read = self._faults.chance(cfg.read_share) if cfg.read_share < 1 else True
        tap = read and self._faults.chance(cfg.tap_share)
        task = asyncio.get_running_loop().create_task(
            self._emit(record, cfg.webhook_url, cfg.webhook_secret, read, tap, cfg.tap_button_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _emit(self, record: Record, url: str, secret: str | None, read: bool, tap: bool,
                    tap_button_id: str | None) -> None:
        cfg = self._config
        delivered_at = cfg.delivered_after_s
        await asyncio.sleep(delivered_at)
        await self.post(url, secret, status_event(record, "delivered"))
        if not read:
            return
        await asyncio.sleep(max(0.0, cfg.read_after_s - delivered_at))
        await self.post(url, secret, status_event(record, "read"))
        button = chosen_button(record, tap_button_id) if tap else None
        if button is not None:
            await self.post(url, secret, tap_event(record, button))

    async def post(self, url: str, secret: str | None, event: dict[str, Any]) -> bool:
        """POST one signed event, retrying with backoff; True once the receiver answered 2xx."""
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if secret:
            headers[SIGNATURE_HEADER] = sign_body(secret=secret.encode("utf-8"), body=body)
        session = self._ensure_session()
        for attempt in range(max(1, self._config.webhook_attempts)):
            if attempt:
                self._state.webhooks["retried"] += 1
                await asyncio.sleep(self._config.webhook_retry_base_s * 2 ** (attempt - 1))
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        self._state.webhooks["delivered"] += 1
                        return True
                    log.info("webhook %s answered %s (attempt %d)", event["event"], response.status, attempt + 1)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.info("webhook %s failed: %s (attempt %d)", event["event"], type(exc).__name__, attempt + 1)
        self._state.webhooks["failed"] += 1
        return False

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        return self._session

    def cancel_pending(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        self.cancel_pending()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
