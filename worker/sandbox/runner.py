"""Running the sandbox: in a daemon thread with its own event loop (tests, demo), or in the
foreground until interrupted (the CLI, `python -m worker.sandbox`)."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from typing import Callable

from aiohttp import web

from worker.sandbox.config import SandboxConfig
from worker.sandbox.server import SandboxApp
from worker.sandbox.state import SandboxState

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 2.0


class SandboxServer:
    """One sandbox on one port. `start_in_thread()` returns its base URL; `stop()` ends it."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.sandbox = SandboxApp(self.config)
        self.base_url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> SandboxState:
        """Records and counts; read them only while no request is in flight (or use SandboxClient)."""
        return self.sandbox.state

    async def _start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        host, port = sock.getsockname()[:2]
        self._runner = web.AppRunner(
            self.sandbox.build(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()
        self.base_url = f"http://{host}:{port}{self.config.path_prefix}"
        return self.base_url

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> str:
        """Serve from a daemon thread with its own event loop; return the base URL."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="awal-sandbox", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the sandbox did not start in time")
        if failure:
            raise failure[0]
        assert self.base_url is not None
        return self.base_url

    def stop(self) -> None:
        """Stop serving (stalled requests end at once) and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._stop(), loop)
        try:
            future.result(STOP_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_S)
            self._loop = self._thread = None

    def __enter__(self) -> "SandboxServer":
        self.start_in_thread()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def serve_forever(self, on_ready: Callable[[str], None]) -> None:
        """Serve in the foreground until SIGINT/SIGTERM; `on_ready(base_url)` once bound."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            on_ready(await self._start())
            await stop.wait()
            await self._stop()

        asyncio.run(main())
