"""The Awal sandbox: a local, faithful stand-in for the vendor's Send Button Message API.

    from worker.sandbox import SandboxConfig, SandboxServer, SandboxClient
    server = SandboxServer(SandboxConfig(secret="s", rate_limit="50/s"))
    base_url = server.start_in_thread()
    ...
    SandboxClient(base_url).received(phone="96650000000")
    server.stop()

Modules: config (options), auth (the vendor's header and signature check), server (the send
endpoint), faults (injected failures), state (records, counts, rate window), admin (/_sandbox/
endpoints), webhooks (events to us), runner (threads and foreground), client, cli.
"""

from worker.sandbox.client import SandboxClient
from worker.sandbox.config import SandboxConfig
from worker.sandbox.runner import SandboxServer

__all__ = ["SandboxClient", "SandboxConfig", "SandboxServer"]
