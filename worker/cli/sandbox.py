"""`buttoncast sandbox` (and `python -m worker.sandbox`): run the Awal sandbox in the foreground.

The first line on stdout is the bound base URL (flushed), so a parent process can read it; with
`--port 0` the port is a free one. The HMAC secret is never printed.
"""

from __future__ import annotations

import sys

import click

from worker.errors import ConfigError
from worker.sandbox.config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_DOMAIN,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_SECRET,
    DELIVERED_AFTER_S,
    LATE_FAIL_CODES,
    READ_AFTER_S,
    STALL_S,
    SandboxConfig,
)
from worker.sandbox.runner import SandboxServer

_share = click.FloatRange(0.0, 1.0)


def _pairs(what: str):  # noqa: ANN202 - a click callback
    """CODE:VALUE options (repeatable) as a list of (code, value), the code checked."""
    def parse(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[str, str]]:
        pairs = []
        for value in values:
            code, sep, rest = value.partition(":")
            if not sep or not rest.strip() or code.strip() not in LATE_FAIL_CODES:
                raise click.BadParameter(f"{value!r}: write CODE:{what} with CODE one of {', '.join(LATE_FAIL_CODES)}",
                                         param=param)
            pairs.append((code.strip(), rest.strip()))
        return pairs
    return parse


def _text_shares(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    """TEXT:SHARE options (repeatable) as {text: share}; the text may hold colons (split at the last)."""
    shares: dict[str, float] = {}
    for value in values:
        text, sep, share = value.rpartition(":")
        try:
            number = float(share)
        except ValueError:
            number = -1.0
        if not sep or not text or not 0.0 <= number <= 1.0:
            raise click.BadParameter(f"{value!r}: write TEXT:SHARE with SHARE between 0 and 1, e.g. '20% off:0.6'",
                                     param=param)
        shares[text] = number
    return shares


@click.command("sandbox")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="bind address; anything but loopback also needs --allow-remote")
@click.option("--allow-remote", is_flag=True, envvar="SANDBOX_ALLOW_REMOTE",
              help="allow a non-loopback --host (default: $SANDBOX_ALLOW_REMOTE); the sandbox's secrets are known")
@click.option("--admin-token", envvar="SANDBOX_ADMIN_TOKEN", default=None,
              help="/_sandbox/* then wants it in X-Sandbox-Admin-Token from every caller; without it only "
                   "loopback callers get in (default: $SANDBOX_ADMIN_TOKEN); never printed")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="0 = a free port")
@click.option("--secret", envvar="AWAL_HMAC_SECRET", default=DEFAULT_SECRET, show_default=False,
              help="HMAC secret (default: $AWAL_HMAC_SECRET, else a sandbox default); never printed")
@click.option("--client-id", default=DEFAULT_CLIENT_ID, show_default=True)
@click.option("--domain", default=DEFAULT_DOMAIN, show_default=True)
@click.option("--path-prefix", default="", help="serve under this prefix, e.g. /api/v1")
@click.option("--phone-number-id", "phone_number_ids", multiple=True,
              help="allowed sender ids (repeatable); others get 404. Default: any")
@click.option("--rate-limit", default=None, help="e.g. 50/s or 1000/h; default unlimited")
@click.option("--latency-ms", type=float, default=0.0, show_default=True)
@click.option("--error-rate-500", type=_share, default=0.0, show_default=True)
@click.option("--error-rate-503", type=_share, default=0.0, show_default=True)
@click.option("--timeout-rate", type=_share, default=0.0, show_default=True,
              help="share recorded as sent, then left unanswered")
@click.option("--drop-rate", type=_share, default=0.0, show_default=True,
              help="share of connections closed before the request is read")
@click.option("--stall-s", type=float, default=STALL_S, show_default=True)
@click.option("--fail-phone-prefix", "fail_phone_prefixes", multiple=True,
              help="phones starting with this get 400 invalid_phone_number (repeatable)")
@click.option("--seed", type=int, default=None, help="seed for fault decisions")
@click.option("--webhook-url", default=None)
@click.option("--webhook-secret", envvar="AWAL_WEBHOOK_SECRET", default=None,
              help="signs webhook events (default: $AWAL_WEBHOOK_SECRET); never printed")
@click.option("--delivered-after-s", type=float, default=DELIVERED_AFTER_S, show_default=True)
@click.option("--read-after-s", type=float, default=READ_AFTER_S, show_default=True)
@click.option("--read-share", type=_share, default=1.0, show_default=True)
@click.option("--tap-share", type=_share, default=0.0, show_default=True)
@click.option("--tap-share-by-text", "tap_share_by_text", multiple=True, callback=_text_shares,
              help="TEXT:SHARE, e.g. '20% off:0.6': a message whose body contains TEXT is tapped with SHARE "
                   "instead of --tap-share (repeatable; the longest matching TEXT wins)")
@click.option("--tap-button-id", default=None)
@click.option("--late-fail-rate", "late_fail_rates", multiple=True, callback=_pairs("SHARE"),
              help="CODE:SHARE, e.g. 131047:0.05: that share of accepted messages gets a late `failed` webhook "
                   "with the vendor code (repeatable)")
@click.option("--late-fail-prefix", "late_fail_prefixes", multiple=True, callback=_pairs("PREFIX"),
              help="CODE:PREFIX, e.g. 131050:96655: phones starting with PREFIX always fail late with CODE (repeatable)")
@click.option("--stop-reply-rate", type=_share, default=0.0, show_default=True,
              help="share of delivered messages whose recipient replies STOP (an inbound text webhook)")
@click.option("--stop-reply-prefix", "stop_reply_prefixes", multiple=True,
              help="phones starting with this always reply STOP (repeatable)")
def sandbox_command(**options: object) -> None:
    """Run a local stand-in for the Awal Chat API (send button messages, faults, webhooks)."""
    try:
        options["late_fail_rates"] = {code: float(share) for code, share in options["late_fail_rates"]}  # type: ignore[union-attr]
    except ValueError as exc:
        raise click.BadParameter(f"--late-fail-rate: {exc}") from None
    options["late_fail_prefixes"] = {prefix: code for code, prefix in options["late_fail_prefixes"]}  # type: ignore[union-attr]
    for name in ("fail_phone_prefixes", "stop_reply_prefixes"):
        options[name] = tuple(options[name])  # type: ignore[arg-type]
    options["phone_number_ids"] = tuple(options["phone_number_ids"]) or None  # type: ignore[arg-type]
    try:
        config = SandboxConfig(**options)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None

    def announce(base_url: str) -> None:
        click.echo(base_url)
        sys.stdout.flush()
        click.echo(
            f"awal sandbox on {base_url} (client id {config.client_id!r}, domain {config.domain!r},"
            f" rate limit {config.rate_limit or 'none'}); admin at /_sandbox/", err=True
        )

    SandboxServer(config).serve_forever(announce)
