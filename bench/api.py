"""HTTP API bench: POST /v1/messages with 16 concurrent clients vs the Python enqueue_message() loop.

    .venv/bin/python bench/api.py [--messages 3000] [--clients 16] [--workers 1]
    .venv/bin/python bench/api.py --upload-rows 1000000      # + a 1,000,000-row CSV upload: the API's peak RSS

Both paths store and publish the same message (validate, INSERT, publish to Redis) against one
scratch Postgres database and a private redis-server; no worker runs, so the figures are the cost of
taking a message in. The loop runs in this process on one thread; the API is a real `buttoncast api`
process driven by aiohttp clients in this process. "Per core" divides by the CPU seconds the
enqueuing process itself spent (the loop: this process; the API: the server process, read from
/proc), so the load generator's own CPU is not charged to the API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, Processes, free_port, load_line, private_redis, scratch_postgres, stack_env  # noqa: E402

BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_REQUESTS = 100


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def body(i: int) -> dict:
    return {"phone": f"9665{i:08d}", "body_text": f"Your order {i} has shipped", "buttons": BUTTONS}


def enqueue_loop(env: dict[str, str], count: int) -> tuple[float, float]:
    """(messages/s wall, messages per CPU second) of enqueue_message() in a loop, in this process."""
    from worker.runtime import Runtime, install_runtime
    from worker.sending.enqueue import enqueue_message
    from worker.settings import Settings

    runtime = Runtime(Settings.from_env(env))
    install_runtime(runtime)
    enqueue_message(**body(0), runtime=runtime)  # warm: connections, prepared statements
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(1, count + 1):
        enqueue_message(**body(i), idempotency_key=f"loop-{i}", runtime=runtime)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    runtime.close()
    return count / wall, count / cpu


async def drive(base_url: str, key: str, count: int, clients: int, offset: int, server_pids: list[int]) -> tuple[float, float, list[float]]:
    """(wall seconds, server CPU seconds, latencies) of `count` POSTs by `clients` concurrent clients."""
    import aiohttp

    latencies: list[float] = []
    next_index = iter(range(offset, offset + WARMUP_REQUESTS))
    headers = {"Authorization": f"Bearer {key}"}

    async def client(session: aiohttp.ClientSession) -> None:
        for i in next_index:
            t = time.perf_counter()
            async with session.post("/v1/messages", json=body(i), headers={**headers, "Idempotency-Key": f"api-{i}"}) as r:
                await r.read()
                if r.status != 202:
                    raise SystemExit(f"POST /v1/messages answered {r.status}: {await r.text()}")
            latencies.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url, connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))  # warm the pools and the threads
        latencies.clear()
        next_index = iter(range(offset + WARMUP_REQUESTS, offset + WARMUP_REQUESTS + count))
        cpu0, t0 = sum(cpu_seconds(p) for p in server_pids), time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return time.perf_counter() - t0, sum(cpu_seconds(p) for p in server_pids) - cpu0, latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def start_api(procs: Processes, env: dict[str, str], workers: int) -> tuple[str, subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = procs.start([sys.executable, "-m", "worker.cli", "api", "--port", str(port), "--workers", str(workers)], env)
    base_url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise SystemExit("the API never answered /healthz:\n" + procs.tail())
    made = subprocess.run([sys.executable, "-m", "worker.cli", "apikey", "create", "--name", "bench", "--scope", "admin"],
                          env=env, capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    return base_url, proc, made.stdout.strip().splitlines()[-1]


def generate_csv(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("phone,name,city\n")
        for i in range(rows):
            fh.write(f"+966 5{i:08d},Name{i % 97},City{i % 13}\n")


def upload(base_url: str, key: str, pid: int, rows: int) -> None:
    import httpx

    path = Path(f"/tmp/buttoncast-bench-upload-{uuid.uuid4().hex[:8]}.csv")
    generate_csv(path, rows)
    try:
        before = rss_mb(pid, "VmRSS")
        message = '{"body_text": "Hello {{name}} in {{city}}", "buttons": [{"id": "go", "title": "Go"}]}'
        t0 = time.perf_counter()
        with open(path, "rb") as fh:
            r = httpx.post(base_url + "/v1/campaigns", headers={"Authorization": f"Bearer {key}"}, timeout=3600,
                           data={"name": "bench upload", "message": message, "draft": "true"},
                           files={"recipients": ("recipients.csv", fh, "text/csv")})
        elapsed = time.perf_counter() - t0
        if r.status_code != 201:
            raise SystemExit(f"upload answered {r.status_code}: {r.text[:500]}")
        report = r.json()
        print(f"upload of {rows:,} rows ({path.stat().st_size / 1e6:.1f} MB): {elapsed:.1f} s, {rows / elapsed:,.0f} rows/s; "
              f"imported {report['imported']:,}; API process RSS before {before:.0f} MB, peak (VmHWM) {rss_mb(pid, 'VmHWM'):.0f} MB")
    finally:
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="API server processes")
    parser.add_argument("--upload-rows", type=int, default=0, help="also upload a CSV this long and report the API's peak RSS")
    args = parser.parse_args()
    print(load_line())
    with scratch_postgres("bench_api") as database_url, private_redis() as broker_url:
        env = stack_env(database_url=database_url, broker_url=broker_url, sandbox_url="http://127.0.0.1:9", LOG_FORMAT="text")
        procs = Processes()
        try:
            base_url, proc, key = start_api(procs, env, args.workers)
            if args.upload_rows:
                upload(base_url, key, proc.pid, args.upload_rows)
            loop_rate, loop_per_cpu = enqueue_loop(env, args.messages)
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            server_pids = [proc.pid] + [int(c) for c in children]
            wall, api_cpu, latencies = asyncio.run(drive(base_url, key, args.messages, args.clients, 1_000_000, server_pids))
        finally:
            procs.stop()
    api_rate, api_per_cpu = args.messages / wall, args.messages / api_cpu
    print(f"enqueue_message() loop: {loop_rate:,.0f} msg/s wall, {loop_per_cpu:,.0f} msg per CPU second (one thread)")
    print(f"POST /v1/messages, {args.clients} clients, {args.workers} server process(es): {api_rate:,.0f} req/s wall, "
          f"{api_per_cpu:,.0f} req per server CPU second; latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
    print(f"per core: API / loop = {api_per_cpu / loop_per_cpu:.2f} (goal >= 0.5); wall: {api_rate / loop_rate:.2f}")
    print(load_line())


if __name__ == "__main__":
    main()
