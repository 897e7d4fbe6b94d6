"""`python -m worker.sandbox [options]`: the same as `buttoncast sandbox`."""

from worker.cli.sandbox import sandbox_command

if __name__ == "__main__":
    sandbox_command(prog_name="python -m worker.sandbox")
