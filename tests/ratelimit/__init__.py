"""worker/ratelimit/: the shared limiter."""
