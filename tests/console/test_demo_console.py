"""`buttoncast demo --console`: the demo runs as usual, then the console stays up on its data with a
printed login, until Ctrl-C; plain `buttoncast demo` still ends on its own (tests/cli/test_demo.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
DEMO_TIMEOUT_S = 150
CONSOLE_LINE = re.compile(r"console on (http://127\.0\.0\.1:\d+/)  login (\S+)  password (\S+)")


def test_demo_console_prints_a_login_that_shows_the_demo_campaign_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "REDIS_", "AWAL_"))}
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "demo", "--dir", str(tmp_path / "demo"), "--console",
                             "--console-port", "0"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        deadline, match = time.monotonic() + DEMO_TIMEOUT_S, None
        while match is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the demo ended without starting the console"
            match = CONSOLE_LINE.search(line)
        assert match, "no console line"
        url, email, password = match.groups()
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(100):
                try:
                    form = client.get("/login")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            done = client.post("/login", data={"email": email, "password": password, "csrf_token": token, "next": "/"})
            assert done.status_code == 303
            page = client.get("/")
            assert page.status_code == 200 and "campaign-row" in page.text and "completed" in page.text
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "nothing is left running" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
