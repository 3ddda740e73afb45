"""What the routes mounted beside /mcp (the REST API, the dashboard) receive from the service: `Parts`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp.server import MCPServer
from mcp.server.auth.provider import TokenVerifier
from mcp.server.transport_security import TransportSecuritySettings

from matrix_mcp.http.metrics import Metrics
from matrix_mcp.http.options import ServiceOptions
from matrix_mcp.http.ratelimit import RateLimits

if TYPE_CHECKING:
    from matrix_mcp.engine.access import Access


@dataclass(frozen=True, kw_only=True)
class Parts:
    """What routes mounted beside /mcp (the REST API, the dashboard) share with it: one verifier, one
    rate limiter, one set of metrics, the same options and access (API keys, sessions)."""

    mcp: MCPServer[Any]
    verifier: TokenVerifier | None
    limits: RateLimits | None
    metrics: Metrics
    options: ServiceOptions
    access: Callable[[], Access | None]
    security: TransportSecuritySettings  # /mcp's DNS-rebinding protection, for the routes beside it too
    max_body_bytes: int  # /mcp's request body bound, for the routes beside it too
