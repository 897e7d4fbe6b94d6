"""One settings object, built once from the environment and passed into constructors.

Defaults are named constants with their unit in the name. No other module reads `os.environ`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Mapping

from worker.errors import ConfigError
from worker.phone import parse_default_country

DEFAULT_DATABASE_URL = "sqlite:///buttoncast.db"
EMBEDDED_BROKER_URL = "memory://"
DEFAULT_RATE_LIMIT = "1000/h"          # documented plan: Send Button Message, 1000 per hour
DEFAULT_RATE_BURST = 1                 # requests that may go back to back before pacing starts
RATE_HEADROOM = 0.02                   # share of each vendor window kept free at its end (20 ms of 1 s): a late request stays in its window
SEND_CONNECT_TIMEOUT_S = 3.05
SEND_READ_TIMEOUT_S = 15.0
SEND_RETRY_ATTEMPTS = 3                # in-client tenacity tries for transient failures (seconds)
SEND_RETRY_MAX_WAIT_S = 2.0
MESSAGE_MAX_ATTEMPTS = 8               # retry budget per message across requeues (429s don't count)
REQUEUE_BACKOFF_BASE_S = 15.0          # transient failure -> queued, not before base * 2**n (capped)
REQUEUE_BACKOFF_MAX_S = 900.0
RATE_WAIT_MAX_S = 5.0                  # longer waits for a rate slot go back to the database
WORKER_CONCURRENCY = 64              # threads per worker process: flat from 0 to 200 ms vendor latency (bench/throughput.py)
OUTCOME_BATCH_MAX = 64               # sent outcomes one group commit writes at most (worker.sending.outcomes)
OUTCOME_BATCH_DELAY_S = 0.005        # how long a group commit waits for more outcomes after the first (bench/throughput.py: 0, 2, 5 ms)
DATABASE_POOL_SIZE = 16              # Postgres connections a process keeps; threads hold one per statement, not per task
WORKER_PROCESSES = 0                 # worker processes `buttoncast worker` starts; 0: one per core it may use
DISPATCH_INTERVAL_S = 5.0
DISPATCH_BATCH_SIZE = 1000
DISPATCH_LOOKAHEAD_TICKS = 3           # enqueue what the rate limit can send in this many ticks
DISPATCH_MIN_PER_TICK = 1              # always let at least this many through per tick
SWEEP_INTERVAL_S = 30.0
QUEUED_TASK_TIMEOUT_S = 600.0          # a queued message whose task has not run for this long is re-enqueued
SENDING_TIMEOUT_S = 120.0              # a message `sending` for this long lost its worker -> unknown
AUTO_PAUSE_CONSECUTIVE_FAILURES = 25
AUTO_PAUSE_LATE_WINDOW = 200           # late-failure breaker: the campaign's last this many sent messages...
AUTO_PAUSE_LATE_FAILURE_RATE = 0.2     # ...pause it when more than this share of them failed late (0: off)
WEBHOOK_METRICS_PORT = 9809            # Prometheus /metrics of `buttoncast webhooks` (0 disables)
AUTO_PAUSE_CONSECUTIVE_UNKNOWN = 10         # ambiguous outcomes (unknown) without a send that pause a campaign
RECORD_RETRY_MAX_S = 60.0              # a worker retries writing a sent result for this long
BEAT_LOCK_TTL_S = 30.0                 # a second beat takes over this long after the first stops renewing
BROKER_STALL_EXIT_S = 60.0             # a worker whose consumer stays off the broker this long exits (0: never)
WEBHOOK_PATH = "/webhooks/awal"
WEBHOOK_MAX_BODY_BYTES = 1024 * 1024   # a larger declared body is refused with 413 before it is read
WEBHOOK_CONNECTION_LIMIT = 1000        # open client connections the receiver holds; more wait in the backlog
WEBHOOK_CLIENT_TIMEOUT_S = 10          # a connection silent this long (idle or mid-request) is closed
WEBHOOK_REQUEST_DEADLINE_S = 10.0      # a request's headers and body must all arrive within this long of its first byte
WEBHOOK_MATCH_WINDOW_S = 86400.0       # unmatched webhook events younger than this are retried by the sweep
RETENTION_DAYS = 30                    # attempts, message_events, webhook_events older than this are pruned (0: keep)
AUDIT_RETENTION_DAYS = 365             # audit_events older than this are pruned, creations kept (0: keep)
CONSENT_HISTORY_RETENTION_DAYS = 730   # contact_events older than this are pruned, each contact's newest kept (0: keep)
METRICS_PORT = 9808
METRICS_HOST = "127.0.0.1"             # loopback: only this machine scrapes; compose sets 0.0.0.0
LOG_FORMAT = "text"
API_MAX_BODY_BYTES = 1_048_576         # largest JSON request body the HTTP API reads (413 above)
API_MAX_UPLOAD_BYTES = 268_435_456     # largest multipart upload (a recipients CSV: ~40 MB per 1,000,000 rows)
CONSOLE_SESSION_TTL_S = 8 * 3600.0     # a console login lasts this long
CONSOLE_SESSION_IDLE_S = 30 * 60.0     # ... unless it is not used for this long (sliding)
CONSOLE_COOKIE_SECURE = "auto"         # auto: Secure when the request came over HTTPS (or a trusted proxy says so)
CONSOLE_COOKIE_SECURE_CHOICES = ("auto", "always", "never")
CONSOLE_TIME_ZONE = "UTC"              # the zone of times on console pages that are not one campaign's (IANA name)
CONSOLE_LOGIN_FREE_FAILURES = 5       # wrong passwords for one account from one address before each next try waits
CONSOLE_LOGIN_ADDRESS_FREE_FAILURES = 20   # ... and from one address over every account tried
CONSOLE_LOGIN_DELAY_S = 2.0            # the first wait; it doubles with each further failure ...
CONSOLE_LOGIN_DELAY_MAX_S = 900.0      # ... up to this (15 minutes): slowed, never locked
CONSOLE_LOGIN_FORGET_S = 86400.0       # failures older than this are forgotten (and their rows deleted)
API_KEY_CACHE_S = 2.0                  # an API process trusts a key it verified for this long (a revoke waits as long)
API_AUTH_FAILURES_PER_MINUTE = 30      # failed API authentications one client address may make (then 429; 0: no limit)
DEFAULT_COUNTRY_CODE = None               # region ("SA") or calling code ("966") for trunk-0 national numbers
HOOKS_TIMEOUT_S = 10.0                 # outbound hook: deadline of one whole POST (resolve, connect, send, read the answer)
HOOKS_RETRY_MAX_S = 86400.0            # a hook event still failing this long after it was written is dead-lettered
HOOKS_BACKOFF_BASE_S = 10.0            # failed delivery -> next try after base * 2**(attempts-1) ...
HOOKS_BACKOFF_MAX_S = 3600.0           # ... capped at this
HOOKS_INTERVAL_S = 2.0                 # delivery tick (beat, queue buttoncast.hooks)
HOOKS_BATCH_SIZE = 100                 # outbox rows one tick claims and delivers
HOOKS_CONCURRENCY = 4                  # POSTs in flight per process (its own threads: never the send threads)
HOOKS_MAX_ENDPOINTS = 20               # hook endpoints `hooks add` accepts in all
HOOKS_ALLOW_HTTP = False               # plain http:// hook URLs (https only unless the host is in HOOKS_ALLOWED_HOSTS)
HOOKS_ALLOWED_HOSTS = ""               # hosts a hook may reach although they resolve to loopback/private addresses

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$", re.I)
_UNIT_S = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


@dataclass(frozen=True)
class RateLimit:
    """`limit` requests per `period_s` seconds, e.g. "1000/h" or "80/s" (also "100/10s")."""

    limit: float
    period_s: float

    @classmethod
    def parse(cls, text: str, setting: str = "AWAL_RATE_LIMIT") -> "RateLimit":
        match = _RATE_RE.match(text or "")
        if not match:
            raise ConfigError(
                f"{setting}={text!r} is not a rate; write requests per period, e.g. 1000/h, 80/s, 100/10s"
            )
        count, multiplier, unit = match.groups()
        limit = float(count)
        period = float(multiplier or 1) * _UNIT_S[unit.lower()]
        if limit <= 0 or period <= 0:
            raise ConfigError(f"{setting}={text!r} must allow at least one request per period")
        return cls(limit=limit, period_s=period)

    @property
    def per_second(self) -> float:
        return self.limit / self.period_s

    def __str__(self) -> str:
        count = int(self.limit) if self.limit == int(self.limit) else self.limit
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if self.period_s == seconds:
                return f"{count}/{unit}"
        return f"{count}/{self.period_s:g}s"


# Consent (worker.contacts.service, worker.sending.gate, worker.webhooks.apply). Keywords match a whole inbound text,
# trimmed and case-insensitive; button ids match a tapped reply button's id exactly.
OPT_OUT_KEYWORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "إيقاف", "ايقاف", "إلغاء", "الغاء", "توقف")
OPT_OUT_BUTTON_IDS = ("stop", "unsubscribe", "opt_out")
OPT_IN_KEYWORDS = ("START", "UNSTOP", "ابدأ", "اشتراك")
MARKETING_FREQUENCY_CAP = ""           # e.g. "2/7d": at most 2 campaign messages per contact per 7 days; "" = off

_CAP_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(h|hour|d|day|w|week)\s*$", re.I)
_CAP_UNIT_S = {"h": 3600, "hour": 3600, "d": 86400, "day": 86400, "w": 604800, "week": 604800}


@dataclass(frozen=True)
class FrequencyCap:
    """At most `count` campaign messages sent to one contact per `period_s` seconds, e.g. "2/7d"."""

    count: int
    period_s: float

    @classmethod
    def parse(cls, text: str, setting: str = "MARKETING_FREQUENCY_CAP") -> "FrequencyCap | None":
        if not (text or "").strip() or text.strip().lower() == "off":
            return None
        match = _CAP_RE.match(text)
        if not match:
            raise ConfigError(f"{setting}={text!r} is not a cap; write messages per period, e.g. 2/7d, 1/24h, 3/1w (or leave it empty)")
        count, multiplier, unit = match.groups()
        period = int(multiplier or 1) * _CAP_UNIT_S[unit.lower()]
        if int(count) < 1 or period <= 0:
            raise ConfigError(f"{setting}={text!r} must allow at least one message per period")
        return cls(count=int(count), period_s=float(period))

    def __str__(self) -> str:
        days = self.period_s / 86400
        return f"{self.count}/{days:g}d" if days == int(days) else f"{self.count}/{self.period_s / 3600:g}h"


def _words(env: Mapping[str, str], name: str, default: tuple[str, ...], *, fold: bool) -> frozenset[str]:
    """A comma-separated list (trimmed; casefolded when `fold`); unset means the default, empty means none."""
    raw = env.get(name)
    items = default if raw is None else tuple(raw.split(","))
    return frozenset(w.strip().casefold() if fold else w.strip() for w in items if w.strip())


class Secret:
    """A credential: its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number")
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={env.get(name)!r} is not true or false")


_HOST_RE = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def _hosts(env: Mapping[str, str], name: str, default: str) -> frozenset[str]:
    """Comma-separated host names or IP addresses (no scheme, port or path), normalised: lower case, no
    trailing dot, IPv6 without brackets and in its compressed form."""
    hosts = set()
    for raw in (env.get(name, default) or "").split(","):
        host = raw.strip().lower().rstrip(".")
        if not host:
            continue
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            hosts.add(str(ipaddress.ip_address(bare)))
            continue
        except ValueError:
            pass
        if not _HOST_RE.match(host):
            raise ConfigError(f"{name}: {raw.strip()!r} is not a host name or an IP address (no scheme, port or path)")
        hosts.add(host)
    return frozenset(hosts)


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={env.get(name)!r} is not one of {', '.join(choices)}")
    return value


def _time_zone(env: Mapping[str, str], name: str, default: str) -> str:
    """An IANA time zone name (Asia/Riyadh, UTC), as the zone database spells it."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    value = (env.get(name) or default).strip()
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name}={env.get(name)!r} is not an IANA time zone (e.g. Asia/Riyadh, Europe/Berlin, UTC)") from None
    return value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value >= 0.5:
        raise ConfigError(f"{name}={value:g} must be below 0.5 (a share of the limit, e.g. 0.02)")
    return value


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value > 1:
        raise ConfigError(f"{name}={value:g} must be a share between 0 and 1 (e.g. 0.2)")
    return value


_URL_JOIN_RE = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")   # celery's failover list: url;url
_QUERY_SECRET_RE = re.compile(r"((?:^|&)(?:password|passwd|pass|token)=)[^&#]*", re.I)
MASK = "***"


def mask_url(url: str) -> str:
    """`url` with any password replaced by ***: `postgresql+psycopg://user:***@host/db`.

    Masks the password of the userinfo (up to the last '@', so a password holding '/', '?' or '#'
    does not leak), `password=` style query parameters, and every URL of a `url;url` failover list.
    A string that is not a URL comes back unchanged.
    """
    return ";".join(_mask_one(part) for part in _URL_JOIN_RE.split(url))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, tail = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:{MASK}@{tail}"
    head, question, query = rest.partition("?")
    if question:
        rest = head + question + _QUERY_SECRET_RE.sub(lambda m: m.group(1) + MASK, query)
    return scheme + sep + rest


def normalize_database_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3, the driver buttoncast ships with."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = EMBEDDED_BROKER_URL
    redis_url: str | None = None
    awal_base_url: str | None = None
    awal_client_id: str | None = None
    awal_domain: str | None = None
    awal_hmac_secret: Secret = field(default_factory=lambda: Secret(""))
    awal_phone_number_id: str | None = None
    awal_webhook_secret: Secret = field(default_factory=lambda: Secret(""))
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit.parse(DEFAULT_RATE_LIMIT))
    rate_limit_configured: bool = False    # AWAL_RATE_LIMIT was given (else `run` may ask a local sandbox)
    rate_burst: int = DEFAULT_RATE_BURST
    rate_headroom: float = RATE_HEADROOM
    send_connect_timeout_s: float = SEND_CONNECT_TIMEOUT_S
    send_read_timeout_s: float = SEND_READ_TIMEOUT_S
    send_retry_attempts: int = SEND_RETRY_ATTEMPTS
    send_retry_max_wait_s: float = SEND_RETRY_MAX_WAIT_S
    message_max_attempts: int = MESSAGE_MAX_ATTEMPTS
    requeue_backoff_base_s: float = REQUEUE_BACKOFF_BASE_S
    requeue_backoff_max_s: float = REQUEUE_BACKOFF_MAX_S
    rate_wait_max_s: float = RATE_WAIT_MAX_S
    worker_concurrency: int = WORKER_CONCURRENCY
    database_pool_size: int = DATABASE_POOL_SIZE
    outcome_batch_max: int = OUTCOME_BATCH_MAX
    outcome_batch_delay_s: float = OUTCOME_BATCH_DELAY_S
    worker_processes: int = WORKER_PROCESSES
    dispatch_interval_s: float = DISPATCH_INTERVAL_S
    dispatch_batch_size: int = DISPATCH_BATCH_SIZE
    dispatch_lookahead_ticks: float = DISPATCH_LOOKAHEAD_TICKS
    sweep_interval_s: float = SWEEP_INTERVAL_S
    queued_task_timeout_s: float = QUEUED_TASK_TIMEOUT_S
    sending_timeout_s: float = SENDING_TIMEOUT_S
    auto_pause_consecutive_failures: int = AUTO_PAUSE_CONSECUTIVE_FAILURES
    auto_pause_consecutive_unknown: int = AUTO_PAUSE_CONSECUTIVE_UNKNOWN
    record_retry_max_s: float = RECORD_RETRY_MAX_S
    broker_stall_exit_s: float = BROKER_STALL_EXIT_S
    beat_lock_ttl_s: float = BEAT_LOCK_TTL_S
    webhook_path: str = WEBHOOK_PATH
    webhook_max_body_bytes: int = WEBHOOK_MAX_BODY_BYTES
    webhook_connection_limit: int = WEBHOOK_CONNECTION_LIMIT
    webhook_client_timeout_s: int = WEBHOOK_CLIENT_TIMEOUT_S
    webhook_request_deadline_s: float = WEBHOOK_REQUEST_DEADLINE_S
    webhook_match_window_s: float = WEBHOOK_MATCH_WINDOW_S
    retention_days: int = RETENTION_DAYS
    audit_retention_days: int = AUDIT_RETENTION_DAYS
    consent_history_retention_days: int = CONSENT_HISTORY_RETENTION_DAYS
    metrics_port: int = METRICS_PORT
    metrics_host: str = METRICS_HOST
    log_format: str = LOG_FORMAT
    api_max_body_bytes: int = API_MAX_BODY_BYTES
    api_max_upload_bytes: int = API_MAX_UPLOAD_BYTES
    console_session_ttl_s: float = CONSOLE_SESSION_TTL_S
    console_session_idle_s: float = CONSOLE_SESSION_IDLE_S
    console_cookie_secure: str = CONSOLE_COOKIE_SECURE
    console_time_zone: str = CONSOLE_TIME_ZONE
    console_login_free_failures: int = CONSOLE_LOGIN_FREE_FAILURES
    console_login_address_free_failures: int = CONSOLE_LOGIN_ADDRESS_FREE_FAILURES
    console_login_delay_s: float = CONSOLE_LOGIN_DELAY_S
    console_login_delay_max_s: float = CONSOLE_LOGIN_DELAY_MAX_S
    console_login_forget_s: float = CONSOLE_LOGIN_FORGET_S
    api_key_cache_s: float = API_KEY_CACHE_S
    api_auth_failures_per_minute: int = API_AUTH_FAILURES_PER_MINUTE
    opt_out_keywords: frozenset[str] = frozenset(w.casefold() for w in OPT_OUT_KEYWORDS)
    opt_out_button_ids: frozenset[str] = frozenset(OPT_OUT_BUTTON_IDS)
    opt_in_keywords: frozenset[str] = frozenset(w.casefold() for w in OPT_IN_KEYWORDS)
    marketing_frequency_cap: FrequencyCap | None = None
    auto_pause_late_window: int = AUTO_PAUSE_LATE_WINDOW
    auto_pause_late_failure_rate: float = AUTO_PAUSE_LATE_FAILURE_RATE
    webhook_metrics_port: int = WEBHOOK_METRICS_PORT
    default_country_code: str | None = DEFAULT_COUNTRY_CODE  # parsed to an ISO 3166 region, e.g. "SA"
    hooks_signing_key: Secret = field(default_factory=lambda: Secret(""))
    hooks_timeout_s: float = HOOKS_TIMEOUT_S
    hooks_retry_max_s: float = HOOKS_RETRY_MAX_S
    hooks_backoff_base_s: float = HOOKS_BACKOFF_BASE_S
    hooks_backoff_max_s: float = HOOKS_BACKOFF_MAX_S
    hooks_interval_s: float = HOOKS_INTERVAL_S
    hooks_batch_size: int = HOOKS_BATCH_SIZE
    hooks_concurrency: int = HOOKS_CONCURRENCY
    hooks_max_endpoints: int = HOOKS_MAX_ENDPOINTS
    hooks_allow_http: bool = HOOKS_ALLOW_HTTP
    hooks_allowed_hosts: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        """Every field, with the password of any URL (DATABASE_URL, CELERY_BROKER_URL, ...) masked."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown.append(f"{f.name}={(mask_url(value) if isinstance(value, str) else value)!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def pacing_rate(self) -> RateLimit:
        """What the limiter sends at: the vendor's whole limit in every window.

        The headroom no longer lowers the rate: it keeps the end of each window free
        (worker.ratelimit.base.Pacing), so a request granted late in a window and delayed on its
        way still arrives inside it.
        """
        return self.rate_limit

    @property
    def embedded(self) -> bool:
        """True when the broker lives inside this process (no CELERY_BROKER_URL set)."""
        return self.broker_url.startswith("memory://")

    @property
    def sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read every setting; raise ConfigError naming the first malformed one."""
        env = os.environ if env is None else env
        broker = env.get("CELERY_BROKER_URL") or EMBEDDED_BROKER_URL
        redis_url = env.get("REDIS_URL") or (broker if broker.startswith(("redis://", "rediss://")) else None)
        log_format = (env.get("LOG_FORMAT") or LOG_FORMAT).lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT={log_format!r} must be text or json")
        base_url = env.get("AWAL_BASE_URL") or None
        if base_url and not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"AWAL_BASE_URL={base_url!r} must start with http:// or https://")
        webhook_path = env.get("WEBHOOK_PATH") or WEBHOOK_PATH
        if not webhook_path.startswith("/"):
            raise ConfigError(f"WEBHOOK_PATH={webhook_path!r} must start with /")
        opt_out_words = _words(env, "OPT_OUT_KEYWORDS", OPT_OUT_KEYWORDS, fold=True)
        opt_in_words = _words(env, "OPT_IN_KEYWORDS", OPT_IN_KEYWORDS, fold=True)
        if opt_out_words & opt_in_words:
            raise ConfigError(f"OPT_OUT_KEYWORDS and OPT_IN_KEYWORDS share {', '.join(sorted(opt_out_words & opt_in_words))}: "
                              "a reply cannot both opt out and opt in")
        return cls(
            database_url=normalize_database_url(env.get("DATABASE_URL") or DEFAULT_DATABASE_URL),
            broker_url=broker,
            redis_url=redis_url,
            awal_base_url=base_url.rstrip("/") if base_url else None,
            awal_client_id=env.get("AWAL_CLIENT_ID") or None,
            awal_domain=env.get("AWAL_DOMAIN") or None,
            awal_hmac_secret=Secret(env.get("AWAL_HMAC_SECRET") or ""),
            awal_phone_number_id=env.get("AWAL_PHONE_NUMBER_ID") or None,
            awal_webhook_secret=Secret(env.get("AWAL_WEBHOOK_SECRET") or ""),
            rate_limit=RateLimit.parse(env.get("AWAL_RATE_LIMIT") or DEFAULT_RATE_LIMIT),
            rate_limit_configured=bool((env.get("AWAL_RATE_LIMIT") or "").strip()),
            rate_burst=_int(env, "AWAL_RATE_BURST", DEFAULT_RATE_BURST, 1),
            rate_headroom=_fraction(env, "AWAL_RATE_HEADROOM", RATE_HEADROOM),
            send_connect_timeout_s=_float(env, "SEND_CONNECT_TIMEOUT_S", SEND_CONNECT_TIMEOUT_S, 0.01),
            send_read_timeout_s=_float(env, "SEND_READ_TIMEOUT_S", SEND_READ_TIMEOUT_S, 0.01),
            send_retry_attempts=_int(env, "SEND_RETRY_ATTEMPTS", SEND_RETRY_ATTEMPTS, 1),
            send_retry_max_wait_s=_float(env, "SEND_RETRY_MAX_WAIT_S", SEND_RETRY_MAX_WAIT_S),
            message_max_attempts=_int(env, "MESSAGE_MAX_ATTEMPTS", MESSAGE_MAX_ATTEMPTS, 1),
            requeue_backoff_base_s=_float(env, "REQUEUE_BACKOFF_BASE_S", REQUEUE_BACKOFF_BASE_S),
            requeue_backoff_max_s=_float(env, "REQUEUE_BACKOFF_MAX_S", REQUEUE_BACKOFF_MAX_S),
            rate_wait_max_s=_float(env, "RATE_WAIT_MAX_S", RATE_WAIT_MAX_S),
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", WORKER_CONCURRENCY, 1),
            database_pool_size=_int(env, "DATABASE_POOL_SIZE", DATABASE_POOL_SIZE, 1),
            outcome_batch_max=_int(env, "OUTCOME_BATCH_MAX", OUTCOME_BATCH_MAX, 1),
            outcome_batch_delay_s=_float(env, "OUTCOME_BATCH_DELAY_S", OUTCOME_BATCH_DELAY_S),
            worker_processes=_int(env, "WORKER_PROCESSES", WORKER_PROCESSES, 0),
            dispatch_interval_s=_float(env, "DISPATCH_INTERVAL_S", DISPATCH_INTERVAL_S, 0.05),
            dispatch_batch_size=_int(env, "DISPATCH_BATCH_SIZE", DISPATCH_BATCH_SIZE, 1),
            dispatch_lookahead_ticks=_float(env, "DISPATCH_LOOKAHEAD_TICKS", DISPATCH_LOOKAHEAD_TICKS, 1),
            sweep_interval_s=_float(env, "SWEEP_INTERVAL_S", SWEEP_INTERVAL_S, 0.05),
            queued_task_timeout_s=_float(env, "QUEUED_TASK_TIMEOUT_S", QUEUED_TASK_TIMEOUT_S, 0.1),
            sending_timeout_s=_float(env, "SENDING_TIMEOUT_S", SENDING_TIMEOUT_S, 0.1),
            auto_pause_consecutive_failures=_int(env, "AUTO_PAUSE_CONSECUTIVE_FAILURES", AUTO_PAUSE_CONSECUTIVE_FAILURES, 1),
            auto_pause_consecutive_unknown=_int(env, "AUTO_PAUSE_CONSECUTIVE_UNKNOWN", AUTO_PAUSE_CONSECUTIVE_UNKNOWN, 1),
            record_retry_max_s=_float(env, "RECORD_RETRY_MAX_S", RECORD_RETRY_MAX_S),
            broker_stall_exit_s=_float(env, "BROKER_STALL_EXIT_S", BROKER_STALL_EXIT_S),
            beat_lock_ttl_s=_float(env, "BEAT_LOCK_TTL_S", BEAT_LOCK_TTL_S, 1.0),
            webhook_path=webhook_path,
            webhook_max_body_bytes=_int(env, "WEBHOOK_MAX_BODY_BYTES", WEBHOOK_MAX_BODY_BYTES, 1024),
            webhook_connection_limit=_int(env, "WEBHOOK_CONNECTION_LIMIT", WEBHOOK_CONNECTION_LIMIT, 1),
            webhook_client_timeout_s=_int(env, "WEBHOOK_CLIENT_TIMEOUT_S", WEBHOOK_CLIENT_TIMEOUT_S, 1),
            webhook_request_deadline_s=_float(env, "WEBHOOK_REQUEST_DEADLINE_S", WEBHOOK_REQUEST_DEADLINE_S, 0.5),
            webhook_match_window_s=_float(env, "WEBHOOK_MATCH_WINDOW_S", WEBHOOK_MATCH_WINDOW_S, 60.0),
            retention_days=_int(env, "RETENTION_DAYS", RETENTION_DAYS, 0),
            audit_retention_days=_int(env, "AUDIT_RETENTION_DAYS", AUDIT_RETENTION_DAYS, 0),
            consent_history_retention_days=_int(env, "CONSENT_HISTORY_RETENTION_DAYS", CONSENT_HISTORY_RETENTION_DAYS, 0),
            metrics_port=_int(env, "METRICS_PORT", METRICS_PORT, 0),
            metrics_host=(env.get("METRICS_HOST") or METRICS_HOST).strip(),
            log_format=log_format,
            api_max_body_bytes=_int(env, "API_MAX_BODY_BYTES", API_MAX_BODY_BYTES, 1024),
            api_max_upload_bytes=_int(env, "API_MAX_UPLOAD_BYTES", API_MAX_UPLOAD_BYTES, 1024),
            console_session_ttl_s=_float(env, "CONSOLE_SESSION_TTL_S", CONSOLE_SESSION_TTL_S, 60.0),
            console_session_idle_s=_float(env, "CONSOLE_SESSION_IDLE_S", CONSOLE_SESSION_IDLE_S, 60.0),
            console_cookie_secure=_choice(env, "CONSOLE_COOKIE_SECURE", CONSOLE_COOKIE_SECURE, CONSOLE_COOKIE_SECURE_CHOICES),
            console_time_zone=_time_zone(env, "CONSOLE_TIME_ZONE", CONSOLE_TIME_ZONE),
            console_login_free_failures=_int(env, "CONSOLE_LOGIN_FREE_FAILURES", CONSOLE_LOGIN_FREE_FAILURES, 1),
            console_login_address_free_failures=_int(env, "CONSOLE_LOGIN_ADDRESS_FREE_FAILURES",
                                                     CONSOLE_LOGIN_ADDRESS_FREE_FAILURES, 1),
            console_login_delay_s=_float(env, "CONSOLE_LOGIN_DELAY_S", CONSOLE_LOGIN_DELAY_S, 0.0),
            console_login_delay_max_s=_float(env, "CONSOLE_LOGIN_DELAY_MAX_S", CONSOLE_LOGIN_DELAY_MAX_S, 0.0),
            console_login_forget_s=_float(env, "CONSOLE_LOGIN_FORGET_S", CONSOLE_LOGIN_FORGET_S, 60.0),
            api_key_cache_s=_float(env, "API_KEY_CACHE_S", API_KEY_CACHE_S),
            api_auth_failures_per_minute=_int(env, "API_AUTH_FAILURES_PER_MINUTE", API_AUTH_FAILURES_PER_MINUTE, 0),
            opt_out_keywords=opt_out_words,
            opt_out_button_ids=_words(env, "OPT_OUT_BUTTON_IDS", OPT_OUT_BUTTON_IDS, fold=False),
            opt_in_keywords=opt_in_words,
            marketing_frequency_cap=FrequencyCap.parse(env.get("MARKETING_FREQUENCY_CAP") or MARKETING_FREQUENCY_CAP),
            auto_pause_late_window=_int(env, "AUTO_PAUSE_LATE_WINDOW", AUTO_PAUSE_LATE_WINDOW, 1),
            auto_pause_late_failure_rate=_share(env, "AUTO_PAUSE_LATE_FAILURE_RATE", AUTO_PAUSE_LATE_FAILURE_RATE),
            webhook_metrics_port=_int(env, "WEBHOOK_METRICS_PORT", WEBHOOK_METRICS_PORT, 0),
            default_country_code=parse_default_country(env.get("DEFAULT_COUNTRY_CODE")),
            hooks_signing_key=Secret(env.get("HOOKS_SIGNING_KEY") or ""),
            hooks_timeout_s=_float(env, "HOOKS_TIMEOUT_S", HOOKS_TIMEOUT_S, 0.01),
            hooks_retry_max_s=_float(env, "HOOKS_RETRY_MAX_S", HOOKS_RETRY_MAX_S, 0.1),
            hooks_backoff_base_s=_float(env, "HOOKS_BACKOFF_BASE_S", HOOKS_BACKOFF_BASE_S, 0.01),
            hooks_backoff_max_s=_float(env, "HOOKS_BACKOFF_MAX_S", HOOKS_BACKOFF_MAX_S, 0.01),
            hooks_interval_s=_float(env, "HOOKS_INTERVAL_S", HOOKS_INTERVAL_S, 0.05),
            hooks_batch_size=_int(env, "HOOKS_BATCH_SIZE", HOOKS_BATCH_SIZE, 1),
            hooks_concurrency=_int(env, "HOOKS_CONCURRENCY", HOOKS_CONCURRENCY, 1),
            hooks_max_endpoints=_int(env, "HOOKS_MAX_ENDPOINTS", HOOKS_MAX_ENDPOINTS, 1),
            hooks_allow_http=_flag(env, "HOOKS_ALLOW_HTTP", HOOKS_ALLOW_HTTP),
            hooks_allowed_hosts=_hosts(env, "HOOKS_ALLOWED_HOSTS", HOOKS_ALLOWED_HOSTS),
        )

    def require_awal(self) -> None:
        """Sending needs the vendor settings; name every missing one (never a secret's value)."""
        missing = [
            name
            for name, value in (
                ("AWAL_BASE_URL", self.awal_base_url),
                ("AWAL_CLIENT_ID", self.awal_client_id),
                ("AWAL_DOMAIN", self.awal_domain),
                ("AWAL_HMAC_SECRET", self.awal_hmac_secret),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"missing setting{'s' if len(missing) > 1 else ''}: {', '.join(missing)} (needed to send to the Awal API)")

    def replace(self, **changes: object) -> "Settings":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)  # type: ignore[arg-type]
