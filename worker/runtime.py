"""Per-process collaborators (engine, sessions, limiter, Celery app), built once from the settings.

Rebuilt in a child after fork: connections must never be shared across processes. A layer above the
plumbing keeps its own per-process collaborators here with `component` (the send path's vendor client
and outcome journal: worker.sending), so this module never imports upwards.
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import AbstractContextManager
from datetime import datetime
from functools import cached_property
from typing import Any, Callable, TypeVar

from celery import Celery, signals
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.db import PG_MAX_OVERFLOW, make_engine, make_session_factory, single_statements
from worker.ratelimit.scope import workspace_scope
from worker.settings import Settings

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.settings = settings
        self._celery = celery
        #: True where a worker consumes the in-process broker (buttoncast run); see worker.sending.publish
        self.in_process_worker = False
        #: campaign id (None: ad-hoc) -> the highest id this process's dispatcher claimed: where its
        #: next scan of pending rows starts (a hint; see scheduler.dispatcher._claim)
        self.dispatch_cursors: dict[int | None, int] = {}
        #: the broker epoch this process last saw (issue 12 item 12; see worker.sending.broker_epoch)
        self.broker_epoch_seen: str | None = None
        #: when that epoch began: rows this process claims are stamped no earlier (issue 25; scheduler.dispatcher)
        self.broker_epoch_started: datetime | None = None
        self._components: dict[str, Any] = {}
        self._closing: list[Callable[[], None]] = []
        self._components_lock = threading.Lock()

    #: connections a Postgres pool may open beyond DATABASE_POOL_SIZE for a burst; 0 in a worker
    #: process (bound_pool), whose many threads would otherwise all open one at once
    pool_overflow: int = PG_MAX_OVERFLOW

    def bound_pool(self) -> None:
        """A worker process: at most DATABASE_POOL_SIZE connections, threads beyond wait for one.
        Safe because a send task never waits for a second connection while it holds one, so every
        holder gives its connection back (tests/sending/test_send.py). Called before the engine exists."""
        if "engine" in self.__dict__:
            raise RuntimeError("bound_pool() after the engine was built")
        self.pool_overflow = 0

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url, pool_size=self.settings.database_pool_size,
                           max_overflow=self.pool_overflow)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def read_sessions(self) -> sessionmaker[Session]:
        """Sessions for reads only (reports, show, list): on SQLite they never take the write lock."""
        if not self.settings.sqlite:
            return self.session_factory
        return make_session_factory(make_engine(self.settings.database_url, read_only=True))

    @cached_property
    def celery(self) -> Celery:
        if self._celery is not None:
            return self._celery
        from worker.celery_app import app, create_celery

        return app if app.conf.broker_url == self.settings.broker_url else create_celery(self.settings)

    @cached_property
    def limiter(self):  # noqa: ANN201 - worker.ratelimit.RateLimiter
        from worker.ratelimit import build_rate_limiter

        return build_rate_limiter(self.settings)

    @property
    def scope(self) -> str:
        return workspace_scope(self.settings)

    def component(self, name: str, build: Callable[[Runtime], T], close: Callable[[T], None] | None = None) -> T:
        """The collaborator `name`, built once per runtime by a layer above (the vendor client, the
        outcome journal); `close` runs with the runtime's close()."""
        try:
            return self._components[name]
        except KeyError:
            with self._components_lock:
                if name not in self._components:
                    value = build(self)
                    self._components[name] = value
                    if close is not None:
                        self._closing.append(lambda: close(value))
                return self._components[name]

    @cached_property
    def single_statements(self) -> Callable[[], AbstractContextManager[Connection]]:
        return single_statements(self.engine)

    @cached_property
    def worker_name(self) -> str:
        """Who claimed a message (`claimed_by`, attempts, events): host and pid of this process."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "read_sessions" in self.__dict__ and self.read_sessions is not self.__dict__.get("session_factory"):
            self.read_sessions.kw["bind"].dispose()
        for close in self._closing:
            close()


@signals.worker_init.connect(weak=False)
def _bound_the_database_pool(**_kwargs: object) -> None:
    """Every worker process (`buttoncast worker`, `buttoncast run`, or the README's `celery …
    worker` line) keeps at most DATABASE_POOL_SIZE Postgres connections (Runtime.bound_pool)."""
    runtime = get_runtime()
    if "engine" not in runtime.__dict__:
        runtime.bound_pool()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process's runtime, from the environment's settings unless one was installed."""
    global _runtime
    runtime = _runtime
    if runtime is not None:   # every task asks: no lock once it exists
        return runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(Settings.from_env())
        return _runtime


def install_runtime(runtime: Runtime | None) -> None:
    """Use this runtime in this process (embedded mode, tests)."""
    global _runtime
    with _lock:
        _runtime = runtime


def _forget_after_fork() -> None:
    global _runtime, _lock
    _lock = threading.Lock()
    _runtime = None


os.register_at_fork(after_in_child=_forget_after_fork)
