"""One test per use of mcp internals (matrix_mcp.sdk.private): each fails when the SDK changes what we rely on."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.client import Client
from mcp.server import MCPServer

from matrix_mcp.sdk.private import serve_legacy_subscriptions

# resources/subscribe and ping are the handshake era's, deprecated by the SDK for the modern one: that is the point
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


def recording_server() -> tuple[MCPServer[Any], list[tuple[str, Any, str]]]:
    calls: list[tuple[str, Any, str]] = []

    async def subscribe(connection: Any, uri: str) -> None:
        calls.append(("subscribe", connection, uri))

    async def unsubscribe(connection: Any, uri: str) -> None:
        calls.append(("unsubscribe", connection, uri))

    server: MCPServer[Any] = MCPServer("private")
    serve_legacy_subscriptions(server, subscribe, unsubscribe)
    return server, calls


async def test_lowlevel_server_serves_resources_subscribe_on_the_handshake_era() -> None:
    """`MCPServer._lowlevel_server.add_request_handler`: the handlers are reached, and registering them
    advertises `resources.subscribe` (what a handshake-era client checks before subscribing)."""
    server, calls = recording_server()
    async with Client(server, mode="legacy") as c:
        caps = c.server_capabilities
        assert caps.resources is not None and caps.resources.subscribe is True
        await c.subscribe_resource("matrix://runs/a")
        await c.unsubscribe_resource("matrix://runs/a")
    assert [(kind, uri) for kind, _, uri in calls] == [
        ("subscribe", "matrix://runs/a"),
        ("unsubscribe", "matrix://runs/a"),
    ]


async def test_connection_of_is_the_client_connection_and_sends_updates() -> None:
    """`ServerSession._connection`: one object for every request of a connection, another for another
    connection, and `send_resource_updated` on it reaches that client after the request has ended."""
    server, calls = recording_server()
    received: list[str] = []

    async def handler(message: Any) -> None:
        params = getattr(getattr(message, "root", message), "params", None)
        uri = getattr(params, "uri", None)
        if uri is not None:
            received.append(str(uri))

    async with (
        Client(server, mode="legacy", message_handler=handler) as c1,
        Client(server, mode="legacy") as c2,
    ):
        await c1.subscribe_resource("u://1")
        await c1.subscribe_resource("u://2")
        await c2.subscribe_resource("u://3")
        first, second, other = (conn for _, conn, _ in calls)
        assert first is second and first is not other
        await first.send_resource_updated("u://1")
        await c1.send_ping()  # the notification was sent before the ping's answer
    assert received == ["u://1"]
