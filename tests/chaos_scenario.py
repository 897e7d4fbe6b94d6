"""The chaos scenario: one campaign through a faulty vendor while workers, Redis and beat are killed.

One implementation for both sizes: `tests/system/test_chaos.py` runs it small in CI, `bench/chaos.py` runs
it at 20,000 recipients. Everything is a real process: the sandbox (`python -m worker.sandbox`, so
its records survive worker kills), a PRIVATE redis-server (broker and rate limiter; killed and
restarted empty, never the machine's shared Redis), a fresh Postgres database, `buttoncast worker`
processes (SIGKILLed at random moments and restarted) and one `buttoncast beat` (restarted once).

What the end state must prove (`verify`), per recipient phone, from the sandbox's own records
(it records a 200, and a read timeout because the vendor acted before stalling; drops and 5xx/429
are not recorded because the vendor did not act):
- every message is final: sent, failed or unknown; nothing pending, queued or sending;
- sent    => exactly one record, a 200, whose messageId is the one stored;
- failed  => no record (the vendor never acted on it);
- unknown => at most one record, and a reason the vendor may have acted: a read timeout (recorded),
  a dropped connection (the sandbox counted at least that many drops), or a worker lost
  mid-request whose process this scenario SIGKILLed;
- no phone has more than one record (buttoncast never sent anything twice on its own);
- the counts agree: phones with a 200 record = sent + unknown-that-the-vendor-did-send;
- every status is explained by attempt rows or status events (the audit trail).
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parent.parent
SANDBOX_ENV = {"AWAL_CLIENT_ID": "sandbox-client", "AWAL_DOMAIN": "sandbox.local",
               "AWAL_HMAC_SECRET": "sandbox-secret", "AWAL_PHONE_NUMBER_ID": "123456"}
FAIL_PREFIX = "96659"              # the sandbox answers 400 invalid_phone_number for these phones
TEMPLATE = {"body_text": "Hello {{name}}, spring offer inside", "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process in its own session with its output in a log file; killed by its own pid."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=log_path.parent, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self._log.close()

    def wait_for(self, text: str, timeout_s: float = 120.0) -> None:   # generous: a busy machine starts slowly
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if not self.alive():
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.log_path.name} never logged {text!r}:\n{self.log_path.read_text(errors='replace')[-3000:]}")


class PrivateRedis:
    """A redis-server of our own on a free port, without persistence: a restart loses everything."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None
        self.restarts = 0

    def start(self) -> "PrivateRedis":
        import redis

        self.proc = Proc(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--daemonize", "no"], self.workdir / f"redis-{self.port}.log")
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill(signal.SIGKILL)
            self.proc = None


class SandboxProcess:
    """`python -m worker.sandbox --port 0 ...`; its URL is the first line on stdout."""

    def __init__(self, workdir: Path, *args: str) -> None:
        from worker.sandbox import SandboxClient

        self._err = open(workdir / "sandbox.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.sandbox", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self._err, cwd=REPO_ROOT, start_new_session=True)
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"sandbox did not start: {self.url!r}")
        self.client = SandboxClient(self.url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._err.close()


@contextmanager
def fresh_postgres_database(admin_url: str, prefix: str = "chaos") -> Iterator[str]:
    """A new, migrated Postgres database for one run, dropped afterwards."""
    from worker.db import upgrade

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"buttoncast_{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@dataclass
class ChaosConfig:
    recipients: int = 300
    rate_per_s: float = 15.0           # AWAL_RATE_LIMIT: sets how long the campaign runs
    workers: int = 3
    concurrency: int = 8
    worker_kills: int = 4
    error_rate_503: float = 0.10
    drop_rate: float = 0.05
    timeout_rate: float = 0.02
    fail_share: float = 0.02           # recipients whose phone the vendor rejects (400): permanent failures
    latency_ms: float = 150.0          # keeps requests in flight, so kills land mid-request
    read_timeout_s: float = 1.0
    burst_every_s: float = 5.0         # a 429 burst this often
    burst_s: float = 1.0
    deadline_s: float = 170.0
    seed: int = 20260301
    broker_flush: bool = False         # issue 12 item 12: FLUSHDB the broker's Redis mid-campaign too
    db_outage_s: float = 0.0           # issue 12 item 13: cut every process off Postgres for this long
    # Issue 25, the fault sequence: when kill_every_s > 0 the SIGKILLs (each of the worker that has
    # run longest) come this far apart from first_kill_s after the first message is final (not at
    # random points of the progress), then the broker's db is flushed one interval after the last
    # one; a Redis restart and a beat kill only if asked.
    kill_every_s: float = 0.0
    first_kill_s: float = 1.0
    redis_restart: bool = True
    beat_restart: bool = True
    final_within_s: float | None = None  # a problem when a recipient is not final this long after the last fault
    extra_env: dict[str, str] = field(default_factory=dict)   # overrides of the processes' settings
    pg_admin_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    workdir: Path = field(default_factory=lambda: Path("/tmp") / f"buttoncast-chaos-{uuid.uuid4().hex[:6]}")


@dataclass
class ChaosReport:
    recipients: int = 0
    duration_s: float = 0.0
    finished: bool = False
    db_counts: dict[str, int] = field(default_factory=dict)
    unknown_by_reason: dict[str, int] = field(default_factory=dict)
    unknown_vendor_acted: int = 0      # unknown, and the sandbox did act on it (timeout, or a 200 we never recorded)
    sandbox_counts: dict[str, int] = field(default_factory=dict)
    phones_with_200: int = 0
    phones_with_timeout: int = 0
    max_records_per_phone: int = 0
    duplicates: list[str] = field(default_factory=list)
    worker_kills: int = 0
    killed_while_sending: int = 0
    redis_restarts: int = 0
    beat_restarts: int = 0
    bursts_429: int = 0
    self_exits: int = 0                # workers that exited on their own (broker watchdog) and were restarted
    broker_losses: list[dict] = field(default_factory=list)   # {"fault", "back_at", "lost_phones"} per broker loss
    broker_back_to_resend_s: dict[str, float | None] = field(default_factory=dict)
    db_outages: int = 0
    unknown_with_200: int = 0          # unknown although the vendor's log shows it accepted (a 200)
    kills: list[dict] = field(default_factory=list)   # per SIGKILL: pid, at_s, in_flight ids, then ended_unknown
    last_fault_s: float | None = None  # seconds into the run of the last fault
    final_after_fault_s: float | None = None   # from the last fault until every recipient was final
    load_avg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end of the run
    unfinished: list[str] = field(default_factory=list)   # what a non-final recipient's row, attempts, events, journal say
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        c = self.db_counts
        return [
            f"chaos: {self.recipients} recipients in {self.duration_s:.1f}s ({'finished' if self.finished else 'NOT FINISHED'})",
            f"  chaos:    {self.worker_kills} worker SIGKILLs ({self.killed_while_sending} messages lost mid-request), "
            f"{self.redis_restarts} Redis restart(s), {self.beat_restarts} beat restart(s), {self.bursts_429} 429 burst(s), "
            f"{self.self_exits} worker(s) exited by the broker watchdog and restarted",
            f"  database: sent {c.get('sent', 0)}, failed {c.get('failed', 0)}, unknown {c.get('unknown', 0)}"
            f" (by reason {self.unknown_by_reason}), other {sum(v for k, v in c.items() if k not in ('sent', 'failed', 'unknown'))}",
            f"  sandbox:  {self.sandbox_counts}",
            f"  sandbox:  phones with a 200 {self.phones_with_200}, with a read timeout {self.phones_with_timeout}, "
            f"most records for one phone {self.max_records_per_phone}, duplicates {len(self.duplicates)}",
            f"  unknown the vendor did act on: {self.unknown_vendor_acted} (of which accepted with a 200: {self.unknown_with_200})",
            f"  broker losses: seconds from the broker back to the first republished send {self.broker_back_to_resend_s}; "
            f"database outages: {self.db_outages}",
            f"  per SIGKILL: " + "; ".join(f"#{n + 1} pid {k['pid']} at {k['at_s']:.1f}s: {len(k['in_flight'])} in flight, "
                                           f"{k.get('ended_unknown', '?')} ended unknown ({k.get('vendor_accepted', '?')} of them "
                                           f"accepted by the vendor)" for n, k in enumerate(self.kills)),
            f"  every recipient final {self.final_after_fault_s if self.final_after_fault_s is None else round(self.final_after_fault_s, 1)}"
            f" s after the last fault; load average {self.load_avg[0]:.1f} -> {self.load_avg[1]:.1f}",
            f"  problems: {len(self.problems)}" + "".join(f"\n    - {p}" for p in self.problems[:30]),
        ] + self.unfinished


def _env(cfg: ChaosConfig, database_url: str, sandbox_url: str, broker_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWAL_", "CELERY_", "REDIS_", "DATABASE_"))}
    env.update(SANDBOX_ENV)
    env.update(
        DATABASE_URL=database_url, AWAL_BASE_URL=sandbox_url, CELERY_BROKER_URL=broker_url, METRICS_PORT="0",
        PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT),
        AWAL_RATE_LIMIT=f"{cfg.rate_per_s:g}/s", AWAL_RATE_BURST=str(max(1, int(cfg.rate_per_s // 5))),
        QUEUED_TASK_TIMEOUT_S="5", SENDING_TIMEOUT_S="8", DISPATCH_INTERVAL_S="0.5", SWEEP_INTERVAL_S="1",
        SEND_READ_TIMEOUT_S=str(cfg.read_timeout_s), SEND_CONNECT_TIMEOUT_S="1", SEND_RETRY_ATTEMPTS="2",
        SEND_RETRY_MAX_WAIT_S="0.1", MESSAGE_MAX_ATTEMPTS="2", REQUEUE_BACKOFF_BASE_S="0.5",
        REQUEUE_BACKOFF_MAX_S="3", RATE_WAIT_MAX_S="2", RECORD_RETRY_MAX_S="5", AUTO_PAUSE_CONSECUTIVE_FAILURES="1000",
        # The fault mix (5 % drops, 2 % stalls, a 429 burst every 5 s) is meant to be sent through, not
        # to stop the campaign: with 64 threads a 429 burst catches enough drops in a row to reach the
        # default 10-unknown streak. The auto-pauses have their own tests (tests/webhooks/test_replies.py).
        AUTO_PAUSE_CONSECUTIVE_UNKNOWN="1000",
        BROKER_STALL_EXIT_S="10", BEAT_LOCK_TTL_S="3",
    )
    env.update(cfg.extra_env)
    return env


def _write_recipients(cfg: ChaosConfig, rng: random.Random) -> Path:
    path = cfg.workdir / "recipients.csv"
    with open(path, "w") as f:
        f.write("phone,name\n")
        for i in range(cfg.recipients):
            prefix = FAIL_PREFIX if rng.random() < cfg.fail_share else "96650"
            f.write(f"{prefix}{i:07d},R{i}\n")
    return path


class Stack:
    """The running processes of one chaos run, and what was done to them."""

    def __init__(self, cfg: ChaosConfig, env: dict[str, str], redis: PrivateRedis) -> None:
        self.cfg, self.env, self.redis = cfg, env, redis
        self.workers: list[Proc | None] = [None] * cfg.workers
        self.started_at: list[float] = [0.0] * cfg.workers
        self.beat: Proc | None = None
        self.starts = 0
        self.killed_at: dict[int, float] = {}      # pid -> when it was SIGKILLed (unix time)
        self.proxy = None                          # tests.tcp_proxy.CuttableProxy when the database is cut
        self.sessions = None
        self.lost_phones: set[str] = set()

    def start_worker(self, slot: int, wait: bool = False) -> None:
        self.starts += 1
        proc = Proc([sys.executable, "-m", "worker.cli", "worker", "--processes", "1", "--concurrency", str(self.cfg.concurrency)],
                    self.cfg.workdir / f"worker-{slot}-{self.starts}.log", self.env)
        self.workers[slot] = proc
        self.started_at[slot] = time.monotonic()
        if wait:
            proc.wait_for("ready.")

    def kill_worker(self, slot: int) -> None:
        proc = self.workers[slot]
        if proc is not None:
            self.killed_at[proc.pid] = time.time()
            proc.kill(signal.SIGKILL)
            self.workers[slot] = None

    def start_beat(self) -> None:
        self.starts += 1
        self.beat = Proc([sys.executable, "-m", "worker.cli", "beat", "--schedule-file",
                          str(self.cfg.workdir / f"beat-schedule-{self.starts}")],
                         self.cfg.workdir / f"beat-{self.starts}.log", self.env)

    def stop_all(self) -> None:
        for slot in range(len(self.workers)):
            if self.workers[slot] is not None:
                self.workers[slot].kill(signal.SIGKILL)
                self.workers[slot] = None
        if self.beat is not None:
            self.beat.kill(signal.SIGKILL)
            self.beat = None


def _plan_chaos(cfg: ChaosConfig, rng: random.Random) -> list[tuple[float, str]]:
    """(share of recipients final, action): the chaos lands at random points of the campaign's progress.
    With kill_every_s: (seconds since the start, action), the issue-25 sequence."""
    if cfg.kill_every_s > 0:
        events = [(cfg.first_kill_s + n * cfg.kill_every_s, "kill_worker") for n in range(cfg.worker_kills)]
        last = cfg.first_kill_s + max(0, cfg.worker_kills - 1) * cfg.kill_every_s
        if cfg.broker_flush:
            events.append((last + cfg.kill_every_s, "flush_broker"))
        if cfg.redis_restart:
            events.append((last + 2 * cfg.kill_every_s, "kill_redis"))
        if cfg.beat_restart:
            events.append((last + 3 * cfg.kill_every_s, "kill_beat"))
        return sorted(events)
    events = [(rng.uniform(0.05, 0.8), "kill_worker") for _ in range(cfg.worker_kills)]
    if cfg.redis_restart:
        events.append((rng.uniform(0.3, 0.5), "kill_redis"))
    if cfg.beat_restart:
        events.append((rng.uniform(0.55, 0.75), "kill_beat"))
    if cfg.broker_flush:
        events.append((rng.uniform(0.15, 0.25), "flush_broker"))
    if cfg.db_outage_s > 0:
        events.append((rng.uniform(0.6, 0.7), "db_outage"))
    return sorted(events)


def run_chaos(cfg: ChaosConfig) -> ChaosReport:
    """Run the whole scenario and return its figures; `report.problems` lists every broken promise."""
    from scheduler.campaigns import create_with_recipients
    from worker.db import make_engine, make_session_factory

    cfg.workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)
    report = ChaosReport(recipients=cfg.recipients)
    load_at_start = os.getloadavg()[0]
    redis = PrivateRedis(cfg.workdir).start()
    sandbox = SandboxProcess(
        cfg.workdir, "--error-rate-503", str(cfg.error_rate_503), "--drop-rate", str(cfg.drop_rate),
        "--timeout-rate", str(cfg.timeout_rate), "--stall-s", str(cfg.read_timeout_s + 0.5),
        "--latency-ms", str(cfg.latency_ms), "--fail-phone-prefix", FAIL_PREFIX, "--seed", str(cfg.seed))
    stack: Stack | None = None
    proxy = None
    try:
        with fresh_postgres_database(cfg.pg_admin_url) as database_url:
            if cfg.db_outage_s > 0:   # the processes reach Postgres through a proxy the scenario cuts
                from tests.tcp_proxy import CuttableProxy

                url = sa.engine.make_url(database_url)
                proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
            env = _env(cfg, proxy.url_for(database_url) if proxy else database_url, sandbox.url, redis.url)
            engine = make_engine(database_url)
            sessions = make_session_factory(engine)
            stack = Stack(cfg, env, redis)
            stack.proxy, stack.sessions = proxy, sessions
            for slot in range(cfg.workers):
                stack.start_worker(slot, wait=True)
            campaign_id, _ = create_with_recipients(sessions, _write_recipients(cfg, rng), name="chaos",
                                                    phone_number_id="123456", template=TEMPLATE)
            stack.start_beat()
            started = time.monotonic()
            report.finished = _drive(cfg, stack, sandbox, sessions, campaign_id, rng, report, started)
            report.duration_s = time.monotonic() - started
            stack.stop_all()  # nothing moves while the end state is read
            late = report.final_after_fault_s
            if cfg.final_within_s is not None and late is not None and late > cfg.final_within_s:
                report.problems.append(f"every recipient final only {late:.1f} s after the last fault (> {cfg.final_within_s:g} s)")
            verify(sessions, campaign_id, sandbox.client, stack.killed_at, report)
            _time_to_resend(sandbox.client, report)
            _count_kills(sessions, report, sandbox.client.received())
            report.unfinished = dump_unfinished(sessions, campaign_id, redis.url if redis.proc else None, cfg.workdir)
            report.load_avg = (load_at_start, os.getloadavg()[0])
            engine.dispose()
    finally:
        if stack is not None:
            stack.stop_all()
        if proxy is not None:
            proxy.stop()
        sandbox.stop()
        redis.kill()
    return report


def _drive(cfg: ChaosConfig, stack: Stack, sandbox: SandboxProcess, sessions, campaign_id: int,  # noqa: ANN001
           rng: random.Random, report: ChaosReport, started: float) -> bool:
    """Fire the planned chaos while the campaign runs; True once every message is final."""
    plan = _plan_chaos(cfg, rng)
    restarts: list[tuple[float, str, int]] = []     # (when, what, worker slot)
    next_check = next_burst = 0.0
    progress = 0.0
    by_time = cfg.kill_every_s > 0
    sending_since: float | None = None   # by_time: the sequence's clock starts when the first message is final
    while True:
        now = time.monotonic() - started
        if now >= next_check:
            next_check = now + 0.25
            progress, done = _progress(sessions, campaign_id, cfg.recipients)
            if sending_since is None and progress > 0:
                sending_since = now
            if not plan and report.final_after_fault_s is None and progress >= 1.0:
                report.final_after_fault_s = now - (report.last_fault_s or 0.0)
            if done and not plan and not restarts:
                return True
        while plan and (now - sending_since >= plan[0][0] if by_time and sending_since is not None
                        else not by_time and plan[0][0] <= progress):
            restarts.append(_strike(plan.pop(0)[1], stack, rng, report, now))
            report.last_fault_s = now
        if (cfg.final_within_s is not None and not plan and report.final_after_fault_s is None
                and now - (report.last_fault_s or 0.0) > cfg.final_within_s + 5):
            report.problems.append(f"not every recipient final {cfg.final_within_s:g} s after the last fault")
            return False
        if now >= next_burst and progress < 0.9:
            sandbox.client.configure(force_429_for_s=cfg.burst_s, retry_after=1)
            report.bursts_429 += 1
            next_burst = now + cfg.burst_every_s
        for slot, proc in enumerate(stack.workers):  # the supervisor: a worker that exited is restarted
            if proc is not None and not proc.alive():
                report.self_exits += 1
                stack.killed_at.setdefault(proc.pid, time.time())
                stack.start_worker(slot)
        for item in [r for r in restarts if r[0] <= now]:
            restarts.remove(item)
            if item[1] == "none":
                continue
            {"worker": lambda: stack.start_worker(item[2]), "redis": lambda: _broker_back(stack, report),
             "beat": stack.start_beat, "db": lambda: stack.proxy.restore()}[item[1]]()
        if now > cfg.deadline_s:
            return False
        time.sleep(0.05)


def _strike(action: str, stack: Stack, rng: random.Random, report: ChaosReport, now: float) -> tuple[float, str, int]:
    """Kill one thing with SIGKILL; returns when and what to restart."""
    if action == "kill_worker":
        alive = [i for i, w in enumerate(stack.workers) if w is not None]
        # the sequence (issue 25) kills the worker that has run longest: a fresh one has little in flight
        slot = min(alive, key=lambda i: stack.started_at[i]) if stack.cfg.kill_every_s > 0 else rng.choice(alive)
        pid = stack.workers[slot].pid
        stack.kill_worker(slot)
        in_flight = _in_flight_of(stack.sessions, pid)   # once it is dead its `sending` rows are what it had in flight
        report.kills.append({"pid": pid, "at_s": now, "in_flight": in_flight})
        report.worker_kills += 1
        return now + rng.uniform(0.5, 2.0), "worker", slot
    if action == "kill_redis":
        stack.lost_phones = _phones_with_task_out(stack.sessions)
        stack.redis.kill()
        report.redis_restarts += 1
        return now + 1.5, "redis", -1
    if action == "flush_broker":   # the broker never leaves: back at once, empty
        import redis as redis_lib

        lost = _phones_with_task_out(stack.sessions)
        redis_lib.Redis.from_url(stack.redis.url).flushdb()
        report.broker_losses.append({"fault": "flush", "back_at": time.time(), "lost_phones": lost})
        return now, "none", -1
    if action == "db_outage":
        stack.proxy.cut()
        report.db_outages += 1
        return now + stack.cfg.db_outage_s, "db", -1
    stack.beat.kill(signal.SIGKILL)
    report.beat_restarts += 1
    return now + 1.0, "beat", -1


def _in_flight_of(sessions, pid: int) -> set[int]:  # noqa: ANN001
    """Ids of the messages a worker process has claimed and not recorded (its requests in flight)."""
    from worker.models import Message

    with sessions() as s:
        return set(s.scalars(sa.select(Message.id).where(Message.status == "sending",
                                                         Message.claimed_by == f"{socket.gethostname()}:{pid}")))


def _count_kills(sessions, report: ChaosReport, received: list[dict]) -> None:  # noqa: ANN001
    """Per SIGKILL: how many of its messages ended `unknown` (worker lost), how many of those the
    vendor had in fact accepted (a 200 in the sandbox's records), and what its in-flight ones became."""
    from worker.models import Message

    accepted = {r["phone"] for r in received if r["outcome"] == "sent"}
    with sessions() as s:
        for kill in report.kills:
            claimed_by = f"{socket.gethostname()}:{kill['pid']}"
            lost = s.scalars(sa.select(Message.phone).where(
                Message.claimed_by == claimed_by, Message.status == "unknown", Message.last_error_code == "worker_lost")).all()
            kill["ended_unknown"] = len(lost)
            kill["vendor_accepted"] = sum(1 for phone in lost if phone in accepted)
            kill["in_flight_became"] = dict(Counter(s.scalars(sa.select(Message.status).where(
                Message.id.in_(kill["in_flight"]))))) if kill["in_flight"] else {}


def dump_unfinished(sessions, campaign_id: int, redis_url: str | None, workdir: Path, limit: int = 5) -> list[str]:  # noqa: ANN001
    """For each recipient not final (at most `limit`): its row, attempts, events, what the broker and
    the outcome journal hold for it, and the log lines that name it: enough to find the path that left it."""
    from worker.models import Attempt, Campaign, Message, MessageEvent

    lines: list[str] = []
    with sessions() as s:
        ids = list(s.scalars(sa.select(Message.id).where(Message.campaign_id == campaign_id,
                                                         Message.status.in_(("pending", "queued", "sending")))
                             .order_by(Message.id).limit(limit)))
        if ids:
            campaign = s.execute(sa.select(Campaign.status, Campaign.finished_at, Campaign.updated_at)
                                 .where(Campaign.id == campaign_id)).one()
            lines.append(f"  NOT FINAL: campaign {campaign_id} is {campaign.status} (finished_at {campaign.finished_at}, "
                         f"updated_at {campaign.updated_at})")
        for mid in ids:
            row = s.execute(sa.select(Message).where(Message.id == mid)).scalar_one()
            cols = {a.key: getattr(row, a.key) for a in sa.inspect(Message).column_attrs if a.key != "content"}
            lines.append(f"  message {mid}: {cols}")
            for a in s.scalars(sa.select(Attempt).where(Attempt.message_id == mid).order_by(Attempt.id)):
                lines.append(f"    attempt {a.started_at:%H:%M:%S.%f} {a.worker} http={a.http_status} {a.outcome} "
                             f"{a.error_code} {a.vendor_message_id}")
            for e in s.scalars(sa.select(MessageEvent).where(MessageEvent.message_id == mid).order_by(MessageEvent.id)):
                lines.append(f"    event {e.at:%H:%M:%S.%f} {e.from_status} -> {e.to_status} by {e.actor}: {e.reason}")
    if ids and redis_url:
        lines += _broker_holds(redis_url, ids)
    for mid in ids:
        names_it = re.compile(rf"message(_id=| ){mid}\b")
        for log_path in sorted(workdir.glob("*.log")):
            for text in log_path.read_text(errors="replace").splitlines():
                if names_it.search(text):
                    lines.append(f"    {log_path.name}: {text[:300]}")
    return lines


def _broker_holds(redis_url: str, ids: list[int]) -> list[str]:
    """The outcome journal's entries and the broker's tasks (queued or unacked) for these ids."""
    import redis as redis_lib

    from worker.sending.journal import JOURNAL_KEY

    client = redis_lib.Redis.from_url(redis_url, socket_timeout=5)
    lines = []
    try:
        for field_, value in client.hgetall(JOURNAL_KEY).items():
            if int(field_.split(b":")[0]) in ids:
                lines.append(f"    journal {field_.decode()}: {value.decode()[:400]}")
        for key in client.keys("*"):
            kind = client.type(key)
            values = (client.lrange(key, 0, -1) if kind == b"list" else
                      list(client.hgetall(key).values()) if kind == b"hash" else [])
            for mid in ids:
                found = sum(1 for v in values if f'"argsrepr": "[{mid}]"'.encode() in v)
                if found:
                    lines.append(f"    broker {key.decode()} holds {found} task(s) for message {mid}")
        lines.append(f"    broker keys: {sorted(k.decode() for k in client.keys('*'))[:20]}")
    except redis_lib.RedisError as exc:
        lines.append(f"    broker/journal not readable: {exc}")
    return lines


def _phones_with_task_out(sessions) -> set[str]:  # noqa: ANN001
    """Phones whose message is `queued` with its task on the broker: what a broker loss takes."""
    from worker.models import Message

    with sessions() as s:
        return set(s.scalars(sa.select(Message.phone).where(Message.status == "queued", Message.enqueued_at.is_not(None))))


def _broker_back(stack: Stack, report: ChaosReport) -> None:
    stack.redis.start()
    report.broker_losses.append({"fault": "restart", "back_at": time.time(), "lost_phones": stack.lost_phones})


def _time_to_resend(vendor, report: ChaosReport) -> None:  # noqa: ANN001
    """Issue 12 item 12: seconds from the broker coming back to the vendor's first request for a
    message whose task the loss took (the sandbox's own clock of what it received)."""
    received = vendor.received()
    for n, loss in enumerate(report.broker_losses):
        times = [r["received_at"] for r in received if r["phone"] in loss["lost_phones"] and r["received_at"] >= loss["back_at"]]
        report.broker_back_to_resend_s[f"{loss['fault']}#{n} ({len(loss['lost_phones'])} lost)"] = (
            round(min(times) - loss["back_at"], 2) if times else None)


def _progress(sessions, campaign_id: int, recipients: int) -> tuple[float, bool]:  # noqa: ANN001
    """(share of recipients in a final state, whether the campaign is completed with nothing in flight)."""
    from worker.models import Campaign, Message

    with sessions() as s:
        counts = dict(s.execute(sa.select(Message.status, sa.func.count()).where(Message.campaign_id == campaign_id)
                                .group_by(Message.status)).all())
        status = s.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id))
    busy = sum(counts.get(k, 0) for k in ("pending", "queued", "sending"))
    return (recipients - busy) / max(1, recipients), busy == 0 and status == "completed"


def verify(sessions, campaign_id: int, vendor, killed_at: dict[int, float], report: ChaosReport) -> None:  # noqa: ANN001
    """Check the end state against the sandbox's records; fill the report's figures and problems."""
    from worker.models import Attempt, Message, MessageEvent

    with sessions() as s:
        rows = s.execute(sa.select(Message.id, Message.phone, Message.status, Message.last_error_code,
                                   Message.claimed_by, Message.vendor_message_id, Message.sending_at)
                         .where(Message.campaign_id == campaign_id)).all()
        sent_attempts = dict(s.execute(sa.select(Attempt.message_id, Attempt.vendor_message_id)
                                       .join(Message, Message.id == Attempt.message_id)
                                       .where(Message.campaign_id == campaign_id, Attempt.outcome == "sent")).all())
        outcomes = defaultdict(set)
        for mid, outcome in s.execute(sa.select(Attempt.message_id, Attempt.outcome).join(Message, Message.id == Attempt.message_id)
                                      .where(Message.campaign_id == campaign_id)):
            outcomes[mid].add(outcome)
        swept = dict(s.execute(sa.select(MessageEvent.message_id, MessageEvent.at).join(Message, Message.id == MessageEvent.message_id)
                               .where(Message.campaign_id == campaign_id, MessageEvent.to_status == "unknown")).all())
    stats = vendor.stats()
    records = defaultdict(list)
    for record in vendor.received():
        records[record["phone"]].append(record)
    report.sandbox_counts = dict(sorted(stats["counts"].items()))
    report.db_counts = dict(Counter(r.status for r in rows))
    report.unknown_by_reason = dict(Counter(r.last_error_code for r in rows if r.status == "unknown"))
    report.phones_with_200 = sum(1 for recs in records.values() if any(x["outcome"] == "sent" for x in recs))
    report.phones_with_timeout = sum(1 for recs in records.values() if any(x["outcome"] == "timeout" for x in recs))
    report.max_records_per_phone = max((len(v) for v in records.values()), default=0)
    report.duplicates = sorted(phone for phone, recs in records.items() if len(recs) > 1)
    problems = report.problems
    if len(rows) != report.recipients:
        problems.append(f"{len(rows)} message rows for {report.recipients} recipients")
    for phone in report.duplicates:
        problems.append(f"DUPLICATE: phone {phone} received {len(records[phone])} times: {[r['outcome'] for r in records[phone]]}")
    dropped_unknown = 0
    for r in rows:
        recs = records.get(r.phone, [])
        if r.status == "sent":
            if len(recs) != 1 or recs[0]["outcome"] != "sent" or recs[0]["message_id"] != r.vendor_message_id:
                problems.append(f"message {r.id} sent but the sandbox has {[(x['outcome'], x['message_id']) for x in recs]} (stored {r.vendor_message_id})")
            if sent_attempts.get(r.id) != r.vendor_message_id:
                problems.append(f"message {r.id} sent without a 'sent' attempt row carrying its messageId")
        elif r.status == "failed":
            if recs:
                problems.append(f"message {r.id} failed but the sandbox acted on it: {[x['outcome'] for x in recs]}")
            if not outcomes.get(r.id):
                problems.append(f"message {r.id} failed with no attempt row to explain it")
        elif r.status == "unknown":
            if recs:
                report.unknown_vendor_acted += 1
            if len(recs) > 1:
                problems.append(f"message {r.id} unknown and received {len(recs)} times")
            reason = _unknown_unexplained(r, recs, killed_at, swept.get(r.id))
            if reason:
                problems.append(reason)
            if r.last_error_code == "worker_lost":
                report.killed_while_sending += 1
            if r.last_error_code == "connection_dropped":
                dropped_unknown += 1
            if r.id not in swept and "AmbiguousError" not in outcomes.get(r.id, set()):
                problems.append(f"message {r.id} unknown with neither an ambiguous attempt nor a status event")
        else:
            problems.append(f"message {r.id} ended {r.status}, not sent/failed/unknown")
    if dropped_unknown > stats["counts"].get("drop", 0):
        problems.append(f"{dropped_unknown} unknown after a dropped connection but the sandbox dropped only {stats['counts'].get('drop', 0)}")
    acted_unknown_200 = sum(1 for r in rows if r.status == "unknown" and any(x["outcome"] == "sent" for x in records.get(r.phone, [])))
    report.unknown_with_200 = acted_unknown_200
    if report.phones_with_200 != report.db_counts.get("sent", 0) + acted_unknown_200:
        problems.append(f"sandbox 200s for {report.phones_with_200} phones != sent {report.db_counts.get('sent', 0)} + unknown-with-200 {acted_unknown_200}")
    by_phone = {r.phone: r.status for r in rows}
    for phone, recs in records.items():
        if any(x["outcome"] == "timeout" for x in recs) and by_phone.get(phone) != "unknown":
            problems.append(f"phone {phone}: the sandbox stalled its request but the message is {by_phone.get(phone)}")


def _unknown_unexplained(row, recs: list[dict], killed_at: dict[int, float], swept_at) -> str | None:  # noqa: ANN001
    """Why the vendor may have acted on this unknown message; a line if nothing explains it."""
    code = row.last_error_code
    if code == "read_timeout":
        return None if any(x["outcome"] == "timeout" for x in recs) else f"message {row.id} unknown after a read timeout the sandbox never stalled"
    if code == "connection_dropped":
        return None  # counted against the sandbox's drops by the caller
    if code == "worker_lost":
        # Explained only if this scenario SIGKILLed its worker after the claim and before the sweep.
        pid = int(str(row.claimed_by).rsplit(":", 1)[-1]) if row.claimed_by and ":" in str(row.claimed_by) else None
        killed = killed_at.get(pid)
        if killed is not None and row.sending_at.timestamp() - 1 <= killed <= (swept_at.timestamp() if swept_at else killed):
            return None
        return (f"message {row.id} marked unknown (worker lost) but its worker {row.claimed_by} was alive from its claim at "
                f"{row.sending_at:%H:%M:%S.%f} to the sweep at {swept_at:%H:%M:%S.%f} (killed at {killed}); "
                f"the sandbox has {[x['outcome'] for x in recs]} for it")
    return f"message {row.id} unknown with unexpected reason {code!r}; sandbox {[x['outcome'] for x in recs]}"
