"""worker/webhooks/: the vendor-webhook receiver, replies, late failures and the breaker."""
