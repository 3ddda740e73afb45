"""How the team service holds its connections: uvicorn's settings, and a deadline for request heads.

uvicorn times out a kept-alive connection idle after a response, but not one that is still sending a
request's head: a socket that connects and then sends nothing, or half a header line, was held for ever.
`HeaderDeadline` wraps uvicorn's own HTTP protocol and closes a new connection that sends nothing within
the idle timeout, and any connection whose request head is not complete `header_timeout` seconds after
its first byte. It reads one attribute of uvicorn's protocol, `cycle` (the request in progress, with its
`response_complete` flag), the same on its h11 and httptools protocols (uvicorn >= 0.31, pinned).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp

from matrix_mcp.http.options import IDLE_TIMEOUT, ServiceOptions

log = logging.getLogger("matrix_mcp.http")


class HeaderDeadline(asyncio.Protocol):
    """uvicorn's HTTP protocol for one connection, closed when a request head takes too long."""

    header_timeout = 10.0  # set per server by `deadline_protocol`
    idle_timeout = float(IDLE_TIMEOUT)

    def __init__(self, **kwargs: Any) -> None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        protocol: Any = AutoHTTPProtocol
        self.inner: Any = protocol(**kwargs)
        self.loop: asyncio.AbstractEventLoop = self.inner.loop
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.silent = False  # connected, not a byte yet: the idle timeout applies

    def _between_requests(self) -> bool:
        cycle = getattr(self.inner, "cycle", None)
        return cycle is None or bool(getattr(cycle, "response_complete", False))

    def _arm(self, seconds: float) -> None:
        self.timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.transport is not None and self._between_requests() and not self.transport.is_closing():
            log.debug("closing a connection that was idle or sent no whole request head in time")
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.inner.connection_made(transport)
        self.silent = True
        self._arm(min(self.idle_timeout, self.header_timeout))

    def data_received(self, data: bytes) -> None:
        before = getattr(self.inner, "cycle", None)
        if self.silent:
            self.silent = False
            self._disarm()
        if self.timer is None and self._between_requests():
            self._arm(self.header_timeout)  # a new request's first bytes: its head has this long
        self.inner.data_received(data)
        if getattr(self.inner, "cycle", None) is not before:
            self._disarm()  # a request head arrived whole (the body has its own deadline)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def deadline_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """A `HeaderDeadline` class for one server (uvicorn builds its protocol from a class)."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": header_timeout})


def uvicorn_config(app: ASGIApp, options: ServiceOptions) -> Any:
    """The uvicorn settings of the team service. Connections: idle ones (new, or kept alive after a
    response) closed after `IDLE_TIMEOUT`, a request head complete within `options.header_timeout`; requests in progress are
    bounded by the guard (`options.max_connections`), not here, so that connections still sending their
    head (bounded by the deadline instead) cannot starve real requests or the health checks.
    X-Forwarded-For / -Proto are believed only from `options.trusted_proxies` (none by default)."""
    import uvicorn

    trusted = list(options.trusted_proxies)
    return uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        http=deadline_protocol(options.header_timeout),
        ws="none",  # the service has no WebSocket routes
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_keep_alive=IDLE_TIMEOUT,
        timeout_graceful_shutdown=5,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        lifespan="on",
    )
