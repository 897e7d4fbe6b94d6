"""The webhook receiver's HTTP server: waitress, configured so that no client can knock it over.

Issue 12 item 14. waitress' defaults let one client cost a lot: a 1 GiB body limit (a 64 MiB body
was read whole before the 413), select() (more than ~1,000 open sockets crashed the loop with
"filedescriptor out of range in select()") and a 120 s idle timeout (1,005 connections that never
finished starved /healthz). Here:
- `max_request_body_size`: waitress compares a declared Content-Length with it while parsing the
  headers and answers 413 before reading a byte of the body; a chunked body is cut off once it
  passes the cap. (The WSGI app checks the same cap again: defence in depth.)
- `channel_timeout` + `cleanup_interval`: a connection silent for the client timeout, idle or in
  the middle of its headers or body, is closed within about one more second.
- `asyncore_use_poll`: poll() has no 1,024-descriptor ceiling.
Issue 25 item 9: with those alone, 1,000 unauthenticated clients trickling a byte now and then
(never silent for the client timeout) held every connection, and a signed request waited 18 s in the
backlog. So the server here (`ReceiverServer`, waitress' own server with two changes) also has:
- a request deadline (WEBHOOK_REQUEST_DEADLINE_S): a request's headers and body must all arrive
  within this long of its first byte, however steadily they trickle; then the connection is closed;
- room at the connection limit (WEBHOOK_CONNECTION_LIMIT): where waitress stops accepting, this one
  accepts and closes the connection open longest that is not being answered (idle, or still sending
  its request), so a new client (the vendor with a signed event) gets in at once. Only when every
  connection is being answered do new ones wait in the listen backlog.
The receiver still belongs behind a TLS-terminating proxy that caps connections per address
(docs/operations.md); these hold the defaults without one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from worker.settings import WEBHOOK_REQUEST_DEADLINE_S, Settings

#: how often waitress looks for connections past the client timeout
CLEANUP_INTERVAL_S = 1
#: request line plus headers; the vendor's are well under 8 KiB
MAX_HEADER_BYTES = 64 * 1024
LISTEN_BACKLOG = 2048
SERVER_IDENT = "buttoncast-webhooks"
log = logging.getLogger("buttoncast.webhooks.server")


@dataclass(frozen=True)
class ReceiverLimits:
    """What one client may cost the receiver."""

    max_body_bytes: int
    connection_limit: int
    client_timeout_s: int
    request_deadline_s: float = WEBHOOK_REQUEST_DEADLINE_S

    @classmethod
    def from_settings(cls, settings: Settings) -> "ReceiverLimits":
        return cls(max_body_bytes=settings.webhook_max_body_bytes,
                   connection_limit=settings.webhook_connection_limit,
                   client_timeout_s=settings.webhook_client_timeout_s,
                   request_deadline_s=settings.webhook_request_deadline_s)

    def waitress_options(self) -> dict[str, Any]:
        """Keyword arguments for waitress' `create_server`."""
        return dict(
            # waitress refuses when Content-Length >= the limit, so +1 lets exactly max_body_bytes in
            max_request_body_size=self.max_body_bytes + 1,
            max_request_header_size=MAX_HEADER_BYTES,
            connection_limit=self.connection_limit,
            channel_timeout=self.client_timeout_s,
            cleanup_interval=CLEANUP_INTERVAL_S,
            backlog=LISTEN_BACKLOG,
            asyncore_use_poll=True,
        )


class DeadlineChannel(HTTPChannel):
    """waitress' connection, knowing when the request it is still receiving began."""

    request_started_at: float | None = None

    def received(self, data: bytes) -> bool:
        before = self.request
        result = super().received(data)
        if self.request is None:
            self.request_started_at = None            # nothing half-received
        elif self.request is not before:
            self.request_started_at = time.time()     # a new request's first bytes
        return result


class ReceiverServer(TcpWSGIServer):
    """waitress' TCP server with a whole-request deadline and room made at the connection limit."""

    channel_class = DeadlineChannel
    request_deadline_s: float = WEBHOOK_REQUEST_DEADLINE_S
    evicted = 0          # connections closed to make room (a figure for tests and logs)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)   # silent past the client timeout
        cutoff = now - self.request_deadline_s
        for channel in self.active_channels.values():
            started = getattr(channel, "request_started_at", None)
            if not channel.requests and started is not None and started < cutoff:
                channel.will_close = True

    def readable(self) -> bool:
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        if not self.accepting:
            return False
        # full: accept only when a connection can make room (handle_accept closes it)
        return self._open_count() < self.adj.connection_limit or self._oldest_waiting() is not None

    def handle_accept(self) -> None:
        super().handle_accept()
        if self._open_count() > self.adj.connection_limit:
            victim = self._oldest_waiting()
            if victim is not None:
                victim.will_close = True
                self.evicted += 1
                if self.evicted == 1 or self.evicted % 1000 == 0:
                    log.warning("webhook receiver at its connection limit (%d, WEBHOOK_CONNECTION_LIMIT): closing the "
                                "oldest connections that are not being answered to let new ones in (%d so far)",
                                self.adj.connection_limit, self.evicted)

    def _open_count(self) -> int:
        return sum(1 for channel in self.active_channels.values() if not channel.will_close)

    def _oldest_waiting(self) -> Any:
        """The connection open longest that is not being answered (idle, or mid-request), if any."""
        waiting = [c for c in self.active_channels.values() if not c.requests and not c.will_close and not c.total_outbufs_len]
        return min(waiting, key=lambda c: c.creation_time, default=None)


def create_receiver_server(app: Any, *, host: str, port: int, threads: int, limits: ReceiverLimits) -> Any:
    """A ReceiverServer for `app` with the limits applied; `.effective_port`, `.run()`, `.close()`.
    One server per listening address (as waitress' `create_server`), sharing the threads."""
    from waitress.adjustments import Adjustments
    from waitress.server import MultiSocketServer
    from waitress.task import ThreadedTaskDispatcher

    adj = Adjustments(host=host, port=port, threads=threads, ident=SERVER_IDENT, **limits.waitress_options())
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict[int, Any] = {}
    servers = []
    for sockinfo in adj.listen:
        server = ReceiverServer(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)
        server.request_deadline_s = limits.request_deadline_s
        servers.append(server)
    if len(servers) == 1:
        return servers[0]
    listening = [(s.effective_host, s.effective_port) for s in servers]
    return MultiSocketServer(socket_map, adj, listening, dispatcher, servers[-1].log_info)
