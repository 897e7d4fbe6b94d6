"""The request signature against the contract's fixed test vector, the webhook body signature, and
the comparison's API semantics (a missing or wrong header never matches)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from worker.message import ButtonMessage
from worker.signing import SIGNATURE_PREFIX, sign_body, sign_request, signatures_match

# The test vector, verbatim from shared/AWAL_API.md.
VECTOR_SECRET = b"test-secret"
VECTOR_TIMESTAMP = "1704124800"
VECTOR_BODY = b'{"phone":"96650000000","body_text":"Hello","buttons":[{"id":"yes","title":"Yes"}]}'
VECTOR_STRING_TO_SIGN = b"POST/w/message/button?phone_number_id=1234561704124800" + VECTOR_BODY
VECTOR_HEADER = "sha256=464902940705d0ee04ac409503ad37fc757d02a31adf8a97c61f06ddc379185d"


def vector_signature(**overrides: object) -> str:
    args: dict = dict(secret=VECTOR_SECRET, method="POST", path="/w/message/button",
                      query_string="?phone_number_id=123456", timestamp=VECTOR_TIMESTAMP, body=VECTOR_BODY)
    args.update(overrides)
    return sign_request(**args)


def test_test_vector_string_to_sign_gives_the_documented_hmac() -> None:
    # Pins our reading of string_to_sign (no separators, query with its "?") independently of
    # sign_request: HMAC of the documented string is the documented header.
    digest = hmac.new(VECTOR_SECRET, VECTOR_STRING_TO_SIGN, hashlib.sha256).hexdigest()
    assert "sha256=" + digest == VECTOR_HEADER


def test_sign_request_reproduces_the_test_vector_header_exactly() -> None:
    assert vector_signature() == VECTOR_HEADER


def test_built_message_body_signs_to_the_test_vector() -> None:
    message = ButtonMessage.build(phone="96650000000", body_text="Hello", buttons=[{"id": "yes", "title": "Yes"}])
    assert message.body_bytes() == VECTOR_BODY
    assert vector_signature(body=message.body_bytes()) == VECTOR_HEADER


def test_signature_is_lowercase_hex_with_the_sha256_prefix() -> None:
    header = vector_signature()
    assert header.startswith(SIGNATURE_PREFIX)
    hex_part = header[len(SIGNATURE_PREFIX):]
    assert len(hex_part) == 64 and hex_part == hex_part.lower()
    int(hex_part, 16)


def test_lowercase_method_is_signed_as_uppercase() -> None:
    assert vector_signature(method="post") == VECTOR_HEADER


@pytest.mark.parametrize(
    "change",
    [
        {"secret": b"test-secreT"},
        {"timestamp": "1704124801"},
        {"query_string": "?phone_number_id=123457"},
        {"query_string": "phone_number_id=123456"},
        {"path": "/api/w/message/button"},
        {"body": VECTOR_BODY + b" "},
        {"body": VECTOR_BODY.replace(b'"Hello"', b'"Hello!"')},
    ],
    ids=["secret", "timestamp", "query-value", "query-without-question-mark", "path-prefix", "body-trailing-space", "body-text"],
)
def test_any_change_to_a_signed_part_changes_the_signature(change: dict) -> None:
    assert vector_signature(**change) != VECTOR_HEADER


def test_body_is_signed_as_raw_utf8_bytes() -> None:
    body = '{"body_text":"🎉 مرحبا"}'.encode("utf-8")
    expected = hmac.new(b"k", b"POST/p?q=11" + body, hashlib.sha256).hexdigest()
    assert sign_request(secret=b"k", method="POST", path="/p", query_string="?q=1", timestamp="1",
                        body=body) == "sha256=" + expected


# --- sign_body (webhooks) ---------------------------------------------------------------------
def test_sign_body_is_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"event":"message.status.updated"}'
    assert sign_body(secret=b"hook-secret", body=body) == "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()


def test_sign_body_depends_on_every_byte() -> None:
    assert sign_body(secret=b"s", body=b"{}") != sign_body(secret=b"s", body=b"{} ")
    assert sign_body(secret=b"s", body=b"{}") != sign_body(secret=b"t", body=b"{}")


# --- signatures_match -------------------------------------------------------------------------
def test_signatures_match_accepts_the_exact_header() -> None:
    assert signatures_match(VECTOR_HEADER, VECTOR_HEADER) is True


def test_signatures_match_tolerates_surrounding_whitespace_in_the_received_header() -> None:
    assert signatures_match(VECTOR_HEADER, "  " + VECTOR_HEADER + "\n") is True


@pytest.mark.parametrize("received", [None, ""], ids=["missing", "empty"])
def test_missing_or_empty_received_signature_never_matches(received: str | None) -> None:
    assert signatures_match(VECTOR_HEADER, received) is False


@pytest.mark.parametrize(
    "received",
    [
        VECTOR_HEADER[:-1] + "e",
        VECTOR_HEADER[:-1],
        VECTOR_HEADER + "0",
        VECTOR_HEADER[len("sha256="):],
        "sha1=" + VECTOR_HEADER[len("sha256="):],
        "sha256=",
        "   ",
        "sha256=46490294070\u00e9",
    ],
    ids=["last-digit", "shorter", "longer", "no-prefix", "wrong-prefix", "prefix-only", "whitespace", "non-ascii"],
)
def test_wrong_received_signature_does_not_match(received: str) -> None:
    assert signatures_match(VECTOR_HEADER, received) is False


def test_signatures_match_compares_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    # Constant time: the comparison must go through hmac.compare_digest, never ==.
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert signatures_match(VECTOR_HEADER, VECTOR_HEADER) is True
    assert signatures_match(VECTOR_HEADER, VECTOR_HEADER[:-1] + "0") is False
    assert len(calls) == 2
