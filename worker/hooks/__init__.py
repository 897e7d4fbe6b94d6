"""Outbound event webhooks ("hooks") to the applications that integrate with buttoncast.

An event is written to the outbox (`hook_outbox`, one row per subscribed endpoint) in the same
transaction as the change it reports; a periodic task on its own queue (buttoncast.hooks) POSTs
each row (one lane per endpoint), signed Stripe-style (`Buttoncast-Signature: t=<unix>,v1=<hex>`),
with exponential backoff for up to HOOKS_RETRY_MAX_S, then dead-letters it. Modules:

- events.py     the event names and the JSON body a receiver gets
- models.py     hook_endpoints, hook_subscriptions, hook_outbox
- outbox.py     writing outbox rows (and the per-process subscription cache the send path reads)
- signing.py    per-endpoint secrets (derived from HOOKS_SIGNING_KEY) and the signature header
- verify.py     the reference verifier a receiver can use (no buttoncast imports)
- targets.py    where a hook may POST (public addresses over https; HOOKS_ALLOWED_HOSTS)
- transport.py  guarded connections (checked on the address connected to) and the whole-POST deadline
- delivery.py   claiming due rows per endpoint lane, POSTing them, recording each outcome
- service.py    add / list / remove / redeliver (what the CLI and the API call)
- tasks.py      the Celery task
"""
