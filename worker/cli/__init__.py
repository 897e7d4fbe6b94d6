"""The `buttoncast` command. Each command lives in the module of its concept; this file wires them."""

from __future__ import annotations

import click

from worker.cli.api import api_command, apikey_group
from worker.cli.campaigns import campaign_group
from worker.cli.contacts import contacts_group
from worker.cli.demo import demo_command
from worker.cli.hooks import hooks_group
from worker.cli.ops import beat_command, db_group, limits_command, run_command, worker_command
from worker.cli.prune import prune_command
from worker.cli.retry import retry_command
from worker.cli.sandbox import sandbox_command
from worker.cli.segments import segment_group
from worker.cli.send import message_group, send_command
from worker.cli.users import user_group
from worker.cli.webhooks import webhooks_command


@click.group()
@click.version_option(package_name="buttoncast")
def main() -> None:
    """buttoncast: bulk WhatsApp button messages through the Awal Chat API."""


for command in (
    send_command, message_group, campaign_group, retry_command, worker_command, beat_command, run_command,
    db_group, limits_command, webhooks_command, sandbox_command, demo_command,
    api_command, apikey_group, prune_command, contacts_group, user_group, hooks_group,
    segment_group,
):
    main.add_command(command)

