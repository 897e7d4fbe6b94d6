"""kombu's Redis transport, with one synchronous Redis client per channel instead of one per call.

kombu's Redis channel builds a new `redis.Redis` for every synchronous use (`conn_or_acquire`):
twice per task in a worker, once to note the delivery as unacknowledged and once to acknowledge
it. A `redis.Redis` is cheap to use but not to build (its response-callback table is filled key by
key): in a threads worker that building was ~7 % of the worker's CPU (py-spy, bench/throughput.py).
The client built here uses the channel's own connection pool and is rebuilt whenever kombu
replaces that pool (after a fork or a reconnect), so connections, timeouts and errors are exactly
kombu's; only the wrapper object is kept. redis-py clients are safe to share between threads.

Installed for `redis://` brokers by worker.celery_app (`install`); `rediss://` keeps kombu's stock transport, whose
TLS defaults are chosen from the scheme.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _create_client(self, asynchronous: bool = False):  # noqa: ANN202 - a redis.Redis
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self.__dict__.get("_buttoncast_sync_client")
        if cached is None or cached[0] is not pool:
            cached = (pool, super()._create_client())
            self.__dict__["_buttoncast_sync_client"] = cached
        return cached[1]


class Transport(kombu_redis.Transport):
    Channel = Channel


#: where kombu finds this transport
TRANSPORT = f"{__name__}:Transport"


def install() -> None:
    """Make `redis://` URLs use this transport, under kombu's own alias, so URLs, banners and
    `as_uri()` still read `redis://` (kombu's registry of transport aliases is meant for this)."""
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES["redis"] = TRANSPORT
