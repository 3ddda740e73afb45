"""The webhook tools and the subscription-state resource, served by the main server. Thin: parse, call the
Hooks service, return its model. Over HTTP these need scope matrix:admin (their specs say so); no narrower
toolset lists them and they have no REST endpoint. They reach the server's state (`HookHost`) through their
context (`ctx.mcp_server.state`).

They declare no output schema (the models in integrations/models.py are the shapes): every tool
definition is read into each client's context, and admin tools are rarely called."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resources import FunctionResource
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from matrix_mcp.mcp.spec import ADMIN, ResourceSpec, ToolSpec

if TYPE_CHECKING:  # loaded on the first webhook call: start-up stays fast
    from matrix_mcp.integrations.models import WebhookList
    from matrix_mcp.integrations.service import Hooks

# subscriptions, as list_webhooks shows them: admin only, as the tools are
WEBHOOKS = ResourceSpec(
    uri="matrix://webhooks",
    name="webhooks_resource",
    description="Webhook subscriptions and their state.",
    scope=ADMIN,
)
RESOURCES = (WEBHOOKS,)


@runtime_checkable
class HookHost(Protocol):
    """What the webhook tools need of the server's state."""

    def hooks(self) -> Hooks: ...

    async def call(self, awaitable: Awaitable[BaseModel]) -> CallToolResult: ...

    async def read(self, awaitable: Awaitable[Any]) -> Any: ...

    def wake_dispatcher(self) -> None:
        """Called after a subscription is added or re-activated (wakes this process's dispatcher)."""


def host_of(ctx: Context) -> HookHost:
    state = getattr(ctx.mcp_server, "state", None)
    if not isinstance(state, HookHost):
        raise ToolError("webhooks are not available on this server")
    return state


async def _then_wake(host: HookHost, awaitable: Awaitable[BaseModel]) -> BaseModel:
    result = await awaitable
    host.wake_dispatcher()
    return result


async def add_webhook(
    ctx: Context,
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
    host = host_of(ctx)
    added = host.hooks().add(
        url=url,
        events=events,
        run=run,
        kind=kind,
        secret=secret,
        headers=headers,
        description=description,
        token=token,
        options=options,
    )
    return await host.call(_then_wake(host, added))


async def list_webhooks(ctx: Context) -> CallToolResult:
    """Subscriptions and their state."""
    host = host_of(ctx)
    return await host.call(host.hooks().list_all())


async def update_webhook(
    ctx: Context,
    id: str,
    active: bool | None = None,
    events: list[str] | None = None,
    url: str | None = None,
    rotate_secret: bool = False,
) -> CallToolResult:
    """Change a subscription; rotate_secret returns a new secret."""
    host = host_of(ctx)
    updated = host.hooks().update(
        webhook=id, active=active, events=events, url=url, rotate_secret=rotate_secret
    )
    return await host.call(_then_wake(host, updated))


async def remove_webhook(ctx: Context, id: str) -> CallToolResult:
    """Delete a subscription and its delivery history."""
    host = host_of(ctx)
    return await host.call(host.hooks().remove(webhook=id))


async def test_webhook(ctx: Context, id: str) -> CallToolResult:
    """Send a signed `ping` now and say what the endpoint answered."""
    host = host_of(ctx)
    return await host.call(host.hooks().test(webhook=id))


async def list_deliveries(
    ctx: Context,
    webhook: str | None = None,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Field(ge=1, le=1000)] = 100,  # the Hooks service's own page bound
) -> CallToolResult:
    """Deliveries and their status; page with next_cursor."""
    host = host_of(ctx)
    return await host.call(
        host.hooks().deliveries(webhook=webhook, status=status, cursor=cursor, limit=limit)
    )


async def redeliver(
    ctx: Context, delivery_id: str | None = None, webhook: str | None = None, since: datetime | None = None
) -> CallToolResult:
    """Send again one delivery, or a webhook's deliveries since a time."""
    host = host_of(ctx)
    return await host.call(
        host.hooks().redeliver(
            delivery_id=delivery_id, webhook=webhook, since=since.timestamp() if since is not None else None
        )
    )


# webhook subscriptions hold secrets and send data off the machine: admin only
SPECS = tuple(
    ToolSpec(fn, scope=ADMIN)
    for fn in (
        add_webhook,
        list_webhooks,
        update_webhook,
        remove_webhook,
        test_webhook,
        list_deliveries,
        redeliver,
    )
)


async def webhooks_resource(host: HookHost) -> WebhookList:
    result: WebhookList = await host.read(host.hooks().list_all())
    return result


def hook_resources(host: HookHost) -> list[FunctionResource]:
    return [WEBHOOKS.resource(partial(webhooks_resource, host))]
