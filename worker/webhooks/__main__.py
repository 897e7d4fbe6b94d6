"""`python -m worker.webhooks --port 0`: the receiver without the `buttoncast` entry point (bench, demo)."""

from worker.cli.webhooks import webhooks_command

if __name__ == "__main__":
    webhooks_command(prog_name="python -m worker.webhooks")
