"""Prometheus metrics a worker exposes (METRICS_HOST:METRICS_PORT, default 127.0.0.1:9808; port 0 disables).

buttoncast_messages_total{outcome}      messages by outcome: sent, failed, unknown, requeued, deferred, skipped, paused
buttoncast_rate_limited_total           429 answers from the vendor
buttoncast_send_seconds                 histogram of one HTTP request to the vendor
buttoncast_rate_wait_seconds            histogram of time spent waiting for a rate slot
buttoncast_queue_depth{campaign,status} messages pending/queued/sending per campaign (set by the sweep)
buttoncast_late_failures_total{class}   `failed` status webhooks applied, by failure class (worker.failures)
buttoncast_auto_pauses_total{rule}      campaigns paused by the late-failure breaker: quality_risk, late_failure_rate
buttoncast_rate_blocks_total            429 blocks this process shared with every worker (no slot until Retry-After)
buttoncast_outcome_batch_size           histogram of outcomes written per group commit (worker.sending.outcomes)
buttoncast_outcome_commit_seconds       histogram of one group commit: the statement and its commit
buttoncast_rate_limit_per_second        the account's limit (AWAL_RATE_LIMIT) per second, set when a worker starts
buttoncast_rate_pace_per_second         what the limiter paces to: that limit less AWAL_RATE_HEADROOM, per second
buttoncast_queue_lag_seconds{status}    age of the oldest due queued / pending message of a running campaign (the sweep)
buttoncast_sweep_timestamp_seconds      unix time of this process's latest sweep: whose depth and lag are current
buttoncast_worker_lost_total            `sending` messages the sweep made `unknown`: their worker was lost mid-request
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from worker.settings import METRICS_HOST

MESSAGES = Counter("buttoncast_messages_total", "Send task outcomes", ["outcome"])
RATE_LIMITED = Counter("buttoncast_rate_limited_total", "HTTP 429 answers from the vendor")
SEND_SECONDS = Histogram(
    "buttoncast_send_seconds", "One HTTP request to the vendor",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_WAIT_SECONDS = Histogram(
    "buttoncast_rate_wait_seconds", "Time a worker slept for a rate slot",
    buckets=(0, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10),
)
LATE_FAILURES = Counter("buttoncast_late_failures", "Late failures (failed status webhooks) by class", ["class"])
AUTO_PAUSES = Counter("buttoncast_auto_pauses", "Campaigns paused by the late-failure breaker", ["rule"])
RATE_BLOCKS = Counter("buttoncast_rate_blocks_total", "429 blocks shared with every worker")
OUTCOME_BATCH_SIZE = Histogram(
    "buttoncast_outcome_batch_size", "Outcomes written per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
OUTCOME_COMMIT_SECONDS = Histogram(
    "buttoncast_outcome_commit_seconds", "One group commit of outcomes: its statement and commit",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
QUEUE_DEPTH = Gauge("buttoncast_queue_depth", "Messages not yet final, per campaign and status", ["campaign", "status"])
RATE_LIMIT_PER_S = Gauge("buttoncast_rate_limit_per_second", "The account's rate limit (AWAL_RATE_LIMIT), per second")
RATE_PACE_PER_S = Gauge("buttoncast_rate_pace_per_second",
                        "What the limiter paces to: the limit less AWAL_RATE_HEADROOM, per second")
# Every worker runs a sweep now and then and keeps what it measured: the dashboard reads depth and lag
# from the process whose sweep is the latest (SWEEP_TIMESTAMP), not a stale copy on another worker.
QUEUE_LAG = Gauge("buttoncast_queue_lag_seconds",
                  "Seconds the oldest due message has waited: queued (to be sent) or pending (to be dispatched)",
                  ["status"])
SWEEP_TIMESTAMP = Gauge("buttoncast_sweep_timestamp_seconds", "Unix time of this process's latest sweep")
WORKER_LOST = Counter("buttoncast_worker_lost", "Messages left `sending` by a lost worker, made `unknown` by the sweep")

_started: set[tuple[str, int]] = set()
log = logging.getLogger("buttoncast.metrics")


def serve_metrics(port: int, host: str = METRICS_HOST, setting: str = "METRICS_PORT") -> bool:
    """Start the /metrics HTTP endpoint on host:port once per process; port 0 disables.

    False if the port is taken, with a WARNING naming the address and `setting` (issue 25: a port in
    use left a process without /metrics, silently). The process goes on without metrics: a scrape
    port never stops sending. The host is loopback unless told otherwise (METRICS_HOST): the
    endpoint has no authentication, so it is bound to every interface only where a scraper needs it.
    """
    if port <= 0 or (host, port) in _started:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("no /metrics: %s:%d (%s=%d) cannot be served (%s: %s); this process runs on without metrics. "
                    "Free the port, or set %s to a free one (0 turns metrics off)",
                    host, port, setting, port, type(exc).__name__, exc.strerror or exc, setting)
        return False
    _started.add((host, port))
    return True
