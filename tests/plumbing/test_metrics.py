"""Where the Prometheus endpoint listens (issue 12 item 16): loopback unless METRICS_HOST says."""

from __future__ import annotations

import socket

import pytest
import requests

from worker.metrics import serve_metrics


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def test_metrics_listen_on_loopback_only_by_default() -> None:
    """Issue 12 item 16: serve_metrics(port) binds 127.0.0.1, not every interface. Proof: another
    loopback address (127.0.0.2) can still take the port, which a 0.0.0.0 listener would hold."""
    port = free_port()
    assert serve_metrics(port)
    assert "buttoncast_messages_total" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert bindable("127.0.0.2", port)
    assert not serve_metrics(port)          # once per process


def test_metrics_host_setting_binds_every_interface_when_asked() -> None:
    """Issue 12 item 16: METRICS_HOST=0.0.0.0 (what docker-compose.yml sets for workers) listens on
    every interface, so another address cannot take the port."""
    port = free_port()
    assert serve_metrics(port, "0.0.0.0")
    assert requests.get(f"http://127.0.0.2:{port}/metrics", timeout=5).ok
    assert not bindable("127.0.0.2", port)


@pytest.mark.parametrize("port", [0, -1])
def test_port_zero_disables_metrics(port: int) -> None:
    assert not serve_metrics(port)
