"""The SSRF guard: resolve the URL's host at every attempt, refuse any address that is not plainly
public (unless inside MATRIX_WEBHOOK_ALLOWED_NETWORKS), and hand back the exact address that was
checked so the request connects there and nowhere else (no second resolution, no redirects).

Python's `is_global` is not enough: NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16), Teredo
(2001::/32) and IPv4-mapped/compatible IPv6 addresses can carry a private IPv4 address inside.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

# (network, why) — checked in order before the generic flags
_REFUSED: list[tuple[Network, str]] = [
    (ipaddress.ip_network(n), why)
    for n, why in (
        ("0.0.0.0/8", "unspecified"),
        ("100.64.0.0/10", "CGNAT (shared address space)"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6"),
        ("::/96", "IPv4-compatible IPv6"),
        ("64:ff9b::/96", "NAT64"),
        ("64:ff9b:1::/48", "NAT64 (local use)"),
        ("2002::/16", "6to4"),
        ("2001::/32", "Teredo"),
        ("2001:db8::/32", "documentation"),
        ("100::/64", "discard-only"),
        ("fc00::/7", "unique-local"),
        ("fec0::/10", "site-local"),
    )
]


class Refused(Exception):
    """The destination may not be called; the message says why (safe to store and show)."""


def refusal(ip: IPAddress) -> str | None:
    """Why this address is refused, or None when it is a plainly public unicast address."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    for net, why in _REFUSED:
        if ip.version == net.version and ip in net:
            return why
    for flag, why in (
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(ip, flag):
            return why
    if not ip.is_global:
        return "not globally routable"
    return None


def allowed_explicitly(ip: IPAddress, allowed: Sequence[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in allowed)


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, say `host` in the Host header and TLS SNI."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # path and query, as given


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check(url: str, allowed: Sequence[Network], resolver: Resolver) -> Target:
    """Resolve and check; raise Refused naming the reason. Every resolved address must pass (a name
    that answers one public and one private address is refused: the next lookup may pick either)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("only http(s) URLs with a host can be called")
    if parts.username or parts.password:
        raise Refused("credentials in the URL are not allowed (use headers)")
    host = parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await resolver(host, port)
        except OSError as exc:
            raise Refused(f"cannot resolve {host} ({exc.strerror or exc})") from None
        if not addresses:
            raise Refused(f"cannot resolve {host}")
    explicit = True
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if allowed_explicitly(ip, allowed):
            continue
        explicit = False
        why = refusal(ip)
        if why is not None:
            said = f"{host} is" if literal is not None else f"{host} resolves to {ip},"
            raise Refused(f"{said} a {why} address (allow it with MATRIX_WEBHOOK_ALLOWED_NETWORKS)")
    if parts.scheme != "https" and not explicit:
        raise Refused("https is required (plain http only to MATRIX_WEBHOOK_ALLOWED_NETWORKS)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, host, port, addresses[0].split("%", 1)[0], path)
