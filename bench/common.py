"""Shared helpers for the throughput benches: private services, bulk rows, worker processes, figures.

Every bench runs against its own scratch Postgres database (dropped after) and its own
redis-server on a free port (stopped after), so it neither disturbs nor is disturbed by other
people's tests on the shared services; only CPU is shared, which is why each bench measures its
baseline in the same run and prints the load average.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
PG_ADMIN_URL = os.environ.get("BUTTONCAST_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SANDBOX_ENV = {"AWAL_CLIENT_ID": "sandbox-client", "AWAL_DOMAIN": "sandbox.local",
               "AWAL_HMAC_SECRET": "sandbox-secret", "AWAL_PHONE_NUMBER_ID": "123456"}
CONTENT = {"header_text": None, "body_text": "Hello! Your store has 20% off everything this weekend.",
           "footer_text": "Reply STOP to opt out",
           "buttons": [{"id": "reserve", "title": "Reserve a slot"}, {"id": "later", "title": "Maybe later"}]}
NOOP_TASK = "bench.noop"
NOOP_QUEUE = "bench.noop"
UNACKED_KEY = "unacked"   # kombu's Redis transport: delivered, not yet acknowledged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def ratio_line(what: str, ours: float, baseline: float, unit: str, goal: str) -> str:
    ratio = ours / baseline if baseline else float("inf")
    return f"{what}: buttoncast {ours:,.0f} {unit}, baseline {baseline:,.0f} {unit}, ratio {ratio:.2f} (goal {goal})"


# --- services ------------------------------------------------------------------------------------

@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port, no persistence; stopped afterwards."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def scratch_postgres(prefix: str = "bench"):  # noqa: ANN201 - a context manager yielding the URL
    """A freshly migrated Postgres database, dropped afterwards (the chaos scenario's helper)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.chaos_scenario import fresh_postgres_database

    return fresh_postgres_database(PG_ADMIN_URL, prefix)


@contextmanager
def sandbox(latency_ms: float = 0.0, *extra: str) -> Iterator[str]:
    """The Awal sandbox in its own process; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "worker.sandbox", "--port", "0", "--latency-ms", str(latency_ms), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    try:
        yield proc.stdout.readline().strip()  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(10)


# --- rows ----------------------------------------------------------------------------------------

def insert_campaign(database_url: str, recipients: int, *, status: str = "running", message_status: str = "pending",
                    enqueued: bool = False) -> int:
    """A campaign with `recipients` messages in one INSERT ... SELECT generate_series (Postgres)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            campaign_id = conn.execute(sa.text(
                "INSERT INTO campaigns (name, phone_number_id, template, status, scheduled_at, consecutive_failures,"
                " recipients_imported, rows_rejected, created_at, started_at, updated_at)"
                " VALUES ('bench', '123456', CAST(:t AS json), :s, now() at time zone 'utc', 0, :n, 0,"
                " now() at time zone 'utc', now() at time zone 'utc', now() at time zone 'utc') RETURNING id"),
                {"t": json.dumps(CONTENT), "s": status, "n": recipients}).scalar_one()
            add_messages(conn, campaign_id, recipients, status=message_status, enqueued=enqueued)
    finally:
        engine.dispose()
    return campaign_id


def add_messages(conn: sa.Connection, campaign_id: int, count: int, *, status: str, enqueued: bool, first_phone: int = 0) -> None:
    now = "now() at time zone 'utc'"
    conn.execute(sa.text(
        "INSERT INTO messages (campaign_id, phone_number_id, phone, content, status, attempts, created_at, updated_at,"
        " queued_at, enqueued_at)"
        f" SELECT :c, '123456', (966500000000 + :p + g)::text, CAST(:content AS json), :s, 0, {now}, {now},"
        f" CASE WHEN :q THEN {now} END, CASE WHEN :e THEN {now} END"
        " FROM generate_series(1, :n) AS g"),
        {"c": campaign_id, "content": json.dumps(CONTENT), "s": status, "q": status == "queued", "e": enqueued, "n": count, "p": first_phone})
    conn.execute(sa.text("ANALYZE messages"))


def queued_message_ids(database_url: str, count: int) -> list[int]:
    """`count` messages of one running campaign, queued as the dispatcher leaves them (task out), in
    id order: the bench pushes their tasks itself."""
    campaign_id = insert_campaign(database_url, count, message_status="queued", enqueued=True)
    return ids_with_status(database_url, campaign_id, "queued")


def check_all_sent(database_url: str, expected: int) -> str:
    """Fail the bench unless every message ended `sent`; returns a line with the counts per status
    and the connections still open on the database (a leak would show here)."""
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.text("SELECT status, count(*) FROM messages GROUP BY status")).all())
        connections = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")).scalar()
        errors = conn.execute(sa.text(
            "SELECT status, last_error_code, left(last_error_message, 160), count(*) FROM messages"
            " WHERE status <> 'sent' GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 5")).all()
    engine.dispose()
    if counts.get("sent") != expected:
        detail = "; ".join(f"{n}x {status} {code}: {text}" for status, code, text, n in errors)
        raise SystemExit(f"expected {expected} sent, got {counts} ({detail})")
    return f"  message statuses after the run: {counts} (connections left on the database: {connections})"


def ids_with_status(database_url: str, campaign_id: int, status: str) -> list[int]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT id FROM messages WHERE campaign_id = :c AND status = :s ORDER BY id"),
                                     {"c": campaign_id, "s": status}).scalars())
    finally:
        engine.dispose()


# --- processes -----------------------------------------------------------------------------------

def stack_env(*, database_url: str, broker_url: str, sandbox_url: str, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWAL_", "CELERY_", "REDIS_", "DATABASE_"))}
    env.update(SANDBOX_ENV)
    env.update(DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, AWAL_BASE_URL=sandbox_url,
               METRICS_PORT="0", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


#: a rate limit no bench send ever waits for: the figures are buttoncast's own cost, not pacing
UNTHROTTLED = {"AWAL_RATE_LIMIT": "100000/s", "AWAL_RATE_BURST": "1000"}


class Processes:
    """Worker processes started by a bench; each is stopped by its own pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.log_dir = Path(tempfile.mkdtemp(prefix="buttoncast-bench-"))

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"proc-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def buttoncast_worker(self, env: dict[str, str], concurrency: int, queues: str = "buttoncast.campaign") -> subprocess.Popen:
        """ONE Celery worker process (`--processes 1`: the bench counts and measures its processes)."""
        return self.start([sys.executable, "-m", "worker.cli", "worker", "--processes", "1", "--concurrency", str(concurrency),
                           "--queues", queues, "--loglevel", "WARNING"], env)

    def noop_worker(self, broker_url: str, concurrency: int) -> subprocess.Popen:
        """A stock Celery worker running a do-nothing task, same pool and Celery settings as ours."""
        env = dict(os.environ, BENCH_NOOP_BROKER_URL=broker_url, PYTHONPATH=str(BENCH_DIR))
        return self.start([sys.executable, "-m", "celery", "-A", "common:noop_app", "worker", "--pool", "threads",
                           "--concurrency", str(concurrency), "--queues", NOOP_QUEUE, "--loglevel", "WARNING",
                           "--without-gossip", "--without-mingle"], env)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()

    def tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, exc_type: type | None, *_exc: object) -> None:
        """A bench that timed out shows the tail of every process's log; all are stopped either way."""
        if exc_type is not None and issubclass(exc_type, TimeoutError):
            print(self.tail())
        self.cleanup()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    return sum(cpu_split_s(pid))


def cpu_split_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (a supervised `buttoncast worker`'s children), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def tree_cpu_s(pid: int, *, system_only: bool = False) -> float:
    """User + system (or system only) CPU seconds of `pid` and its descendants."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            user, system = cpu_split_s(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += system if system_only else user + system
    return total


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (user + system, all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def component_cpu_s() -> dict[str, float]:
    """CPU seconds so far of the processes a send involves besides the workers, by name: Postgres
    (every postgres process: backends, WAL writer, checkpointer), the sandbox, the bench's vendor
    stand-in, redis-server."""
    totals = {"postgres": 0.0, "sandbox": 0.0, "redis": 0.0, "vendor stand-in": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            cpu = cpu_s(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if comm == "postgres":
            totals["postgres"] += cpu
        elif b"worker.sandbox" in cmdline:
            totals["sandbox"] += cpu
        elif b"vendor_standin.py" in cmdline:
            totals["vendor stand-in"] += cpu
        elif comm == "redis-server":
            totals["redis"] += cpu
    return totals


# --- broker --------------------------------------------------------------------------------------

def push_tasks(broker_url: str, ids: list[int], queue: str, task: str | None = None) -> None:
    """Put send tasks (or the no-op task) on a Redis queue through buttoncast's fast publish path."""
    import redis

    from worker.queues import TASK_SEND
    from worker.sending.publish import LPUSH_CHUNK, task_message

    client = redis.Redis.from_url(broker_url)
    origin = f"bench@{socket.gethostname()}"
    with client.pipeline(transaction=False) as pipe:
        for start in range(0, len(ids), LPUSH_CHUNK):
            pipe.lpush(queue, *(task_message(i, queue, origin=origin, task=task or TASK_SEND)
                                for i in ids[start:start + LPUSH_CHUNK]))
        pipe.execute()


def wait_drained(broker_url: str, queue: str, *, timeout_s: float = 600.0, poll_s: float = 0.02) -> float:
    """Block until `queue` is empty and nothing is unacknowledged; returns the monotonic time then."""
    import redis

    client = redis.Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        pipe.llen(queue)
        pipe.hlen(UNACKED_KEY)
        if pipe.execute() == [0, 0]:
            return time.monotonic()
        time.sleep(poll_s)
    raise TimeoutError(f"{queue} not drained after {timeout_s}s")


# --- the stock baseline --------------------------------------------------------------------------

def make_noop_app(broker_url: str):  # noqa: ANN201 - celery.Celery
    """A plain Celery app with buttoncast's Celery settings and a task that does nothing."""
    from celery import Celery

    from worker.celery_app import PREFETCH_MULTIPLIER, VISIBILITY_TIMEOUT_S

    app = Celery("bench", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True, task_acks_late=True,
                    task_reject_on_worker_lost=True, worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
                    worker_hijack_root_logger=False, worker_send_task_events=False,
                    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S})

    @app.task(name=NOOP_TASK)
    def noop(message_id: int) -> None:
        return None

    return app


if os.environ.get("BENCH_NOOP_BROKER_URL"):   # `celery -A common:noop_app worker` in Processes.noop_worker
    noop_app = make_noop_app(os.environ["BENCH_NOOP_BROKER_URL"])


# --- profiles ------------------------------------------------------------------------------------

def start_profile(pid: int, duration_s: int, out_path: Path) -> subprocess.Popen | None:
    """py-spy (if installed) sampling one worker process: only the thread holding the GIL, i.e. where
    its Python CPU goes (threads waiting on sockets or the database are not counted)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("  (py-spy not installed: no profile)")
        return None
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "250",
                             "--format", "raw", "--gil", "--nonblocking", "--output", str(out_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 25, prefixes: tuple[str, ...] = ()) -> str:
    """Inclusive and self (leaf) shares of samples per function from py-spy's raw (collapsed) output."""
    from collections import Counter

    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():   # a line py-spy was still writing when it stopped
            continue
        n = int(count)
        total += n
        seen = set()
        names = []
        for frame in stack.split(";"):
            name = frame.split(" (", 1)[0] + " (" + frame.split(" (", 1)[-1].split(":")[0].rsplit("/", 1)[-1]
            if prefixes and not any(p in frame for p in prefixes):
                continue
            names.append(name)
            if name not in seen:
                seen.add(name)
                inclusive[name] += n
        if names:
            leaf[names[-1]] += n
    rows = [f"    {100 * n / total:5.1f}%  {name})" for name, n in inclusive.most_common(top)]
    leaves = [f"    {100 * n / total:5.1f}%  {name})" for name, n in leaf.most_common(top // 2)]
    return (f"  {total} samples; inclusive share per function:\n" + "\n".join(rows)
            + "\n  self share (the function itself was running):\n" + "\n".join(leaves))
