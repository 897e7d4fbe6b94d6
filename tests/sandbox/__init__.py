"""worker/sandbox/: the vendor stand-in."""
