"""An independent stand-in for the vendor's send endpoint: a threaded HTTP server (stdlib only) that
answers every POST with an accepted send after `--latency-ms`, with the X-RateLimit-* headers the
real API sends (a limit no bench reaches). It checks nothing and stores nothing, so every sender
measured against it pays the same, small, server cost.

    python bench/vendor_standin.py --port 8099 --latency-ms 50
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LIMIT = 1_000_000


def serve(port: int, latency_ms: float) -> None:
    counter = itertools.count(1)
    lock = threading.Lock()
    delay = latency_ms / 1000

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive, as the real API
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            with lock:
                n = next(counter)
            if delay:
                time.sleep(delay)
            body = json.dumps({"status": True, "message": {"id": n, "messageId": f"wamid.standin{n}",
                                                            "status": "sent"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-RateLimit-Limit", str(LIMIT))
            self.send_header("X-RateLimit-Remaining", str(LIMIT - n % LIMIT))
            self.send_header("X-RateLimit-Reset", str(int(time.time()) + 60))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024   # a class attribute: listen() reads it in the constructor

    server = Server(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    serve(args.port, args.latency_ms)
