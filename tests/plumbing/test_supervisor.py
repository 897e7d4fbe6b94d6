"""Issue 16 goal 2: `buttoncast worker`'s supervisor of worker processes (worker/supervisor.py):
children that crash are restarted, a stop is a warm shutdown of every child, a second is cold."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from worker.supervisor import Supervisor, process_count, usable_cores

# A child that records each start and each SIGTERM, finishes its "task" on SIGTERM, then exits 0.
CHILD = """
import os, signal, sys, time
log = sys.argv[1]
open(log, "a").write(f"start {os.getpid()}\\n")
def term(*_):
    open(log, "a").write(f"term {os.getpid()}\\n")
    time.sleep(0.3)   # drains its running task
    open(log, "a").write(f"drained {os.getpid()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
if len(sys.argv) > 2 and not os.path.exists(sys.argv[2]):
    open(sys.argv[2], "w").close()
    os._exit(3)   # crashes once
while True:
    time.sleep(0.05)
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(predicate, timeout_s: float = 60.0) -> None:  # noqa: ANN001 - generous: ends once true
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_crashed_child_is_restarted_and_a_stop_drains_every_child(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("worker.supervisor.RESTART_BACKOFF_MIN_S", 0.2)
    log, crashed = tmp_path / "log", tmp_path / "crashed"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    supervisor = Supervisor(2, lambda i: [sys.executable, str(script), str(log), *([str(crashed)] if i == 0 else [])])
    monkeypatch.setattr(supervisor, "_install_signals", lambda: None)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(supervisor.run()))
    thread.start()
    # child 0 crashes once and is started again; child 1 runs on
    _wait_for(lambda: sum(line.startswith("start") for line in _lines(log)) == 3)
    assert supervisor.children[0].restarts == 1 and supervisor.children[1].restarts == 0
    time.sleep(0.3)
    supervisor.stop(signal.SIGTERM)
    thread.join(60)
    assert result == [0]
    running = {line.split()[1] for line in _lines(log) if line.startswith("start")}
    drained = {line.split()[1] for line in _lines(log) if line.startswith("drained")}
    assert len(drained) == 2 and drained <= running   # each live child finished its task, then exited
    assert all(c.proc.poll() is not None for c in supervisor.children)


def test_a_second_stop_is_a_cold_shutdown(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGTERM, lambda *_: None)\nwhile True: time.sleep(0.05)\n")
    supervisor = Supervisor(1, lambda _i: [sys.executable, str(script)])
    monkeypatch.setattr(supervisor, "_install_signals", lambda: None)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(supervisor.run()))
    thread.start()
    _wait_for(lambda: bool(supervisor.children) and supervisor.children[0].proc is not None)
    time.sleep(0.3)
    supervisor.stop(signal.SIGTERM)      # ignored by this child
    time.sleep(0.5)
    assert thread.is_alive()
    supervisor.stop(signal.SIGTERM)      # second: SIGQUIT, which it does not catch
    thread.join(10)
    assert result == [1] and supervisor.children[0].proc.returncode == -signal.SIGQUIT


def test_the_default_is_one_process_per_usable_core_and_one_on_sqlite() -> None:
    assert process_count(0, sqlite=False) == usable_cores() == len(os.sched_getaffinity(0))
    assert process_count(0, sqlite=True) == 1
    assert process_count(3, sqlite=True) == 3
