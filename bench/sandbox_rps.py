"""How many signed send requests per second the Awal sandbox serves (a script, not a test).

Starts `python -m worker.sandbox --port 0` in a subprocess, then `--loaders` load processes each
keep `--concurrency / --loaders` keep-alive aiohttp connections busy for `--duration` seconds,
signing every request properly (fresh timestamp, HMAC over path, query and body). Prints requests/s
and the status counts. Example:

    .venv/bin/python bench/sandbox_rps.py --concurrency 64 --duration 10 --loaders 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import subprocess
import sys
import time
from collections import Counter

import aiohttp

from worker.sandbox.client import signed_headers

SECRET = "bench-secret"
MESSAGE = {"phone": "96650000000", "body_text": "Benchmark message",
           "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]}


async def _load(url: str, connections: int, duration_s: float) -> Counter[str]:
    body = json.dumps(MESSAGE, separators=(",", ":")).encode()
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + duration_s
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                headers = signed_headers(url=url, body=body, secret=SECRET,
                                         client_id="sandbox-client", domain="sandbox.local")
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        statuses[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


def _loader(url: str, connections: int, duration_s: float, out: "multiprocessing.Queue[dict]") -> None:
    out.put(dict(asyncio.run(_load(url, connections, duration_s))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections in all")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--loaders", type=int, default=1, help="load-generating processes")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sandbox latency fault")
    args = parser.parse_args()

    sandbox = subprocess.Popen(
        [sys.executable, "-m", "worker.sandbox", "--port", "0", "--secret", SECRET,
         "--latency-ms", str(args.latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        base_url = sandbox.stdout.readline().strip()  # type: ignore[union-attr]
        url = f"{base_url}/w/message/button?phone_number_id=123456"
        queue: multiprocessing.Queue[dict] = multiprocessing.Queue()
        per_loader = max(1, args.concurrency // args.loaders)
        loaders = [multiprocessing.Process(target=_loader, args=(url, per_loader, args.duration, queue))
                   for _ in range(args.loaders)]
        began = time.monotonic()
        for p in loaders:
            p.start()
        totals: Counter[str] = Counter()
        for _ in loaders:
            totals.update(queue.get())
        elapsed = time.monotonic() - began
        for p in loaders:
            p.join()
        stats = json.loads(aiohttp_get(base_url + "/_sandbox/stats"))
        accepted = stats["accepted"]
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    requests_done = sum(totals.values())
    print(f"sandbox {base_url}: {requests_done} requests in {elapsed:.1f}s with {per_loader * args.loaders}"
          f" keep-alive connections from {args.loaders} loader process(es)")
    print(f"statuses: {dict(totals)}; sandbox recorded {accepted} accepted")
    print(f"requests/s: {requests_done / elapsed:,.0f}")


def aiohttp_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


if __name__ == "__main__":
    main()
