"""A running API for HTTP tests: Postgres, Redis, the sandbox, a real `buttoncast worker` and a real
`buttoncast api` process, plus one API key per scope (made with the real `buttoncast apikey create`)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT, WorkerProcess, free_port, make_runtime, stack_env

API_READY = "Application startup complete."


@dataclass
class ApiStack:
    base_url: str
    env: dict[str, str]
    runtime: object
    keys: dict[str, str] = field(default_factory=dict)
    processes: list[WorkerProcess] = field(default_factory=list)

    def client(self, scope: str | None = "admin", **kwargs) -> httpx.Client:  # noqa: ANN003
        headers = {"Authorization": f"Bearer {self.keys[scope]}"} if scope else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.kill()
        self.runtime.close()


def create_key(env: dict[str, str], name: str, scope: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", "apikey", "create", "--name", name, "--scope", scope],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def start_api_stack(database_url: str, redis_url: str, sandbox_url: str, log_dir: Path, *, worker: bool = True,
                    **settings: str) -> ApiStack:
    settings = {"HOOKS_SIGNING_KEY": "api-stack-hooks-signing-key-0123456789", "HOOKS_ALLOWED_HOSTS": "127.0.0.1",
                **settings}
    env = stack_env(database_url=database_url, sandbox_url=sandbox_url, broker_url=redis_url,
                    SEND_READ_TIMEOUT_S="2", SEND_RETRY_MAX_WAIT_S="0.05", AWAL_RATE_LIMIT="200/s", AWAL_RATE_BURST="20",
                    **settings)
    port = free_port()
    stack = ApiStack(base_url=f"http://127.0.0.1:{port}", env=env, runtime=make_runtime(env))
    try:
        if worker:
            stack.processes.append(WorkerProcess(env, ["worker", "--concurrency", "4"], log_dir / "worker.log"))
            stack.processes[-1].wait_for("ready.")
        stack.processes.append(WorkerProcess(env, ["api", "--port", str(port)], log_dir / "api.log"))
        stack.processes[-1].wait_for(API_READY)
        for scope in ("send", "campaigns", "admin"):
            done = create_key(env, f"test-{scope}", scope)
            assert done.returncode == 0, done.stderr
            stack.keys[scope] = done.stdout.strip().splitlines()[-1]
    except BaseException:
        stack.close()
        raise
    return stack
