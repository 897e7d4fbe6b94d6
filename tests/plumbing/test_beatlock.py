"""Only one beat ticks: a second one waits, and takes over when the first is killed."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import stack_env, wait_until

pytestmark = pytest.mark.slow


def ticks(proc) -> int:  # noqa: ANN001
    return proc.log_path.read_text(errors="replace").count("Sending due task dispatch")


def test_a_second_beat_waits_and_takes_over_when_the_first_is_killed(migrated_postgres, redis_url, sandbox, spawn) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(database_url=migrated_postgres, sandbox_url=sandbox[0], broker_url=redis_url,
                    DISPATCH_INTERVAL_S="0.5", BEAT_LOCK_TTL_S="3")
    first = spawn(env, "beat", "--schedule-file", "first-schedule", ready="beat lease taken")
    # Given a second beat started while the first runs
    second = spawn(env, "beat", "--schedule-file", "second-schedule", ready="another beat holds")
    # Then only the first ticks (a few of its ticks, however long a busy machine makes them)
    wait_until(lambda: ticks(first) >= 4, what="the first beat ticking")
    assert ticks(second) == 0
    # When the first is killed without a chance to hand over
    first.kill(signal.SIGKILL)
    # Then the second takes over once the lease runs out, and ticks
    second.wait_for("beat lease taken", timeout_s=15)
    wait_until(lambda: ticks(second) > 0, 10, what="the second beat ticking")
