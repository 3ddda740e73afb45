"""Outbound HTTP for every sink: SSRF-checked at each attempt, connected to the checked address
(Host header and TLS SNI keep the name), no redirects followed, one timeout. httpx2 is the client
the MCP SDK already depends on."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import httpx2

from matrix_mcp.integrations.ssrf import Network, Refused, Resolver, check, system_resolver

__all__ = ["Http", "Refused", "Response"]
Response = httpx2.Response


class Http:
    def __init__(
        self,
        allowed: Sequence[Network],
        timeout: float,
        resolver: Resolver | None = None,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.allowed = tuple(allowed)
        self.resolver = resolver or system_resolver
        self._client = client or httpx2.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,  # never through an environment proxy: the checked address is the one called
            limits=httpx2.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        content: str | bytes | None = None,
        json: Any = None,
    ) -> Response:
        """Raises Refused (SSRF), httpx2.TimeoutException or httpx2.TransportError."""
        target = await check(url, self.allowed, self.resolver)
        ip = ipaddress.ip_address(target.address)
        host_in_url = f"[{ip}]" if ip.version == 6 else str(ip)
        default_port = 443 if target.scheme == "https" else 80
        pinned = f"{target.scheme}://{host_in_url}:{target.port}{target.path}"
        sent = dict(headers or {})
        sent["Host"] = target.host if target.port == default_port else f"{target.host}:{target.port}"
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        return await self._client.request(
            method, pinned, headers=sent, content=content, json=json, extensions=extensions
        )
