"""Settings.from_env: the documented defaults, derived values, one clear ConfigError naming each
malformed setting, and a secret that never shows in a repr or an error message."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.settings import (
    DEFAULT_DATABASE_URL,
    EMBEDDED_BROKER_URL,
    METRICS_HOST,
    RateLimit,
    Secret,
    Settings,
    mask_url,
    normalize_database_url,
)

SECRET_VALUE = "s3cr3t-hmac-VALUE-do-not-print"
WEBHOOK_SECRET_VALUE = "wh00k-secret-VALUE"
AWAL = {
    "AWAL_BASE_URL": "https://api.awal.example/",
    "AWAL_CLIENT_ID": "client-1",
    "AWAL_DOMAIN": "shop.example",
    "AWAL_HMAC_SECRET": SECRET_VALUE,
    "AWAL_PHONE_NUMBER_ID": "123456",
}


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return str(info.value)


# --- defaults ---------------------------------------------------------------------------------
def test_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///buttoncast.db" == DEFAULT_DATABASE_URL
    assert settings.sqlite
    assert settings.rate_limit == RateLimit(limit=1000, period_s=3600)
    assert str(settings.rate_limit) == "1000/h"
    assert settings.broker_url == EMBEDDED_BROKER_URL and settings.embedded
    assert settings.redis_url is None
    assert settings.awal_base_url is None and settings.awal_phone_number_id is None
    assert not settings.awal_hmac_secret
    assert settings.log_format == "text"


def test_empty_strings_count_as_unset() -> None:
    settings = Settings.from_env({"DATABASE_URL": "", "AWAL_RATE_LIMIT": "", "WORKER_CONCURRENCY": "", "CELERY_BROKER_URL": ""})
    assert settings == Settings.from_env({})


def test_from_env_without_argument_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWAL_RATE_LIMIT", "80/s")
    assert Settings.from_env().rate_limit == RateLimit(limit=80, period_s=1)


def test_awal_settings_are_read_and_base_url_trailing_slash_dropped() -> None:
    settings = Settings.from_env(AWAL)
    assert settings.awal_base_url == "https://api.awal.example"
    assert (settings.awal_client_id, settings.awal_domain, settings.awal_phone_number_id) == ("client-1", "shop.example", "123456")
    assert settings.awal_hmac_secret.reveal() == SECRET_VALUE
    settings.require_awal()


# --- broker and Redis -------------------------------------------------------------------------
@pytest.mark.parametrize("broker", ["redis://localhost:6379/0", "rediss://cache.example:6380/2"])
def test_redis_url_defaults_to_a_redis_broker_url(broker: str) -> None:
    settings = Settings.from_env({"CELERY_BROKER_URL": broker})
    assert settings.redis_url == broker and not settings.embedded


def test_redis_url_is_none_for_a_non_redis_broker() -> None:
    settings = Settings.from_env({"CELERY_BROKER_URL": "amqp://guest@rabbit//"})
    assert settings.redis_url is None and not settings.embedded


def test_explicit_redis_url_wins_over_the_broker_url() -> None:
    settings = Settings.from_env({"CELERY_BROKER_URL": "redis://broker/0", "REDIS_URL": "redis://state/1"})
    assert settings.redis_url == "redis://state/1"


def test_no_broker_means_embedded_mode_even_with_a_redis_url() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://state/1"})
    assert settings.embedded and settings.broker_url == "memory://"


# --- database URL -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/app", "postgresql+psycopg://u:p@db:5432/app"),
        ("postgres://u@db/app", "postgresql+psycopg://u@db/app"),
        ("postgresql+psycopg://u@db/app", "postgresql+psycopg://u@db/app"),
        ("sqlite:///other.db", "sqlite:///other.db"),
    ],
    ids=["postgresql", "postgres", "already-psycopg", "sqlite"],
)
def test_database_url_means_psycopg3_for_postgres(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected
    settings = Settings.from_env({"DATABASE_URL": given})
    assert settings.database_url == expected
    assert settings.sqlite == expected.startswith("sqlite")


# --- rates ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "limit", "period_s", "shown"),
    [("1000/h", 1000, 3600, "1000/h"), ("80/s", 80, 1, "80/s"), ("100/10s", 100, 10, "100/10s"),
     ("5 / min", 5, 60, "5/m"), ("2/day", 2, 86400, "2/d"), ("1.5/S", 1.5, 1, "1.5/s")],
)
def test_rate_limit_parses_requests_per_period(text: str, limit: float, period_s: float, shown: str) -> None:
    rate = RateLimit.parse(text)
    assert (rate.limit, rate.period_s, str(rate)) == (limit, period_s, shown)
    assert rate.per_second == pytest.approx(limit / period_s)


@pytest.mark.parametrize("value", ["fast", "1000", "/h", "1000/week", "0/h", "10/0s", "-5/s"])
def test_malformed_rate_limit_names_awal_rate_limit(value: str) -> None:
    message = config_error({"AWAL_RATE_LIMIT": value})
    assert message.startswith("AWAL_RATE_LIMIT=") and repr(value) in message


# --- malformed values name the setting ----------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"WORKER_CONCURRENCY": "abc"}, "WORKER_CONCURRENCY"),
        ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
        ({"WORKER_CONCURRENCY": "2.5"}, "WORKER_CONCURRENCY"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"AWAL_BASE_URL": "ftp://x"}, "AWAL_BASE_URL"),
        ({"AWAL_BASE_URL": "api.awal.example"}, "AWAL_BASE_URL"),
        ({"SEND_READ_TIMEOUT_S": "slow"}, "SEND_READ_TIMEOUT_S"),
        ({"SEND_CONNECT_TIMEOUT_S": "0"}, "SEND_CONNECT_TIMEOUT_S"),
        ({"SEND_RETRY_ATTEMPTS": "0"}, "SEND_RETRY_ATTEMPTS"),
        ({"AWAL_RATE_BURST": "many"}, "AWAL_RATE_BURST"),
        ({"METRICS_PORT": "-1"}, "METRICS_PORT"),
        ({"WEBHOOK_PATH": "webhooks/awal"}, "WEBHOOK_PATH"),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else v,
)
def test_malformed_setting_gives_one_line_config_error_naming_it(env: dict[str, str], setting: str) -> None:
    message = config_error(env)
    assert message.startswith(setting + "=")
    assert "\n" not in message


def test_log_format_is_case_insensitive() -> None:
    assert Settings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"


def test_numeric_settings_are_read() -> None:
    settings = Settings.from_env({"WORKER_CONCURRENCY": "32", "SEND_READ_TIMEOUT_S": "2.5", "SEND_RETRY_ATTEMPTS": "5"})
    assert (settings.worker_concurrency, settings.send_read_timeout_s, settings.send_retry_attempts) == (32, 2.5, 5)


def test_nan_timeout_is_rejected_naming_the_setting() -> None:
    # float("nan") parses, and NaN < minimum is False, so without an explicit check a NaN timeout
    # slips through to requests at send time instead of stopping the command with one clear line.
    message = config_error({"SEND_READ_TIMEOUT_S": "nan"})
    assert message.startswith("SEND_READ_TIMEOUT_S=")


# --- require_awal -----------------------------------------------------------------------------
def test_require_awal_names_every_missing_setting() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({}).require_awal()
    message = str(info.value)
    for name in ("AWAL_BASE_URL", "AWAL_CLIENT_ID", "AWAL_DOMAIN", "AWAL_HMAC_SECRET"):
        assert name in message


def test_require_awal_names_only_what_is_missing_and_not_the_secret() -> None:
    env = {k: v for k, v in AWAL.items() if k not in ("AWAL_DOMAIN", "AWAL_CLIENT_ID")}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env).require_awal()
    message = str(info.value)
    assert "AWAL_DOMAIN" in message and "AWAL_CLIENT_ID" in message
    assert "AWAL_BASE_URL" not in message and "AWAL_HMAC_SECRET" not in message
    assert SECRET_VALUE not in message


def test_require_awal_with_only_the_secret_missing_names_it() -> None:
    env = {k: v for k, v in AWAL.items() if k != "AWAL_HMAC_SECRET"}
    with pytest.raises(ConfigError, match="AWAL_HMAC_SECRET"):
        Settings.from_env(env).require_awal()


# --- the secret never shows ---------------------------------------------------------------------
def test_secret_is_not_in_repr_or_str_of_settings() -> None:
    settings = Settings.from_env({**AWAL, "AWAL_WEBHOOK_SECRET": WEBHOOK_SECRET_VALUE})
    for text in (repr(settings), str(settings), f"{settings}", repr(settings.awal_hmac_secret), str(settings.awal_hmac_secret)):
        assert SECRET_VALUE not in text
        assert WEBHOOK_SECRET_VALUE not in text
    assert "***" in repr(settings.awal_hmac_secret)


def test_secret_is_not_in_the_message_of_a_config_error_about_another_setting() -> None:
    for bad in ({"AWAL_RATE_LIMIT": "fast"}, {"WORKER_CONCURRENCY": "abc"}, {"LOG_FORMAT": "xml"}, {"AWAL_BASE_URL": "ftp://x"}):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({**AWAL, **bad})
        assert SECRET_VALUE not in str(info.value)
        assert SECRET_VALUE not in repr(info.value)


def test_secret_is_not_in_repr_after_replace() -> None:
    settings = Settings.from_env(AWAL).replace(worker_concurrency=2)
    assert settings.worker_concurrency == 2
    assert settings.awal_hmac_secret.reveal() == SECRET_VALUE
    assert SECRET_VALUE not in repr(settings)


def test_secret_compares_by_value_and_is_falsy_when_empty() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert not Secret("") and Secret("x")


# --- passwords inside URLs (issue 12 item 16) ----------------------------------------------------
URL_PASSWORD = "pg-PASSWORD-do-not-print"
REDIS_PASSWORD = "redis-PASSWORD-do-not-print"


def test_repr_and_str_of_settings_mask_the_passwords_inside_the_urls() -> None:
    """Issue 12 item 16: repr(Settings) shows DATABASE_URL, CELERY_BROKER_URL and REDIS_URL with
    their passwords masked, and the rest of each URL (user, host, database) as it is."""
    settings = Settings.from_env({
        "DATABASE_URL": f"postgresql://buttoncast:{URL_PASSWORD}@db.internal:5432/buttoncast",
        "CELERY_BROKER_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/0",
        "REDIS_URL": f"rediss://limiter:{REDIS_PASSWORD}@redis-2:6380/1",
    })
    assert settings.database_url.endswith(f":{URL_PASSWORD}@db.internal:5432/buttoncast")  # the value is intact
    for text in (repr(settings), str(settings), f"{settings}", repr(settings.replace(worker_concurrency=3))):
        assert URL_PASSWORD not in text and REDIS_PASSWORD not in text
        assert "database_url='postgresql+psycopg://buttoncast:***@db.internal:5432/buttoncast'" in text
        assert "broker_url='redis://:***@redis:6379/0'" in text
        assert "redis_url='rediss://limiter:***@redis-2:6380/1'" in text
    assert "metrics_port=9808" in repr(settings)       # every other field still shows


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u:pa/ss?x#y@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
        ("postgresql://u@h/db?password=hunter2&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("sentinel://:a;b@h1:26379;sentinel://:c@h2:26379", "sentinel://:***@h1:26379;sentinel://:***@h2:26379"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("sqlite:///buttoncast.db", "sqlite:///buttoncast.db"),
        ("memory://", "memory://"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_hides_every_password_form(url: str, shown: str) -> None:
    """Issue 12 item 16: a password in the userinfo (even one holding '/', '?', '#' or ';'), in a
    `password=` query parameter, or in any URL of a celery failover list is masked."""
    assert mask_url(url) == shown


def test_metrics_host_is_loopback_unless_set() -> None:
    """Issue 12 item 16: the metrics endpoint binds 127.0.0.1 by default; METRICS_HOST changes it."""
    assert Settings.from_env({}).metrics_host == "127.0.0.1" == METRICS_HOST
    assert Settings.from_env({"METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    assert Settings.from_env({"METRICS_HOST": ""}).metrics_host == "127.0.0.1"
