"""The HTTP transport of hooks: connections that reach only permitted addresses, and one deadline for
a whole POST.

**Checked on the address actually connected to.** requests (urllib3) resolves a host name when it
opens a connection; checking the URL first and letting urllib3 resolve the name again leaves a gap a
name server can use, answering a public address to the check and 127.0.0.1 to the connection (DNS
rebinding). So the check lives in the connection: `_Guarded._new_conn`, urllib3's hook that opens
the socket, resolves the host ONCE, refuses when ANY of its addresses is refused
(worker.hooks.targets), connects to one of exactly those addresses, and checks the connected
socket's peer (`getpeername()`) again. The Host header, TLS SNI and the certificate check still use
the URL's host name: urllib3 takes them from the connection's `host`, never from the socket. Every
new connection goes through this, so a connection kept alive between POSTs leads only to an address
that was checked. Redirects are not followed and no proxy is taken from the environment.

**One deadline for the whole POST.** A timeout per socket operation (requests' `timeout=`) starts
again with every byte, so a receiver trickling a byte a second holds a POST as long as it likes.
Each POST runs inside an `Attempt`: resolution and connect get only the time left, and a timer shuts
the connection's socket down when HOOKS_TIMEOUT_S is over, whatever the request is doing (TLS
handshake, sending the body, waiting for the status line, reading the answer). The blocked call
returns at once and the attempt is recorded as "timed out after N s".
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from worker.errors import ButtoncastError
from worker.hooks.targets import TargetPolicy, TargetRefused

#: how much of an answer is read (then discarded: only the status is kept, never the body)
ANSWER_MAX_BYTES = 65536
_CHUNK_BYTES = 8192
_current = threading.local()


class DeliveryFailed(ButtoncastError):
    """A POST that got no answer; str() is the short fixed text recorded as last_error."""


class Attempt:
    """One POST's deadline and target rules, current on the thread that sends it."""

    def __init__(self, policy: TargetPolicy, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.expired = False
        self._clock = clock
        self._ends = clock() + timeout_s
        self._lock = threading.Lock()
        self._watched: list[Any] = []
        self._finished = False
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "Attempt":
        _current.attempt = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._finished = True
        self._timer.cancel()
        _current.attempt = None

    def timed_out(self) -> DeliveryFailed:
        return DeliveryFailed(f"timed out after {self.timeout_s:.1f} s")

    def remaining(self) -> float:
        """Seconds left; raises the timeout once there are none."""
        left = self._ends - self._clock()
        if left <= 0 or self.expired:
            raise self.timed_out()
        return left

    def watch(self, conn: Any) -> None:
        """Cut `conn` when the deadline passes (at once when it already has)."""
        with self._lock:
            if not any(c is conn for c in self._watched):
                self._watched.append(conn)
            if self.expired:
                _cut(conn)

    def _expire(self) -> None:
        with self._lock:   # under the lock: never cuts a connection a later POST has taken from the pool
            if self._finished:
                return
            self.expired = True
            for conn in self._watched:
                _cut(conn)


def _cut(conn: Any) -> None:
    """Shut the connection's socket down: a call blocked on it returns at once. Both the socket the
    connection holds now (None once http.client handed it to a response that reads to the close)
    and the one it connected with. The plain socket's shutdown, also for a TLS socket
    (ssl.SSLSocket.shutdown would unwrap it under the reading thread); a socket already closed
    answers EBADF, never another socket's descriptor."""
    for sock in (getattr(conn, "sock", None), getattr(conn, "connected_sock", None)):
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _attempt() -> Attempt:
    attempt = getattr(_current, "attempt", None)
    if attempt is None:   # a connection outside `post`: refuse rather than connect unchecked
        raise TargetRefused("refused: no delivery attempt in progress")
    return attempt


class _Guarded:
    """Mixed into urllib3's connection classes: see the module's docstring."""

    port: int
    _dns_host: str

    #: the socket of the last connect (http.client drops `sock` when a response reads to the close)
    connected_sock: socket.socket | None = None

    def connect(self) -> None:
        _attempt().watch(self)
        super().connect()  # type: ignore[misc]
        self.connected_sock = self.sock  # type: ignore[attr-defined]

    def request(self, *args: Any, **kwargs: Any) -> None:
        attempt = _attempt()
        attempt.watch(self)
        sock = getattr(self, "sock", None)
        if sock is not None:   # a kept-alive connection: its peer is checked against this attempt's rules too
            attempt.policy.check_peer(self._dns_host, sock)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def _new_conn(self) -> socket.socket:
        attempt = _attempt()
        try:
            addresses = attempt.policy.checked_addresses(self._dns_host, self.port, timeout_s=attempt.remaining())
        except TimeoutError:
            raise attempt.timed_out() from None
        except (socket.gaierror, UnicodeError):
            raise DeliveryFailed("the receiver's host name does not resolve") from None
        sock = _connect(addresses, attempt)
        try:
            attempt.policy.check_peer(self._dns_host, sock)
        except BaseException:
            sock.close()
            raise
        return sock


def _connect(addresses: list[tuple[int, tuple[Any, ...]]], attempt: Attempt) -> socket.socket:
    """A TCP connection to the first of `addresses` (all checked) that answers in the time left."""
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(attempt.remaining())
            sock.connect(sockaddr)
            return sock
        except DeliveryFailed:
            sock.close()
            raise
        except OSError:
            sock.close()
            if attempt.expired:
                raise attempt.timed_out() from None
    attempt.remaining()
    raise DeliveryFailed("could not connect to the receiver")


class GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose pools open only guarded connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        raise TargetRefused("refused: hooks never go through a proxy")


def new_session() -> requests.Session:
    """A requests.Session for hooks: guarded connections, no proxy or .netrc from the environment."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def post(session: requests.Session, url: str, *, body: bytes, headers: dict[str, str], policy: TargetPolicy,
         timeout_s: float) -> int:
    """POST `body` to `url` and read the answer, all within `timeout_s`; the answer's status code.
    Raises DeliveryFailed (TargetRefused for a target the rules refuse); str() is the fixed text to
    record. The answer's body is read (at most ANSWER_MAX_BYTES) and discarded."""
    parts = requests.utils.urlparse(url)
    refusal = policy.scheme_refusal(parts.scheme, parts.hostname or "")
    if refusal:
        raise TargetRefused(f"refused: {refusal}")
    with Attempt(policy, timeout_s) as attempt:
        try:
            left = attempt.remaining()
            response = session.post(url, data=body, headers=headers, timeout=(left, left), allow_redirects=False,
                                    stream=True)
            _read_answer(response, attempt)
            return response.status_code
        except (DeliveryFailed, TargetRefused):
            raise
        except Exception as exc:  # noqa: BLE001 - every transport failure is one fixed text
            if attempt.expired:
                raise attempt.timed_out() from None
            raise DeliveryFailed(_transport_error(exc, attempt)) from None


def _read_answer(response: requests.Response, attempt: Attempt) -> None:
    """Read the answer to its end (or ANSWER_MAX_BYTES) before the deadline; a connection read to
    its end goes back to the pool, any other is closed."""
    read, complete = 0, False
    try:
        while read < ANSWER_MAX_BYTES:
            attempt.remaining()
            chunk = response.raw.read(_CHUNK_BYTES, decode_content=False)
            if not chunk:
                complete = True
                break
            read += len(chunk)
    finally:
        if complete and not attempt.expired:
            response.raw.release_conn()
        else:
            response.close()
    if attempt.expired:   # the end came from the deadline's cut, not from the receiver
        raise attempt.timed_out()


def _transport_error(exc: Exception, attempt: Attempt) -> str:
    """The kind of failure in a few fixed words: never the URL (its query may carry the receiver's
    token) and never what the receiver sent."""
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return attempt.timed_out().args[0]
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
        return "TLS failed (certificate or handshake)"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
                        urllib3.exceptions.DecodeError)):
        return "the receiver's answer was malformed"
    if isinstance(exc, (requests.ConnectionError, urllib3.exceptions.ProtocolError, OSError)):
        return "the connection failed"
    return f"request failed ({type(exc).__name__})"
