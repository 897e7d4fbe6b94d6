"""worker/cli/: the commands, the demo, the embedded mode."""
