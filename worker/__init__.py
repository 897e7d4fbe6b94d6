"""buttoncast worker side: the Awal client, storage, Celery tasks and the CLI.

`enqueue_message` is the documented entry point for applications that share the database.
"""

from __future__ import annotations

from typing import Any


def enqueue_message(*args: Any, **kwargs: Any) -> int:
    """Validate, store and enqueue one button message; returns its id (see worker.sending.enqueue)."""
    from worker.sending.enqueue import enqueue_message as _enqueue

    return _enqueue(*args, **kwargs)


__all__ = ["enqueue_message"]
