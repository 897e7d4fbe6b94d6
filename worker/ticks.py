"""A periodic task's body, run so that an outage fails the tick and says so once.

When the broker or database is down a tick fails and logs it once; the next tick that works says it
recovered. Nothing is marked sent or failed because of an outage. Every beat-driven task (the
dispatcher, the sweep, retention, hook delivery) runs its tick through here.
"""

from __future__ import annotations

import logging

from worker.runtime import get_runtime

log = logging.getLogger("buttoncast.scheduler")
_failing: dict[str, bool] = {}


def run_tick(name: str, tick) -> dict | None:  # noqa: ANN001
    try:
        result = tick(get_runtime())
    except Exception as exc:  # noqa: BLE001 - an outage fails the tick, not the process
        if not _failing.get(name):
            log.error("%s tick failed (%s: %s); retrying every tick, logged once until it recovers",
                      name, type(exc).__name__, exc)
        _failing[name] = True
        return None
    if _failing.pop(name, False):
        log.warning("%s tick recovered", name)
    return result.__dict__ if result is not None else None
