"""A 429 that only says "this window is full" is retried in the same send with the next slot,
instead of going back to the database and waiting for the dispatcher's tick (issue 26)."""

from __future__ import annotations

import json
import math
import time

import pytest
import requests
from requests.adapters import BaseAdapter

from worker.errors import RateLimited
from worker.message import ButtonMessage
from worker.sending.client import AwalClient, WindowFull

OK = json.dumps({"status": True, "message": {"id": 7, "messageId": "wamid.x", "status": "accepted"}}).encode()


class Vendor(BaseAdapter):
    """Answers each request with the next scripted (status, headers) reply."""

    def __init__(self, replies: list[tuple[int, dict[str, str]]]) -> None:
        super().__init__()
        self.replies, self.requests = replies, 0

    def send(self, request, **kwargs) -> requests.Response:  # noqa: ANN001, ANN003
        status, headers = self.replies[self.requests]
        self.requests += 1
        response = requests.Response()
        response.status_code, response.request, response.url = status, request, request.url
        response._content = OK if status == 200 else b'{"error": "rate_limit_exceeded"}'
        response.headers.update(headers)
        return response

    def close(self) -> None:
        pass


def full_window(retry_after_s: int) -> tuple[int, dict[str, str]]:
    reset = math.floor(time.time()) + 1   # the sandbox's header: this 1-second window's end
    return 429, {"Retry-After": str(retry_after_s), "X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0",
                 "X-RateLimit-Reset": str(reset)}


def send(vendor: Vendor) -> tuple[int, object]:
    client = AwalClient(base_url="http://vendor.test", client_id="c", domain="d", hmac_secret=b"s",
                        connect_timeout_s=1, read_timeout_s=1, retry_attempts=3, retry_max_wait_s=0.01,
                        rate_retry_max_s=5.0, transport=vendor)
    slots = []
    message = ButtonMessage.build(phone="966500000001", body_text="hi", buttons=[{"id": "a", "title": "A"}])
    try:
        result = client.send(message, "123456", before_request=lambda: slots.append(1))
    except RateLimited as error:
        result = error
    assert len(slots) == vendor.requests   # every request, the retry too, took a slot first
    return vendor.requests, result


def test_a_429_for_a_full_window_is_retried_in_the_same_send_after_taking_a_slot():
    requests_made, result = send(Vendor([full_window(1), (200, {})]))
    assert requests_made == 2 and not isinstance(result, Exception) and result.message_id == "wamid.x"


@pytest.mark.parametrize("retry_after_s", [30, 3])
def test_a_429_asking_more_than_the_window_is_not_retried_in_process(retry_after_s):
    # a penalty (or a reset further than RATE_WAIT_MAX_S): every worker is blocked and the message goes back
    requests_made, result = send(Vendor([full_window(retry_after_s), (200, {})]))
    assert requests_made == 1 and isinstance(result, RateLimited) and not isinstance(result, WindowFull)
