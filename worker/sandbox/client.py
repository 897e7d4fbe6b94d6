"""A small `requests` client for the sandbox: sign and send like the real client would, and read
back what the sandbox saw through its `/_sandbox/` endpoints."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Iterable
from urllib.parse import urlsplit

import requests

from worker.sandbox.config import ADMIN_TOKEN_HEADER, DEFAULT_CLIENT_ID, DEFAULT_DOMAIN, DEFAULT_SECRET
from worker.signing import CLIENT_ID_HEADER, DOMAIN_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_request

ADMIN_TIMEOUT_S = 10.0
LIMIT_PATH = "/_sandbox/limit"


class NotASandbox(Exception):
    """The base URL answered, but not as a sandbox (or not at all within the wait)."""


def sandbox_rate_limit(base_url: str, *, wait_s: float = 5.0, timeout_s: float = 1.0) -> str | None:
    """The rate limit the sandbox at `base_url` enforces ("50/s"), None when it has none; NotASandbox
    when nothing there says it is one. A refused connection is tried again for up to `wait_s` (a
    sandbox started a moment ago in the background may not listen yet)."""
    parts = urlsplit(base_url)
    url = f"{parts.scheme}://{parts.netloc}{LIMIT_PATH}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            answer = requests.get(url, timeout=timeout_s)
            break
        except requests.ConnectionError:
            if time.monotonic() >= deadline:
                raise NotASandbox(f"nothing answers at {url}") from None
            time.sleep(0.2)
        except requests.RequestException as exc:
            raise NotASandbox(f"{url}: {type(exc).__name__}") from None
    try:
        data = answer.json() if answer.status_code == 200 else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("sandbox") is not True:
        raise NotASandbox(f"{url} did not answer as a sandbox (HTTP {answer.status_code})")
    rate = data.get("rate_limit")
    return str(rate) if rate else None


def signed_headers(*, url: str, body: bytes, secret: str, client_id: str, domain: str,
                   timestamp: int | None = None) -> dict[str, str]:
    """The five vendor headers (plus Content-Type) for a POST of `body` to `url`."""
    parts = urlsplit(url)
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = sign_request(
        secret=secret.encode("utf-8"), method="POST", path=parts.path,
        query_string=("?" + parts.query) if parts.query else "", timestamp=stamp, body=body,
    )
    return {
        "Accept": "application/json",
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature,
        TIMESTAMP_HEADER: stamp,
        DOMAIN_HEADER: domain,
        CLIENT_ID_HEADER: client_id,
    }


class SandboxClient:
    """Talks to a running sandbox at `base_url` (the same base URL the vendor client uses).

    `admin_token` goes with every `/_sandbox/` call, as a sandbox started with `--admin-token`
    (or reached from another machine) wants.
    """

    def __init__(self, base_url: str, *, secret: str = DEFAULT_SECRET, client_id: str = DEFAULT_CLIENT_ID,
                 domain: str = DEFAULT_DOMAIN, session: requests.Session | None = None,
                 admin_token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.admin_url = f"{parts.scheme}://{parts.netloc}/_sandbox"
        self._secret, self._client_id, self._domain = secret, client_id, domain
        self.session = session or requests.Session()
        self._admin_headers = {ADMIN_TOKEN_HEADER: admin_token} if admin_token else {}

    # --- sending, for tests and benchmarks -------------------------------------------------
    def send_url(self, phone_number_id: str) -> str:
        return f"{self.base_url}/w/message/button?phone_number_id={phone_number_id}"

    def send(self, payload: dict[str, Any] | bytes, *, phone_number_id: str = "123456",
             timeout: float = 10.0, headers: dict[str, str] | None = None) -> requests.Response:
        """Sign and POST one message (bytes are sent exactly as given); `headers` override."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        url = self.send_url(phone_number_id)
        all_headers = signed_headers(url=url, body=body, secret=self._secret,
                                     client_id=self._client_id, domain=self._domain)
        all_headers.update(headers or {})
        return self.session.post(url, data=body, headers=all_headers, timeout=timeout)

    # --- reading back and steering ---------------------------------------------------------
    def _get(self, path: str, **params: Any) -> Any:
        response = self.session.get(self.admin_url + path, params=params, headers=self._admin_headers,
                                    timeout=ADMIN_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        response = self.session.post(self.admin_url + path, json=data or {}, headers=self._admin_headers,
                                     timeout=ADMIN_TIMEOUT_S)
        if response.status_code == 400:
            raise ValueError(response.json().get("message", response.text))
        response.raise_for_status()
        return response.json()

    def received(self, phone: str | None = None) -> list[dict[str, Any]]:
        """Messages the sandbox acted on (answered 200, or accepted then stalled), oldest first."""
        params = {"phone": phone} if phone is not None else {}
        return self._get("/received", **params)["received"]

    def stats(self) -> dict[str, Any]:
        """{"counts": {"200": n, "400:validation_failed": n, "429": n, "503": n, "timeout": n,
        "drop": n, ...}, "accepted": n, "requests": n, "fault_events": {...}, "webhooks": {...}}"""
        return self._get("/stats")

    def reset(self) -> None:
        self._post("/reset")

    def configure(self, **options: Any) -> dict[str, Any]:
        """Change runtime options (e.g. latency_ms=50, error_rate_503=0.1, rate_limit="5/s",
        force_429_for_s=2, retry_after=3); raises ValueError naming a bad option."""
        return self._post("/config", options)

    def script(self, phone: str, responses: Iterable[str]) -> list[str]:
        """The next requests for `phone` answer these ("500", "503", "429", "400", "401",
        "timeout", "drop"), then it behaves normally."""
        return self._post("/script", {"phone": phone, "responses": list(responses)})["scripted"]

    def counts_per_phone(self) -> dict[str, int]:
        """How many times the vendor acted on a message to each phone (duplicates show as > 1)."""
        return dict(Counter(record["phone"] for record in self.received()))
