"""Issue 12 item 14, issue 25 item 9: what an abusive client costs the running webhook receiver
(a script, not a test).

Starts `python -m worker.webhooks --port 0` with its DEFAULT limits (WEBHOOK_CONNECTION_LIMIT,
WEBHOOK_CLIENT_TIMEOUT_S, WEBHOOK_REQUEST_DEADLINE_S are never raised here: the default is what is
measured) on a SQLite scratch database, and measures over raw sockets:
- the time to the 413 for a POST declaring a 64 MiB Content-Length, sending none of the body;
- /healthz latency (median, p95, max of `--probes` requests) with 0 idle clients, then with
  `--idle` connections open that never send a byte: both in the same run, so the ratio is fair;
- the time to answer a signed event while `--trickle` unauthenticated clients (past the default
  connection limit) each send a header byte every second, never silent long enough to time out;
- that `--partial` connections stuck mid-body (more than select()'s 1,024 descriptors) leave it
  alive and answering.

    .venv/bin/python bench/webhook_abuse.py --idle 300 --trickle 1050 --partial 1100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_line  # noqa: E402
from worker.signing import sign_body  # noqa: E402

BIG_BODY_BYTES = 64 * 1024 * 1024
SECRET = "bench-secret"
TRICKLE_HEAD = b"POST /webhooks/awal HTTP/1.1\r\nHost: bench\r\nX-Pad: "


def request(host: str, port: int, raw: bytes, timeout_s: float = 10.0) -> tuple[int, float]:
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return (int(data.split(b" ", 2)[1]) if data else 0), (time.perf_counter() - started) * 1000


def healthz_ms(host: str, port: int, probes: int) -> list[float]:
    raw = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    times = []
    for _ in range(probes):
        status, ms = request(host, port, raw)
        assert status == 200, status
        times.append(ms)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered):6.2f} ms  p95 {p95:6.2f} ms  max {ordered[-1]:6.2f} ms"


def open_idle(host: str, port: int, count: int, first_bytes: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=10)
        if first_bytes:
            sock.sendall(first_bytes)
        socks.append(sock)
    return socks


def signed_request(host: str, port: int, n: int) -> tuple[int, float]:
    body = json.dumps({"event": "message.status.updated", "timestamp": "2026-01-01T10:00:00Z",
                       "data": {"message_id": f"wamid.bench{n}", "status": "delivered",
                                "timestamp": "2026-01-01T10:00:00Z"}}).encode()
    raw = (b"POST /webhooks/awal HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nConnection: close\r\n"
           b"X-Awal-Signature-256: " + sign_body(secret=SECRET.encode(), body=body).encode()
           + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return request(host, port, raw, timeout_s=120.0)


def trickle(host: str, port: int, count: int, stop: threading.Event) -> None:
    """`count` clients, each sending one more header byte every second until `stop`."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect((host, port))
        except BlockingIOError:
            pass
        socks.append(sock)
    first = True
    while not stop.is_set():
        for sock in socks:
            try:
                sock.send(TRICKLE_HEAD if first else b"a")
            except OSError:
                pass
        first = False
        stop.wait(1.0)
    for sock in socks:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--partial", type=int, default=1100)
    parser.add_argument("--trickle", type=int, default=1050, help="trickling clients (default: past the default limit)")
    parser.add_argument("--probes", type=int, default=50)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * max(args.partial, args.trickle) + 512)), hard))
    print(load_line())
    with tempfile.TemporaryDirectory() as tmp:
        # The receiver's own limits stay at their defaults: those are what operators run.
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK_")}
        env.update(DATABASE_URL=f"sqlite:///{tmp}/abuse.db", AWAL_WEBHOOK_SECRET=SECRET)
        proc = subprocess.Popen([sys.executable, "-m", "worker.webhooks", "--port", "0"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard)))
        try:
            url = proc.stdout.readline().strip()
            host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
            port_n = int(port)
            big = (b"POST /webhooks/awal HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                   b"X-Awal-Signature-256: sha256=" + b"0" * 64 + b"\r\nContent-Length: %d\r\n\r\n" % BIG_BODY_BYTES)
            results = [request(host, port_n, big) for _ in range(5)]
            assert all(status == 413 for status, _ in results), results
            print(f"413 for a 64 MiB Content-Length (no body sent): {summary([ms for _, ms in results])}")
            healthz_ms(host, port_n, 5)   # warm up
            baseline = healthz_ms(host, port_n, args.probes)
            print(f"/healthz with    0 idle clients: {summary(baseline)}")
            idle = open_idle(host, port_n, args.idle)
            time.sleep(0.3)
            loaded = healthz_ms(host, port_n, args.probes)
            print(f"/healthz with {args.idle:4d} idle clients: {summary(loaded)}  "
                  f"(median x{statistics.median(loaded) / statistics.median(baseline):.2f} of the baseline)")
            for sock in idle:
                sock.close()
            quiet = [signed_request(host, port_n, i)[1] for i in range(args.probes)]
            print(f"signed event with    0 trickling clients: {summary(quiet)}")
            stop = threading.Event()
            trickler = threading.Thread(target=trickle, args=(host, port_n, args.trickle, stop), daemon=True)
            trickler.start()
            time.sleep(3.0)
            answered = [signed_request(host, port_n, args.probes + i) for i in range(args.probes)]
            assert all(status == 200 for status, _ in answered), answered
            print(f"signed event with {args.trickle:4d} trickling clients: {summary([ms for _, ms in answered])}  "
                  f"(median x{statistics.median(ms for _, ms in answered) / statistics.median(quiet):.2f})")
            stop.set()
            trickler.join(30)
            stuck = open_idle(host, port_n, args.partial,
                              b"POST /webhooks/awal HTTP/1.1\r\nHost: bench\r\nContent-Length: 1000\r\n\r\n{\"ev")
            time.sleep(0.5)
            during = healthz_ms(host, port_n, args.probes)
            print(f"/healthz with {args.partial:4d} partial bodies: {summary(during)}  "
                  f"(receiver alive: {proc.poll() is None})")
            for sock in stuck:
                sock.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
