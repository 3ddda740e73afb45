"""The webhook tools and the subscription-state resource, registered on the main server. Thin: parse,
call the Hooks service, return its model. Over HTTP these need scope matrix:admin (TOOL_NAMES).

They declare no output schema (the models in integrations/models.py are the shapes): every tool
definition is read into each client's context, and admin tools are rarely called."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from matrix_mcp.integrations.models import (
    WebhookList,
)
from matrix_mcp.integrations.service import Hooks

TOOL_NAMES = (
    "add_webhook",
    "list_webhooks",
    "update_webhook",
    "remove_webhook",
    "test_webhook",
    "list_deliveries",
    "redeliver",
)
WEBHOOKS_URI = "matrix://webhooks"


def register_hook_tools(
    mcp: MCPServer[Any],
    hooks: Callable[[], Hooks],
    call: Callable[[Awaitable[BaseModel]], Awaitable[CallToolResult]],
    read: Callable[[Awaitable[Any]], Awaitable[Any]],
    added: Callable[[], None],
) -> None:
    """`added` is called after a subscription is added or re-activated (wakes this process's dispatcher)."""

    async def then_wake(awaitable: Awaitable[BaseModel]) -> BaseModel:
        result = await awaitable
        added()
        return result

    @mcp.tool()
    async def add_webhook(
        url: str,
        events: list[str],
        run: str | None = None,
        kind: Literal["webhook", "slack", "jira", "github"] = "webhook",
        secret: str | None = None,
        headers: dict[str, str] | None = None,
        description: str | None = None,
        token: str | None = None,
        options: dict[str, str] | None = None,
    ) -> CallToolResult:
        """Subscribe url to event types (or '*'); returns the signing secret, once."""
        return await call(
            then_wake(hooks().add(url, events, run, kind, secret, headers, description, token, options))
        )

    @mcp.tool()
    async def list_webhooks() -> CallToolResult:
        """Subscriptions and their state."""
        return await call(hooks().list_all())

    @mcp.tool()
    async def update_webhook(
        id: str,
        active: bool | None = None,
        events: list[str] | None = None,
        url: str | None = None,
        rotate_secret: bool = False,
    ) -> CallToolResult:
        """Change a subscription; rotate_secret returns a new secret."""
        return await call(then_wake(hooks().update(id, active, events, url, rotate_secret)))

    @mcp.tool()
    async def remove_webhook(id: str) -> CallToolResult:
        """Delete a subscription and its delivery history."""
        return await call(hooks().remove(id))

    @mcp.tool()
    async def test_webhook(id: str) -> CallToolResult:
        """Send a signed `ping` now and say what the endpoint answered."""
        return await call(hooks().test(id))

    @mcp.tool()
    async def list_deliveries(
        webhook: str | None = None,
        status: Literal["pending", "succeeded", "failed"] | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> CallToolResult:
        """Deliveries and their status; page with next_cursor."""
        return await call(hooks().deliveries(webhook, status, cursor, limit))

    @mcp.tool()
    async def redeliver(
        delivery_id: str | None = None, webhook: str | None = None, since: datetime | None = None
    ) -> CallToolResult:
        """Send again one delivery, or a webhook's deliveries since a time."""
        return await call(
            hooks().redeliver(delivery_id, webhook, since.timestamp() if since is not None else None)
        )

    @mcp.resource(
        WEBHOOKS_URI, mime_type="application/json", description="Webhook subscriptions and their state."
    )
    async def webhooks_resource() -> WebhookList:
        result: WebhookList = await read(hooks().list_all())
        return result
