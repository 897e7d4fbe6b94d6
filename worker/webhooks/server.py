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
- `connection_limit`: beyond it waitress stops accepting; new connections wait in the listen
  backlog and are served as soon as timed-out ones are closed.
- `asyncore_use_poll`: poll() has no 1,024-descriptor ceiling.
A client that trickles one byte per timeout can still hold a connection, as it can with nginx's
client_body_timeout; the receiver belongs behind a TLS-terminating proxy that caps connections per
address (docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.settings import Settings

#: how often waitress looks for connections past the client timeout
CLEANUP_INTERVAL_S = 1
#: request line plus headers; the vendor's are well under 8 KiB
MAX_HEADER_BYTES = 64 * 1024
LISTEN_BACKLOG = 2048
SERVER_IDENT = "buttoncast-webhooks"


@dataclass(frozen=True)
class ReceiverLimits:
    """What one client may cost the receiver."""

    max_body_bytes: int
    connection_limit: int
    client_timeout_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "ReceiverLimits":
        return cls(max_body_bytes=settings.webhook_max_body_bytes,
                   connection_limit=settings.webhook_connection_limit,
                   client_timeout_s=settings.webhook_client_timeout_s)

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


def create_receiver_server(app: Any, *, host: str, port: int, threads: int, limits: ReceiverLimits) -> Any:
    """A waitress server for `app` with the limits applied; `.effective_port`, `.run()`, `.close()`."""
    from waitress.server import create_server

    return create_server(app, host=host, port=port, threads=threads, ident=SERVER_IDENT, **limits.waitress_options())
