"""Where a hook may POST: public addresses over https, checked when an endpoint is added and again
on every connection, after name resolution, on the address actually connected to.

Without this an admin key can aim a hook at what sits next to buttoncast (SSRF): a loopback-only
admin port, the database, a cloud metadata service (169.254.169.254). The rules follow GitLab's
`Gitlab::UrlBlocker` (deny loopback, private, shared, link-local, multicast and reserved
addresses; deny IPv4 written in decimal, hex or octal; resolve once and connect to the address
that was checked) and GitHub's webhook rules (no private targets, redirects never followed):

- an address is refused unless it is globally routable: loopback (127/8, ::1), private (10/8,
  172.16/12, 192.168/16, fc00::/7), shared (100.64/10), link-local (169.254/16, where the metadata
  services live, and fe80::/10), multicast, reserved, unspecified (0.0.0.0, ::) and documentation
  ranges; an IPv6 address that carries an IPv4 one (::ffff:a.b.c.d, 64:ff9b::/96, 2002::/16) is
  judged by the IPv4 address it carries;
- a host written as an IPv4 address other than a dotted quad (2130706433, 0x7f000001, 0177.0.0.1,
  127.1) is refused whatever it means: resolvers disagree on how to read it;
- a URL is https:// unless HOOKS_ALLOW_HTTP=true or its host is in HOOKS_ALLOWED_HOSTS;
- HOOKS_ALLOWED_HOSTS names the hosts an operator lets hooks reach whatever they resolve to (a
  receiver on the same host or network); it matches the URL's host as written.

At `hooks add` a host name is resolved once and refused when any of its addresses is; a name that
does not resolve (yet) is accepted, because the check that protects is the one made on each
connection (worker.hooks.transport).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult

from worker.errors import ButtoncastError
from worker.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: one getaddrinfo answer: (family, sockaddr)
Resolved = tuple[int, tuple[Any, ...]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
ALLOW_HINT = "hooks reach public addresses only (an operator allows a host of their own with HOOKS_ALLOWED_HOSTS)"


class TargetRefused(ButtoncastError):
    """A hook's target is one it may not reach; str() is the short fixed text recorded as last_error."""


def address_refusal(address: Address) -> str | None:
    """What kind of non-public address `address` is ("a loopback address", ...); None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = address.ipv4_mapped or address.sixtofour or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None)
        if carried is not None:
            return address_refusal(carried)
    for attribute, words in (("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
                             ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
                             ("is_private", "a private address"), ("is_reserved", "a reserved address")):
        if getattr(address, attribute):
            return words
    return None if address.is_global else "a non-public address"


def loose_ipv4(host: str) -> ipaddress.IPv4Address | None | bool:
    """What inet_aton(3) reads in `host` (1 to 4 parts, each decimal, 0x-hex or 0-octal): the address;
    False when it is numeric but no address (out of range); None when it is a name."""
    labels = host.split(".")
    if not 1 <= len(labels) <= 4 or not all(_NUMERIC_LABEL.match(label) for label in labels):
        return None
    values = []
    for label in labels:
        try:
            if label[:2].lower() == "0x":
                values.append(int(label[2:] or "0", 16))
            else:
                values.append(int(label, 8) if len(label) > 1 and label.startswith("0") else int(label))
        except ValueError:   # 08, 09: not octal
            return False
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return False
    number = last
    for index, value in enumerate(head):
        number |= value << (24 - 8 * index)
    return ipaddress.IPv4Address(number)


def _bare(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def literal_address(host: str) -> Address | None:
    """`host` as an IP address when it is written as one (brackets, zone id allowed); None for a name."""
    try:
        return ipaddress.ip_address(_bare(host))
    except ValueError:
        return None


@dataclass(frozen=True)
class TargetPolicy:
    """The rules above with an operator's choices (HOOKS_ALLOW_HTTP, HOOKS_ALLOWED_HOSTS)."""

    allow_http: bool = False
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Settings) -> "TargetPolicy":
        return cls(allow_http=settings.hooks_allow_http, allowed_hosts=settings.hooks_allowed_hosts)

    def allows_host(self, host: str) -> bool:
        """Is `host` (as written in a URL) one the operator named in HOOKS_ALLOWED_HOSTS?"""
        bare = _bare(host)
        address = literal_address(bare)
        return (str(address) if address is not None else bare) in self.allowed_hosts

    def scheme_refusal(self, scheme: str, host: str) -> str | None:
        if scheme == "https" or (scheme == "http" and (self.allow_http or self.allows_host(host))):
            return None
        return "plain http:// is not allowed"

    def host_problem(self, host: str) -> tuple[str, str] | None:
        """Why a URL may not name `host` as written, before any resolution: (what `hooks add` says, the
        short text recorded at delivery); None when it may."""
        bare = _bare(host)
        address = literal_address(bare)
        meant = loose_ipv4(bare) if address is None else None
        if meant is not None:
            reading = f", which resolvers read as {meant}" if meant else ""
            return (f"writes an IPv4 address as {host!r}{reading}: write it as a dotted quad (e.g. 203.0.113.7)",
                    "refused: an IPv4 address not written as a dotted quad")
        if address is None or self.allows_host(bare):
            return None
        refusal = address_refusal(address)
        return (f"points to {address}, {refusal}; {ALLOW_HINT}", f"refused: points to {refusal}") if refusal else None

    def url_problem(self, parts: SplitResult, *, resolve_timeout_s: float) -> str | None:
        """Why `hooks add` refuses the (syntactically valid) URL `parts`; None when it may be added.
        A host name is resolved (for at most `resolve_timeout_s`) and every address it has checked."""
        host = parts.hostname or ""
        if self.scheme_refusal(parts.scheme, host):
            return ("must use https:// (plain http:// only with HOOKS_ALLOW_HTTP=true, or to a host named in "
                    "HOOKS_ALLOWED_HOSTS)")
        problem = self.host_problem(host)
        if problem or self.allows_host(host) or literal_address(host) is not None:
            return problem[0] if problem else None
        try:
            resolved = resolve(host, parts.port or 443, timeout_s=resolve_timeout_s)
        except (OSError, UnicodeError):
            return None   # does not resolve (yet): every connection is checked when it is made
        for _, sockaddr in resolved:
            address = ipaddress.ip_address(sockaddr[0])
            refusal = address_refusal(address)
            if refusal:
                return f"resolves to {address}, {refusal}; {ALLOW_HINT}"
        return None

    def checked_addresses(self, host: str, port: int, *, timeout_s: float) -> list[Resolved]:
        """Delivery time: resolve `host` once and return its addresses to connect to, all checked.
        Raises TargetRefused when any is refused (a name answering one public and one private address
        is refused), TimeoutError, or socket.gaierror when it does not resolve."""
        problem = self.host_problem(host)
        if problem:
            raise TargetRefused(problem[1])
        resolved = resolve(_bare(host), port, timeout_s=timeout_s)
        if not self.allows_host(host):
            for _, sockaddr in resolved:
                refusal = address_refusal(ipaddress.ip_address(sockaddr[0]))
                if refusal:
                    raise TargetRefused(f"refused: resolves to {refusal}")
        return resolved

    def check_peer(self, host: str, sock: socket.socket) -> None:
        """The address a socket is actually connected to, checked again (raises TargetRefused)."""
        if self.allows_host(host):
            return
        refusal = address_refusal(ipaddress.ip_address(sock.getpeername()[0]))
        if refusal:
            raise TargetRefused(f"refused: connected to {refusal}")


def resolve(host: str, port: int, *, timeout_s: float) -> list[Resolved]:
    """getaddrinfo(host, port) for TCP, waited for at most `timeout_s`: getaddrinfo has no timeout of
    its own, so it runs on a short-lived daemon thread that is left to finish on its own when late.
    Raises TimeoutError, or socket.gaierror for a name that does not resolve."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            box["answer"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name="hooks-resolve", daemon=True).start()
    if not done.wait(max(0.0, timeout_s)):
        raise TimeoutError(f"name resolution took longer than {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    answer = [(family, sockaddr) for family, _, _, _, sockaddr in box["answer"]
              if family in (socket.AF_INET, socket.AF_INET6)]
    if not answer:
        raise socket.gaierror(socket.EAI_NONAME, "no IPv4 or IPv6 address")
    return answer
