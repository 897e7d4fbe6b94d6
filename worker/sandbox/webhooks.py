"""Webhook events the sandbox sends after it accepts a message, as the vendor would.

Only when `webhook_url` is set. For each accepted message (answered 200, and also a read-timeout
fault: the vendor did send that message, only its answer was lost) one background task, never awaited by the send path, POSTs in this order:

1. at `delivered_after_s` after acceptance::

     {"event": "message.status.updated", "timestamp": "<ISO 8601 UTC>",
      "data": {"message_id": "wamid.…", "status": "delivered", "timestamp": "<ISO 8601 UTC>",
               "recipient": "<phone>", "phone_number_id": "<sender id>"}}

2. with probability `read_share`, at `read_after_s` after acceptance (never before delivered):
   the same shape with `"status": "read"`.
3. only if read, with probability `tap_share` (or the `tap_share_by_text` share of a body_text
   containing its key: SandboxConfig.tap_share_for), right after the read event, an inbound button reply::

     {"event": "message.received", "timestamp": "<ISO 8601 UTC>",
      "data": {"message_id": "wamid.<new>", "conversation_id": "conv_<hex>",
               "from": "<phone>", "to": "<phone_number_id>", "type": "button_reply",
               "body": "<button title>", "button": {"id": "<id>", "title": "<title>"},
               "context": {"message_id": "<the wamid we answered at send time>"},
               "timestamp": "<ISO 8601 UTC>"}}

   The button is `tap_button_id` when set (and present in the message), else the first button.

A late failure replaces all of that: a message whose phone matches a `late_fail_prefixes` entry
(else, drawn with the `late_fail_rates` shares) gets, at `delivered_after_s`, one `failed` status
webhook carrying the code WhatsApp style (an *assumption* about the vendor's shape, the one
worker.failures reads first)::

     {"event": "message.status.updated", "timestamp": "<ISO 8601 UTC>",
      "data": {"message_id": "wamid.…", "status": "failed", "timestamp": "<ISO 8601 UTC>",
               "recipient": "<phone>", "phone_number_id": "<sender id>",
               "errors": [{"code": 131047, "title": "Re-engagement message",
                           "message": "Re-engagement message",
                           "error_data": {"details": "…"}}]}}

A STOP reply (phone matches `stop_reply_prefixes`, else drawn with `stop_reply_rate`; never for
a late failure) comes after the delivered (and read) events, instead of a tap: an inbound text
`{"event": "message.received", "data": {"message_id": "wamid.<new>", "from": "<phone>",
"to": "<phone_number_id>", "type": "text", "body": "STOP", ...}}` with no context.

Every POST has `Content-Type: application/json` and `X-Awal-Signature-256: sha256=<hex
HMAC-SHA256(webhook_secret, raw body)>` (worker.signing.sign_body); without a webhook secret the
header is left out. A POST that fails (connection error or a non-2xx answer) is retried up to
`webhook_attempts` times in all, backing off `webhook_retry_base_s * 2**n`. Outcomes are counted in
stats()["webhooks"] under "delivered", "retried" and "failed"; late failures sent in
stats()["late_failures"] by code, STOP replies in stats()["stop_replies"], taps planned in
stats()["taps"] ({wamid of the message tapped: button id}).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import datetime, timezone
from typing import Any

import aiohttp

from worker.failures import CODE_TITLES
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


_FAILURE_DETAILS = {
    "131047": "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    "131026": "Message undeliverable: the recipient is not on WhatsApp, uses an old app, or blocked the business.",
    "131050": "The user has chosen not to receive marketing messages from this business.",
    "131049": "This message was not delivered to maintain healthy ecosystem engagement.",
    "131048": "Message failed to send because there are restrictions on how many messages can be sent from this phone number.",
    "130429": "Cloud API message throughput has been reached.",
    "131056": "Too many messages sent from this phone number to the same phone number in a short period of time.",
}


def failed_event(record: Record, code: str) -> dict[str, Any]:
    """A late failure, WhatsApp style: the code in data.errors[0].code."""
    event = status_event(record, "failed")
    title = CODE_TITLES.get(code, "Message failed")
    event["data"]["errors"] = [{"code": int(code), "title": title, "message": title,
                                "error_data": {"details": _FAILURE_DETAILS.get(code, title)}}]
    return event


def _inbound(record: Record, type_: str, body: str | None, **extra: Any) -> dict[str, Any]:
    """A `message.received` event from the recipient of `record`."""
    now = iso_now()
    data = {"message_id": new_wamid(), "conversation_id": "conv_" + os.urandom(6).hex(), "from": record.phone,
            "to": record.phone_number_id, "type": type_, "body": body, **extra, "timestamp": now}
    return {"event": "message.received", "timestamp": now, "data": data}


def stop_event(record: Record, text: str) -> dict[str, Any]:
    """The recipient writes STOP (a plain inbound text, no context)."""
    return _inbound(record, "text", text)


def tap_event(record: Record, button: dict[str, str]) -> dict[str, Any]:
    return _inbound(record, "button_reply", button.get("title"),
                    button={"id": button.get("id"), "title": button.get("title")},
                    context={"message_id": record.message_id})


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
        late_code = self._late_code(record)
        if late_code is not None:
            self._state.late_failures[late_code] += 1
            coroutine = self._emit_failure(record, cfg.webhook_url, cfg.webhook_secret, late_code)
        else:
            read = self._faults.chance(cfg.read_share) if cfg.read_share < 1 else True
            stop = record.phone.startswith(cfg.stop_reply_prefixes or ("\0",)) or self._faults.chance(cfg.stop_reply_rate)
            tap = read and not stop and self._faults.chance(cfg.tap_share_for(record.body.get("body_text")))
            button = chosen_button(record, cfg.tap_button_id) if tap else None
            if stop:
                self._state.stop_replies += 1
            if button is not None:
                self._state.taps[record.message_id] = str(button.get("id"))
            coroutine = self._emit(record, cfg.webhook_url, cfg.webhook_secret, read, button,
                                   cfg.stop_reply_text if stop else None)
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _late_code(self, record: Record) -> str | None:
        """A prefix's code, else one draw split into bands by the late_fail_rates shares."""
        cfg = self._config
        code = cfg.late_failure_for(record.phone)
        if code is not None or not cfg.late_fail_rates or sum(cfg.late_fail_rates.values()) <= 0:
            return code
        roll = self._faults.rng.random()
        for code, share in cfg.late_fail_rates.items():
            if roll < share:
                return code
            roll -= share
        return None

    async def _emit_failure(self, record: Record, url: str, secret: str | None, code: str) -> None:
        await asyncio.sleep(self._config.delivered_after_s)
        await self.post(url, secret, failed_event(record, code))

    async def _emit(self, record: Record, url: str, secret: str | None, read: bool, button: dict[str, str] | None,
                    stop_text: str | None = None) -> None:
        cfg = self._config
        delivered_at = cfg.delivered_after_s
        await asyncio.sleep(delivered_at)
        await self.post(url, secret, status_event(record, "delivered"))
        if read:
            await asyncio.sleep(max(0.0, cfg.read_after_s - delivered_at))
            await self.post(url, secret, status_event(record, "read"))
        if stop_text is not None:
            await self.post(url, secret, stop_event(record, stop_text))
            return
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
