"""Every use of mcp 2.3 internals, and nothing else; each one is pinned by a test in tests/sdk/test_sdk_private.py
that fails when the SDK changes it.

1. `MCPServer._lowlevel_server`: handshake-era `resources/subscribe` / `resources/unsubscribe` are not served by
   `MCPServer`, and an `Extension` may not bind a spec method (`MethodBinding` refuses it); the low-level
   server's public `add_request_handler` serves them, and registering them is what advertises
   `resources.subscribe` in the capabilities.
2. `ServerSession._connection`: a request's `session` is a per-request proxy; the connection behind it is what
   a subscription belongs to (and what `send_resource_updated` is sent on for as long as it is open).

Everything else (tools, argument checks, resources with their own mime type, prompt errors) goes through public
API: see `sdk.compat` and `mcp.server`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
from mcp.server import MCPServer

Handler = Callable[[Any, str], Awaitable[None]]


def serve_legacy_subscriptions(server: MCPServer[Any], subscribe: Handler, unsubscribe: Handler) -> None:
    """Serve `resources/subscribe` and `resources/unsubscribe`: each handler gets the requesting connection
    (see `connection_of`) and the URI."""

    async def on_subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        await subscribe(connection_of(ctx), str(params.uri))
        return types.EmptyResult()

    async def on_unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        await unsubscribe(connection_of(ctx), str(params.uri))
        return types.EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, on_subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, on_unsubscribe)


def connection_of(ctx: Any) -> Any:
    """The connection a low-level request context's session belongs to: the same object for every request of
    one client connection, with `send_resource_updated(uri)`."""
    return ctx.session._connection
