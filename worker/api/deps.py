"""Dependencies every router shares: the process runtime, a JSON body read after authentication, cursors."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import Path, Request

from worker.api.problems import Problem
from worker.errors import FieldProblem, MessageInvalid
from worker.runtime import Runtime, get_runtime

#: ids are 64-bit (BIGINT on Postgres): a larger number names nothing, and is refused as input
ID_MAX = 2**63 - 1
MessageId = Annotated[int, Path(ge=1, le=ID_MAX)]
CampaignId = Annotated[int, Path(ge=1, le=ID_MAX)]


async def runtime() -> Runtime:
    """The process's runtime (async: no I/O, no thread-pool hop)."""
    return get_runtime()


async def json_body(request: Request) -> Any:
    """The request's JSON (read only once authentication passed: the middleware runs first)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise Problem(415, "unsupported-media-type", f"send the body as application/json, not {content_type}")
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MessageInvalid([FieldProblem("body", f"is not valid JSON: {exc}")]) from None


def encode_cursor(last: int | str, kind: str = "id") -> str:
    """An opaque cursor for the page after `last` (an id, or a phone for `kind="phone"`)."""
    return base64.urlsafe_b64encode(f"{kind}:{last}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: str = "id") -> Any:
    """The opaque cursor of a page -> the id (or phone) it continues from; a tampered cursor is a 422."""
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, _, value = text.partition(":")
        if found == kind and value.isdigit() and (kind != "id" or int(value) <= ID_MAX):
            return int(value) if kind == "id" else value
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise MessageInvalid([FieldProblem("cursor", "is not a cursor this API gave out; pass next_cursor unchanged")])
