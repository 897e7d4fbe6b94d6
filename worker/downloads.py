"""Streamed downloads (the API's report, the console's CSVs) that give their connection back however they end.

Starlette's StreamingResponse pulls a plain iterator on worker threads and, when the client goes
away (a cancelled browser download, a client that stops reading and closes), stops pulling: the
iterator is left suspended, and with it the read session's connection, "idle in transaction"
until a garbage collection happens to reach it. `DownloadResponse` closes its source
(worker.db.StreamedRead) when the response ends: sent in full, client gone, or the task cancelled.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import anyio
import anyio.to_thread
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class ClosableChunks(Protocol):
    """What a download streams: text chunks, and a `close()` that releases what reading holds."""

    def __iter__(self) -> Iterator[str]: ...

    def __next__(self) -> str: ...

    def close(self) -> None: ...


class DownloadResponse(StreamingResponse):
    """A streamed attachment whose source is closed when the response ends, however it ends."""

    def __init__(self, source: ClosableChunks, *, media_type: str, filename: str) -> None:
        super().__init__(source, media_type=media_type,
                         headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: the request's task may be cancelled (client gone, server shutting down) and
            # the close must still run. No `next()` runs now: a cancelled thread-pool call waits
            # for its thread (anyio's default), so the source is never closed under a reader.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.source.close)
