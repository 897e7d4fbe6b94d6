"""A TCP proxy that can be cut: the database "goes down" for the processes behind it only.

Issue 12 item 13's outage test and bench/chaos.py point workers and beat at Postgres through it,
so the shared Postgres server (other users rely on it) keeps running. `cut()` closes every open
connection and refuses new ones (accepted and closed at once) until `restore()`.
"""

from __future__ import annotations

import socket
import threading


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._stopped = False
        threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True).start()

    def url_for(self, url: str) -> str:
        """`url` (host:port in it) rewritten to go through this proxy."""
        head, _, rest = url.partition("@")
        hostport, slash, path = rest.partition("/")
        return f"{head}@127.0.0.1:{self.port}{slash}{path}"

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, set()
        for s in sockets:
            _close(s)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def stop(self) -> None:
        self._stopped = True
        self.cut()
        _close(self._listener)

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
