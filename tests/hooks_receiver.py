"""A test receiver for outbound hooks: a real HTTP server on a thread that checks every request
with the reference verifier (worker.hooks.verify) and answers what the test scripted."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.hooks.verify import SignatureError, verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    event: dict[str, Any] | None     # parsed by the verifier; None when it refused the request
    refused: str | None              # the verifier's reason
    answered: int
    complete: bool = True            # False: the client went away before the whole answer was written


@dataclass
class HookReceiver:
    """`script[path]`: statuses to answer in turn (then 200); `secrets[path]`: the endpoint's secret."""

    secrets: dict[str, str] = field(default_factory=dict)
    script: dict[str, list[int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    delay_s: dict[str, float] = field(default_factory=dict)   # a slow receiver: sleep before answering
    answer_body: dict[str, bytes] = field(default_factory=dict)   # what to write instead of "nope!" / "thank"
    trickle_s: dict[str, float] = field(default_factory=dict)   # write the answer a byte at a time, this far apart
    trickle_head: bool = True        # False: the status line and headers at once, then the body trickled
    gate: dict[str, threading.Event] = field(default_factory=dict)   # answer only once the test sets it
    started: list[str] = field(default_factory=list)   # paths of requests read, answered or not

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    event, refused = verify(body, self.headers.get("Buttoncast-Signature"),
                                            receiver.secrets.get(self.path, "")), None
                except SignatureError as exc:
                    event, refused = None, str(exc)
                receiver.started.append(self.path)
                time.sleep(receiver.delay_s.get(self.path, 0.0))
                if self.path in receiver.gate:
                    receiver.gate[self.path].wait(60)
                statuses = receiver.script.get(self.path) or []
                status = statuses.pop(0) if statuses else 200
                answer = receiver.answer_body.get(self.path, b"nope!" if status >= 300 else b"thank")
                if self.path in receiver.trickle_s:
                    complete = self._trickle(status, answer, receiver.trickle_s[self.path])
                    receiver.received.append(Received(self.path, dict(self.headers), body, event, refused, status,
                                                      complete))
                    return
                if status in (301, 302, 307, 308):
                    self.send_response(status)
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                else:
                    self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                receiver.received.append(Received(self.path, dict(self.headers), body, event, refused, status))

            def _trickle(self, status: int, answer: bytes, pause_s: float) -> bool:
                head = f"HTTP/1.0 {status} OK\r\nContent-Length: {len(answer)}\r\n\r\n".encode()
                try:
                    if not receiver.trickle_head:
                        self.wfile.write(head)
                        head = b""
                    for byte in head + answer:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(pause_s)
                except OSError:
                    return False
                return True

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="hook-receiver").start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]
