"""`buttoncast send` and `buttoncast message show`."""

from __future__ import annotations

import click

from worker.cli.common import ensure_schema, fail, friendly_errors, load_runtime
from worker.message import parse_button_spec
from worker.sending.enqueue import enqueue_message
from worker.sending.history import MessageNotFound, message_history, trail


@click.command("send")
@click.option("--phone", required=True, help="Recipient, international format (e.g. 966501234567, +966 50 123 4567 or 00966501234567).")
@click.option("--body", "body_text", required=True, help="Body text, at most 1024 characters.")
@click.option("--button", "buttons", multiple=True, required=True, metavar="ID:TITLE", help="1 to 3 buttons, e.g. --button yes:Yes.")
@click.option("--header", "header_text", default=None, help="Header text, at most 60 characters.")
@click.option("--footer", "footer_text", default=None, help="Footer text, at most 60 characters.")
@click.option("--phone-number-id", default=None, help="Sender id (default: AWAL_PHONE_NUMBER_ID).")
@click.option("--idempotency-key", default=None, help="The same key twice creates one message.")
@click.option("--require-open-window", is_flag=True,
              help="Hold it as suppressed (window_closed) if the recipient's 24-hour window is closed at send time.")
@click.option("--expires-at", default=None, help="Not sent by then (ISO 8601 with offset) -> expired.")
@friendly_errors
def send_command(phone, body_text, buttons, header_text, footer_text, phone_number_id, idempotency_key,  # noqa: ANN001
                 require_open_window, expires_at) -> None:  # noqa: ANN001
    """Enqueue one button message; prints its id alone on standard output."""
    runtime = load_runtime()
    ensure_schema(runtime)
    message_id = enqueue_message(
        phone=phone, body_text=body_text, buttons=[parse_button_spec(b) for b in buttons],
        header_text=header_text, footer_text=footer_text, phone_number_id=phone_number_id,
        idempotency_key=idempotency_key, runtime=runtime, require_open_window=require_open_window,
        expires_at=expires_at,
    )
    click.echo(f"queued message {message_id}", err=True)
    click.echo(message_id)


@click.group("message")
def message_group() -> None:
    """Inspect single messages."""


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


@message_group.command("show")
@click.argument("message_id", type=int)
@friendly_errors
def message_show(message_id: int) -> None:
    """Status, ids, last error, and the audit trail: every attempt and status change."""
    runtime = load_runtime()
    with runtime.read_sessions() as session:
        try:
            history = message_history(session, message_id)
        except MessageNotFound as exc:
            fail(str(exc), 1)
    msg, attempts, events = history.message, history.attempts, history.events
    lines = [
        f"message {msg.id}" + (f" (campaign {msg.campaign_id})" if msg.campaign_id else " (ad-hoc)"),
        f"  status:        {msg.status}",
        f"  phone:         {msg.phone}  from phone_number_id {msg.phone_number_id}",
        f"  attempts:      {msg.attempts} (429s not counted)",
        f"  vendor id:     {_fmt(msg.vendor_id)}",
        f"  messageId:     {_fmt(msg.vendor_message_id)}",
        f"  vendor status: {_fmt(msg.vendor_status)}   delivery: {_fmt(msg.delivery_status)}",
        f"  created:       {_fmt(msg.created_at)}",
        f"  queued:        {_fmt(msg.queued_at)}   not before: {_fmt(msg.not_before)}",
        f"  sent:          {_fmt(msg.sent_at)}",
    ]
    if msg.expires_at or msg.require_open_window:
        lines.append(f"  gate:          expires {_fmt(msg.expires_at)}; require open window: {'yes' if msg.require_open_window else 'no'}")
    if msg.last_error_code or msg.last_error_message:
        lines.append(f"  last error:    {_fmt(msg.last_error_code)}: {_fmt(msg.last_error_message)} (request {_fmt(msg.last_request_id)})")
    if msg.failure_class:   # a `failed` status webhook after the vendor accepted it (worker.failures)
        lines.append(f"  late failure:  {_fmt(msg.failure_code)} {msg.failure_class}: {_fmt(msg.delivery_error)}")
    if msg.idempotency_key:
        lines.append(f"  idempotency key: {msg.idempotency_key}")
    lines_of_trail = trail(history)
    lines.append(f"  history ({len(attempts)} attempts, {len(events)} status changes):")
    lines += [f"    {at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  {text}" for at, text in lines_of_trail] or ["    (none)"]
    click.echo("\n".join(lines))
