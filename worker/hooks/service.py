"""What the CLI and the API do with hooks: add, list, remove, redeliver. SQL and rules live here.

`add_hook`, `remove_hook` and `redeliver_hooks` take the Runtime and own their transaction (with its
audit row); the functions that take a session never commit: they are steps in their caller's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.audit import record_audit
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.hooks import outbox
from worker.hooks.events import EVENT_ID_PREFIX, parse_events
from worker.hooks.models import HookEndpoint, HookOutbox, HookSubscription, OutboxStatus
from worker.hooks.signing import endpoint_secret, new_salt
from worker.hooks.targets import TargetPolicy
from worker.models import utcnow
from worker.runtime import Runtime
from worker.settings import Secret, Settings

URL_MAX_CHARS = 2000


class HookInvalid(MessageInvalid):
    """`hooks add` input breaks a rule; each problem names its field (url, events)."""


class HookNotFound(ButtoncastError):
    """No endpoint (or no outbox row) with that id."""


@dataclass(frozen=True)
class EndpointView:
    id: int
    url: str
    events: list[str]
    created_at: datetime
    pending: int = 0
    delivered: int = 0
    dead: int = 0
    last_error: str | None = None


def validate_url(url: str, field: str = "url", *, policy: TargetPolicy | None = None,
                 resolve_timeout_s: float = 5.0) -> list[FieldProblem]:
    """An absolute https URL (http only as `policy` allows) with a host that is not a loopback,
    private, link-local, multicast or reserved address and does not resolve to one
    (worker.hooks.targets), no credentials (they would sit in the database) and no fragment."""
    url = (url or "").strip()
    if not url:
        return [FieldProblem(field, "is required")]
    if len(url) > URL_MAX_CHARS:
        return [FieldProblem(field, f"is {len(url)} characters; at most {URL_MAX_CHARS}")]
    try:
        parts = urlsplit(url)
        parts.port   # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        return [FieldProblem(field, f"is not a valid URL ({exc})")]
    if parts.scheme not in ("http", "https"):
        return [FieldProblem(field, "must start with http:// or https://")]
    if not parts.hostname:
        return [FieldProblem(field, "has no host")]
    if parts.username is not None or parts.password is not None:
        return [FieldProblem(field, "must not carry a user or password (the URL is stored as it is; "
                                    "authenticate the request by its Buttoncast-Signature)")]
    if parts.fragment:
        return [FieldProblem(field, "must not have a #fragment")]
    if any(c.isspace() for c in url):
        return [FieldProblem(field, "must not contain spaces")]
    problem = (policy or TargetPolicy()).url_problem(parts, resolve_timeout_s=resolve_timeout_s)
    return [FieldProblem(field, problem)] if problem else []


def add_endpoint(session: Session, url: str, events: str | list[str], *,
                 settings: Settings) -> tuple[EndpointView, Secret]:
    """A new endpoint receiving `events`; returns it and its signing secret (shown once, never stored).
    Raises HookInvalid naming each bad field (a target hooks may not reach, one endpoint more than
    HOOKS_MAX_ENDPOINTS), ConfigError without a usable HOOKS_SIGNING_KEY."""
    signing_key = settings.hooks_signing_key
    names, event_problems = parse_events(events)
    problems = validate_url(url, policy=TargetPolicy.of(settings), resolve_timeout_s=settings.hooks_timeout_s)
    problems += event_problems
    if problems:
        raise HookInvalid(problems)
    endpoint_secret(signing_key, 0, "")   # refuse before writing anything when the key is unusable
    count = session.scalar(sa.select(sa.func.count()).select_from(HookEndpoint)) or 0
    if count >= settings.hooks_max_endpoints:
        raise HookInvalid([FieldProblem("url", f"would be endpoint {count + 1}; at most {settings.hooks_max_endpoints} "
                                               "(HOOKS_MAX_ENDPOINTS): remove one first")])
    endpoint = HookEndpoint(url=url.strip(), key_salt=new_salt(), created_at=utcnow())
    session.add(endpoint)
    session.flush()
    session.add_all(HookSubscription(endpoint_id=endpoint.id, event_type=name) for name in names)
    session.flush()
    outbox.CACHE.invalidate()
    return (EndpointView(id=endpoint.id, url=endpoint.url, events=names, created_at=endpoint.created_at),
            endpoint_secret(signing_key, endpoint.id, endpoint.key_salt))


def list_endpoints(session: Session) -> list[EndpointView]:
    """Every endpoint with its events and its outbox counts by status, and the latest failure."""
    endpoints = session.execute(sa.select(HookEndpoint).order_by(HookEndpoint.id)).scalars().all()
    events: dict[int, list[str]] = {}
    for endpoint_id, name in session.execute(
        sa.select(HookSubscription.endpoint_id, HookSubscription.event_type).order_by(HookSubscription.event_type)
    ):
        events.setdefault(endpoint_id, []).append(name)
    counts: dict[tuple[int, str], int] = {
        (endpoint_id, status): n for endpoint_id, status, n in session.execute(
            sa.select(HookOutbox.endpoint_id, HookOutbox.status, sa.func.count()).group_by(HookOutbox.endpoint_id, HookOutbox.status))
    }
    return [
        EndpointView(
            id=e.id, url=e.url, events=events.get(e.id, []), created_at=e.created_at,
            pending=counts.get((e.id, OutboxStatus.PENDING.value), 0),
            delivered=counts.get((e.id, OutboxStatus.DELIVERED.value), 0),
            dead=counts.get((e.id, OutboxStatus.DEAD.value), 0),
            last_error=_last_error(session, e.id),
        )
        for e in endpoints
    ]


_OLD_HTTP_ERROR = re.compile(r"^HTTP (\d{3}): (?!redirects are not followed$)")


def _last_error(session: Session, endpoint_id: int) -> str | None:
    text = session.execute(
        sa.select(HookOutbox.last_error)
        .where(HookOutbox.endpoint_id == endpoint_id, HookOutbox.last_error.is_not(None),
               HookOutbox.status != OutboxStatus.DELIVERED.value)
        .order_by(HookOutbox.last_attempt_at.desc()).limit(1)
    ).scalar_one_or_none()
    # rows written before the receiver's answer stopped being stored ("HTTP 403: <its body>") show
    # only the status, like the rows written since
    old = _OLD_HTTP_ERROR.match(text or "")
    return f"HTTP {old.group(1)} from the receiver" if old else text


def remove_endpoint(session: Session, endpoint_id: int) -> None:
    """Delete an endpoint, its subscriptions and its undelivered events. Raises HookNotFound."""
    session.execute(sa.delete(HookOutbox).where(HookOutbox.endpoint_id == endpoint_id))
    session.execute(sa.delete(HookSubscription).where(HookSubscription.endpoint_id == endpoint_id))
    if session.execute(sa.delete(HookEndpoint).where(HookEndpoint.id == endpoint_id)).rowcount != 1:
        raise HookNotFound(f"no hook endpoint {endpoint_id}")
    outbox.CACHE.invalidate()


def redeliver(session: Session, *, event_id: str | None = None, endpoint_id: int | None = None) -> int:
    """Deliver again, with the same event id and body: one event (to every endpoint that had it, or
    only to `endpoint_id`), whatever its state; or every dead-lettered event of `endpoint_id`.
    The retry period and the attempt count start over, so the first retry after a failure waits
    HOOKS_BACKOFF_BASE_S, not the cap. Returns how many rows are due now; raises HookNotFound for none."""
    if event_id is None and endpoint_id is None:
        raise HookInvalid([FieldProblem("event_id", "name an event id, or an endpoint to redeliver its dead letters")])
    if event_id is not None and not event_id.startswith(EVENT_ID_PREFIX):
        raise HookInvalid([FieldProblem("event_id", f"{event_id!r} is not an event id (evt_...)")])
    now = utcnow()
    where = [HookOutbox.event_id == event_id] if event_id else [HookOutbox.status == OutboxStatus.DEAD.value]
    if endpoint_id is not None:
        if session.get(HookEndpoint, endpoint_id) is None:
            raise HookNotFound(f"no hook endpoint {endpoint_id}")
        where.append(HookOutbox.endpoint_id == endpoint_id)
    done = session.execute(
        sa.update(HookOutbox).where(*where)
        .values(status=OutboxStatus.PENDING.value, attempts=0, next_attempt_at=now, retry_since=now, claim_token=None,
                dead_at=None, delivered_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if event_id and not done:
        raise HookNotFound(f"no hook event {event_id}" + (f" for endpoint {endpoint_id}" if endpoint_id else ""))
    return done


def add_hook(rt: Runtime, url: str, events: str | list[str], *, actor: str | None) -> tuple[EndpointView, Secret]:
    """Add an endpoint (add_endpoint) with its audit row, in one transaction; returns it and its
    signing secret, derived from HOOKS_SIGNING_KEY. No audit row without an actor."""
    with rt.session_factory.begin() as session:
        view, secret = add_endpoint(session, url, events, settings=rt.settings)
        record_audit(session, actor, "hook.created", "hook_endpoint", view.id, url=view.url, events=view.events)
    return view, secret


def remove_hook(rt: Runtime, endpoint_id: int, *, actor: str | None) -> None:
    """Remove an endpoint (remove_endpoint) with its audit row, in one transaction. Raises HookNotFound."""
    with rt.session_factory.begin() as session:
        remove_endpoint(session, endpoint_id)
        record_audit(session, actor, "hook.removed", "hook_endpoint", endpoint_id)


def redeliver_hooks(rt: Runtime, *, event_id: str | None = None, endpoint_id: int | None = None,
                    actor: str | None) -> int:
    """Deliver again (redeliver) with its audit row, in one transaction; returns how many rows are
    due now. Raises HookInvalid / HookNotFound as redeliver does."""
    with rt.session_factory.begin() as session:
        due = redeliver(session, event_id=event_id, endpoint_id=endpoint_id)
        record_audit(session, actor, "hook.redelivered", "hook_endpoint", endpoint_id, event_id=event_id, due=due)
    return due
