"""`buttoncast demo` as a newcomer runs it: a fresh directory, no services, no settings."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.cli.demo import FAIL_PHONE_PREFIX, REPORT_FILE_NAME

pytestmark = pytest.mark.slow
DEMO_TIMEOUT_S = 120
INVALID_SAMPLE_LINES = (9, 57, 92, 132)  # the bundled recipients.csv's rejected rows


def _demo_env() -> dict[str, str]:
    """The caller's environment minus any setting that points at real services."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "REDIS_", "AWAL_"))}


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_in_a_fresh_directory_sends_as_the_sandbox_decides_and_leaves_nothing_running(tmp_path: Path) -> None:
    # Given: an empty directory and no configuration at all
    # When: `buttoncast demo` runs there, in its own session so we can see any process it leaves
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "demo"], cwd=tmp_path, env=_demo_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=DEMO_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    elapsed = time.monotonic() - started

    # Then: it succeeded (within DEMO_TIMEOUT_S; how long it takes is a speed, printed, not asserted)
    # and nothing of it is still running
    print(f"the demo took {elapsed:.1f}s")
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert _group_gone(proc.pid), "the demo left a process behind in its session"

    # ...the invalid rows were reported at import with their line numbers
    for line in INVALID_SAMPLE_LINES:
        assert f"line {line}:" in err, err

    # ...every valid recipient ended as the sandbox decided
    demo_dir = tmp_path / "buttoncast-demo"
    report_path = demo_dir / REPORT_FILE_NAME
    assert str(report_path) in out
    rows = list(csv.DictReader(report_path.open(encoding="utf-8")))
    assert len(rows) == 294  # 300 rows - 4 invalid - 2 duplicates
    refused = [r for r in rows if r["phone"].startswith(FAIL_PHONE_PREFIX)]
    accepted = [r for r in rows if not r["phone"].startswith(FAIL_PHONE_PREFIX)]
    assert refused and all((r["status"], r["last_error_code"]) == ("failed", "invalid_phone_number") for r in refused)
    assert all(r["status"] == "sent" and r["vendor_message_id"] for r in accepted)

    # ...and the funnel was shown, with receipts and taps recorded: every accepted message was read,
    # except those the sandbox failed late, which the summary lists by class (issue 13 item 9)
    assert "funnel:" in out and "delivered" in out and "replied" in out and "tapped" in out, out
    late = [r for r in accepted if r["failure_class"]]
    assert late and {r["failure_code"] for r in late} <= {"131047", "131026", "131050"}
    assert all(r["read_at"] for r in accepted if not r["failure_class"])
    assert not any(r["read_at"] for r in late)
    assert any(r["reply_button_id"] for r in accepted)
    assert f"late failures: {len(late)} " in out and "window_closed: " in out, out

    # ...and people opted out while the campaign ran (STOP replies, 131050), and the next message
    # to each of them was held
    assert "opt-outs while the campaign ran: " in out and ": suppressed (opted_out)" in out, out
    assert "0 not held" in out, out
    # ...and the summary counts those who were sent to and then opted out as such, not as "never
    # sent", and Celery's "running as root" warning is not on the screen (issue 25, the first hour)
    assert "opted out after they were sent it" in out and "opted out (never sent)" not in out, out
    assert "superuser privileges" not in out + err
