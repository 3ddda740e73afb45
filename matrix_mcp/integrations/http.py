"""Outbound HTTP for every sink: SSRF-checked at each attempt, connected to the checked address
(Host header and TLS SNI keep the name), no redirects followed. httpx2 is the client the MCP SDK
already depends on.

A receiver is not trusted to be kind:
- at most MAX_ANSWER bytes of its answer are kept; a longer answer is cut there (the connection is
  closed, the rest never read) and raises AnswerTooLong;
- one wall-clock deadline covers a whole attempt (the dispatcher opens it with `deadline()`: a sink
  may make several requests in one attempt), so a receiver trickling a byte at a time cannot hold a
  delivery past it; without one, each request gets `timeout` seconds.

Requests go straight to the transport, not through httpx2's client: the client logs every request's
URL at INFO, and a URL's path or query may be the credential (Slack, Discord, `?token=`). httpcore2's
DEBUG trace shows neither URLs nor request headers.
"""

from __future__ import annotations

import contextvars
import ipaddress
from collections.abc import Iterator, Sequence
from contextlib import aclosing, contextmanager
from typing import Any

import anyio
import httpx2

from matrix_mcp import __version__
from matrix_mcp.integrations.ssrf import Network, Refused, Resolver, check, system_resolver

__all__ = ["MAX_ANSWER", "AnswerTooLong", "Http", "Refused", "Response"]
Response = httpx2.Response
MAX_ANSWER = 64 * 1024  # bytes of a receiver's answer kept (what the sinks parse is far smaller)
_HOP_HEADERS = ("content-encoding", "content-length", "transfer-encoding")
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("matrix_http_deadline", default=None)


class AnswerTooLong(Exception):
    """The receiver answered more than MAX_ANSWER bytes; `status_code` is what it said."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}: the answer was longer than {MAX_ANSWER // 1024} KiB")
        self.status_code = status_code


class Http:
    def __init__(
        self,
        allowed: Sequence[Network],
        timeout: float,
        resolver: Resolver | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.allowed = tuple(allowed)
        self.timeout = timeout
        self.resolver = resolver or system_resolver
        self._timeouts = httpx2.Timeout(timeout).as_dict()
        self._transport = transport or httpx2.AsyncHTTPTransport(
            trust_env=False,  # never through an environment proxy: the checked address is the one called
            limits=httpx2.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._transport.aclose()

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Every request made inside (in this task) ends `seconds` from now, however many there are."""
        token = _deadline.set(anyio.current_time() + seconds)
        try:
            yield
        finally:
            _deadline.reset(token)

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        content: str | bytes | None = None,
        json: Any = None,
    ) -> Response:
        """The answer, read (at most MAX_ANSWER bytes of it).

        Raises Refused (SSRF), TimeoutError (the deadline passed), AnswerTooLong,
        httpx2.TimeoutException or httpx2.TransportError."""
        until = _deadline.get()
        left = self.timeout if until is None else until - anyio.current_time()
        with anyio.fail_after(max(0.0, left)):
            return await self._request(method, url, headers, content, json)

    async def _request(
        self, method: str, url: str, headers: dict[str, str] | None, content: str | bytes | None, json: Any
    ) -> Response:
        target = await check(url, self.allowed, self.resolver)
        ip = ipaddress.ip_address(target.address)
        host_in_url = f"[{ip}]" if ip.version == 6 else str(ip)
        default_port = 443 if target.scheme == "https" else 80
        pinned = f"{target.scheme}://{host_in_url}:{target.port}{target.path}"
        # identity: what is read is what is kept (no decompression bomb behind the bound)
        sent = {"accept-encoding": "identity", "user-agent": f"matrix-mcp/{__version__}", **(headers or {})}
        sent["Host"] = target.host if target.port == default_port else f"{target.host}:{target.port}"
        extensions: dict[str, Any] = {"timeout": self._timeouts}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        request = httpx2.Request(
            method, pinned, headers=sent, content=content, json=json, extensions=extensions
        )
        response = await self._transport.handle_async_request(request)
        kept = bytearray()
        try:
            if response.is_stream_consumed:  # a transport that hands over an answer already read (a mock)
                kept += response.content
            else:
                async with aclosing(response.aiter_raw()) as chunks:
                    async for chunk in chunks:
                        kept += chunk
                        if len(kept) > MAX_ANSWER:
                            break
            if len(kept) > MAX_ANSWER:
                raise AnswerTooLong(response.status_code)  # closing it unread drops the connection
        finally:
            await response.aclose()
        return Response(
            response.status_code,
            headers=[(k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP_HEADERS],
            content=bytes(kept),
            request=request,
        )
