"""Only one beat ticks: a lease in Redis, taken before the first tick and renewed while it runs.

A second `buttoncast beat` (or `celery -A worker.celery_app beat`) waits, saying so once, and takes
over when the first stops renewing: after BEAT_LOCK_TTL_S if it was killed. Two beats would not
break anything (dispatch and sweep ticks are safe to overlap), but they would double the ticks.
"""

from __future__ import annotations

import atexit
import logging
import threading
import uuid

import redis
from celery import Celery, signals

log = logging.getLogger("buttoncast.beat")
LOCK_KEY = "buttoncast:beat-lock"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


class BeatLease:
    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        self._client = client
        self._ttl_ms = int(ttl_s * 1000)
        self._token = uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)
        self._stop = threading.Event()

    def acquire(self, *, poll_s: float) -> None:
        """Block until this process holds the lease."""
        said = False
        while not self._client.set(LOCK_KEY, self._token, nx=True, px=self._ttl_ms):
            if not said:
                log.warning("another beat holds %s; waiting to take over (at most BEAT_LOCK_TTL_S after it stops)", LOCK_KEY)
                said = True
            if self._stop.wait(poll_s):
                return
        log.info("beat lease taken: this is the one beat")
        threading.Thread(target=self._keep, args=(self._ttl_ms / 3000,), name="beat-lease", daemon=True).start()

    def _keep(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                if not self._renew(keys=[LOCK_KEY], args=[self._token, self._ttl_ms]):
                    log.error("beat lease lost (Redis restarted or the lease expired); taking it again")
                    self._client.set(LOCK_KEY, self._token, nx=True, px=self._ttl_ms)
            except redis.RedisError as exc:
                log.warning("could not renew the beat lease: %s", exc)

    def release(self) -> None:
        self._stop.set()
        try:
            if self._client.get(LOCK_KEY) == self._token.encode():
                self._client.delete(LOCK_KEY)
        except redis.RedisError:
            pass


def hold_beat_lease(app: Celery, redis_url: str, ttl_s: float) -> None:
    """Connect the lease to this app's (non-embedded) beat."""

    @signals.beat_init.connect(weak=False)
    def _take(sender: object = None, **_: object) -> None:
        if getattr(sender, "app", None) is not app:
            return
        lease = BeatLease(redis.Redis.from_url(redis_url, socket_timeout=5), ttl_s)
        atexit.register(lease.release)  # a clean stop hands over at once; a kill after the TTL
        lease.acquire(poll_s=max(0.5, ttl_s / 10))


def lease_left_s(client: redis.Redis) -> float | None:
    """Seconds left on the beat lease (it is renewed every third of BEAT_LOCK_TTL_S while a beat
    ticks), or None when no beat holds it: what the console's health page shows."""
    left_ms = client.pttl(LOCK_KEY)
    return left_ms / 1000 if left_ms and left_ms > 0 else None
