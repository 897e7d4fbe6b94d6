"""`python -m worker.cli ...`: the same as the `buttoncast` command."""

from worker.cli import main

main()
