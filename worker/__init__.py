"""buttoncast: bulk WhatsApp button messages through the Awal Chat API.

One package per layer, top to bottom (README, "Layout"; tests/test_layout.py holds it):
`worker.cli` (every command); the faces `worker.api`, `worker.console` and `worker.asgi`;
`scheduler`; the core `worker.sending`, `worker.contacts`, `worker.webhooks`, `worker.hooks`,
`worker.access`, `worker.sandbox`; `worker.ratelimit` and the plumbing (the modules directly in
`worker/`). A module imports only from its own layer or below.

Who owns the transaction: a service function that writes takes the `Runtime` and owns its
transaction; the CLI, the API and the console call it and never open a write transaction
themselves. A function that takes a `Session` is a step inside its caller's transaction (a few
steps that commit in batches, imports and requeues, take a sessionmaker). Reads: a face opens a
read session (`runtime.read_sessions()`) and passes it to the read functions.

`enqueue_message` is the documented entry point for applications that share the database.
"""

from __future__ import annotations

from typing import Any


def enqueue_message(*args: Any, **kwargs: Any) -> int:
    """Validate, store and enqueue one button message; returns its id (see worker.sending.enqueue)."""
    from worker.sending.enqueue import enqueue_message as _enqueue

    return _enqueue(*args, **kwargs)


__all__ = ["enqueue_message"]
