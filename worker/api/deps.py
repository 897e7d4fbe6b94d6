"""Dependencies every router shares: the process runtime, a JSON body read after authentication, cursors."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Callable

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


#: JSON request bodies: deeper nesting or longer numbers are refused (422) before anything reads them
JSON_DEPTH_MAX = 32
JSON_NUMBER_MAX_CHARS = 40


class _JsonRefused(ValueError):
    """A number or constant the API does not take, found while parsing."""


def _number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if len(text) > JSON_NUMBER_MAX_CHARS:
            raise _JsonRefused(f"has a number of {len(text)} characters; the limit is {JSON_NUMBER_MAX_CHARS}")
        return kind(text)

    return parse


def _constant(name: str) -> Any:
    raise _JsonRefused(f"is not valid JSON: {name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and objects (iteratively: no recursion for a hostile body)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= JSON_DEPTH_MAX:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(raw: bytes | str, field: str = "body") -> Any:
    """JSON as the API takes it: at most JSON_DEPTH_MAX levels deep, numbers of at most
    JSON_NUMBER_MAX_CHARS characters, no NaN or Infinity; anything else is a MessageInvalid naming
    `field` (422), never a RecursionError or ValueError (500)."""
    try:
        value = json.loads(raw, parse_int=_number(int), parse_float=_number(float), parse_constant=_constant)
    except RecursionError:
        value, problem = None, f"is nested deeper than {JSON_DEPTH_MAX} levels"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        value, problem = None, f"is not valid JSON: {exc}"
    except _JsonRefused as exc:
        value, problem = None, str(exc)
    else:
        problem = f"is nested deeper than {JSON_DEPTH_MAX} levels" if _depth(value) > JSON_DEPTH_MAX else None
    if problem is not None:
        raise MessageInvalid([FieldProblem(field, problem)])
    return value


async def json_body(request: Request) -> Any:
    """The request's JSON (read only once authentication passed: the middleware runs first)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise Problem(415, "unsupported-media-type", f"send the body as application/json, not {content_type}")
    raw = await request.body()
    return parse_json(raw) if raw else None


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
