"""The `buttoncast` command. Each command lives in the module of its concept; this file wires them."""

from __future__ import annotations

import click

from worker.cli_ops import beat_command, db_group, limits_command, run_command, worker_command
from worker.cli_send import message_group, send_command


@click.group()
@click.version_option(package_name="buttoncast")
def main() -> None:
    """buttoncast: bulk WhatsApp button messages through the Awal Chat API."""


for command in (send_command, message_group, worker_command, beat_command, run_command, db_group, limits_command):
    main.add_command(command)


def _optional(module: str, attr: str) -> None:
    import importlib

    main.add_command(getattr(importlib.import_module(module), attr))


for _module, _attr in (
    ("worker.sandbox.cli", "sandbox_command"),
    ("worker.webhooks.cli", "webhooks_command"),
    ("scheduler.cli_retry", "retry_command"),
):
    _optional(_module, _attr)


if __name__ == "__main__":
    main()
