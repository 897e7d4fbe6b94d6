"""worker/hooks/: outbound events to applications."""
