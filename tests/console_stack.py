"""A running console for browser tests: the sandbox (failing some phones, tapping buttons), the
webhook receiver, a worker, beat and `buttoncast api` as real processes on Postgres and Redis, and
one person per role made with the real `buttoncast user create`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT, WorkerProcess, free_port, make_runtime, stack_env

API_READY = "Application startup complete."
PASSWORD = "correct horse battery"
FAIL_PREFIX = "96659"                 # the sandbox refuses these phones (a permanent failure)
WEBHOOK_SECRET = "console-test-webhook-secret"


@dataclass
class ConsoleStack:
    base_url: str
    env: dict[str, str]
    runtime: object
    sandbox: object
    emails: dict[str, str] = field(default_factory=dict)
    processes: list[WorkerProcess] = field(default_factory=list)

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.kill()
        self.runtime.close()
        self.sandbox.stop()


def create_user(env: dict[str, str], email: str, role: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", "user", "create", "--email", email, "--role", role,
                           "--password-stdin"], input=password + "\n", env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)


def start_console_stack(database_url: str, redis_url: str, log_dir: Path) -> ConsoleStack:
    from worker.sandbox import SandboxConfig, SandboxServer

    sandbox = SandboxServer(SandboxConfig(stall_s=5.0, seed=7, fail_phone_prefixes=(FAIL_PREFIX,), tap_share=0.5,
                                          delivered_after_s=0.2, read_after_s=0.4))
    sandbox_url = sandbox.start_in_thread()
    webhook_port, api_port = free_port(), free_port()
    env = stack_env(database_url=database_url, sandbox_url=sandbox_url, broker_url=redis_url,
                    SEND_READ_TIMEOUT_S="2", SEND_RETRY_MAX_WAIT_S="0.05", AWAL_RATE_LIMIT="40/s", AWAL_RATE_BURST="5",
                    DISPATCH_INTERVAL_S="0.5", SWEEP_INTERVAL_S="1", DISPATCH_LOOKAHEAD_TICKS="2",
                    AWAL_WEBHOOK_SECRET=WEBHOOK_SECRET)
    stack = ConsoleStack(base_url=f"http://127.0.0.1:{api_port}", env=env, runtime=make_runtime(env), sandbox=sandbox)
    try:
        from worker.sandbox import SandboxClient

        SandboxClient(sandbox_url).configure(webhook_url=f"http://127.0.0.1:{webhook_port}/webhooks/awal",
                                             webhook_secret=WEBHOOK_SECRET)
        stack.processes.append(WorkerProcess(env, ["webhooks", "--port", str(webhook_port)], log_dir / "webhooks.log"))
        stack.processes.append(WorkerProcess(env, ["worker", "--processes", "1", "--concurrency", "4"], log_dir / "worker.log"))
        stack.processes[-1].wait_for("ready.")
        stack.processes.append(WorkerProcess(env, ["beat", "--schedule-file", str(log_dir / "beat-schedule")], log_dir / "beat.log"))
        stack.processes[-1].wait_for("beat: Starting")
        stack.processes.append(WorkerProcess(env, ["api", "--port", str(api_port)], log_dir / "api.log"))
        stack.processes[-1].wait_for(API_READY)
        for role in ("admin", "marketer", "viewer"):
            email = f"{role}@example.com"
            done = create_user(env, email, role)
            assert done.returncode == 0, done.stderr
            stack.emails[role] = email
    except BaseException:
        stack.close()
        raise
    return stack
