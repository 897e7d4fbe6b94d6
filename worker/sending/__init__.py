"""The send path: from a stored message to the vendor's answer, recorded once.

- enqueue.py      validate, store and publish one ad-hoc message (`buttoncast send`, the API, `enqueue_message`)
- idempotency.py  the API's Idempotency-Key records around enqueue
- publish.py      hand message ids to the broker (the database row is written first)
- gate.py         the claim: consent, the frequency cap and the campaign's state, in one statement
- send.py         the send task's body: claim, pace, sign and POST, record (its state machine)
- client.py       the Awal client: HMAC-signed POSTs, rate-limit-aware retry (tenacity)
- store.py        recording outcomes: attempt rows, message rows, the campaign's streaks, the hook outbox
- journal.py      outcomes the database refused, kept until the sweep records them
- broker_epoch.py noticing a broker that lost its queues, and republishing
- history.py      reading messages back (one with its audit trail; keyset pages)
- tasks.py        the Celery tasks of the send side (thin shells around the functions above)

Layer: the core. May import the plumbing (`worker.*` modules), `worker.ratelimit`, and the other core
packages (`worker.contacts`, `worker.hooks`, `worker.webhooks`, `worker.access`); never `scheduler`
or a face.
"""
