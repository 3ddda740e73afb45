"""The state a Matrix server serves with, and how its tools and resources reach it.

A tool reaches the server's `ServerState` (over the `App`: the engine, the webhook service, the schema
service; plus the notifier) through its context: `ctx.mcp_server` is the server `create_server` built, and
`state` is its explicit state object, opened and closed by the server's lifespan (`running`). The same works for a call through the REST
API, which has no MCP request behind it. `call` and `read` turn engine results and errors into tool results,
tool errors and protocol errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import mcp_types as types
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, ValidationError

from matrix_mcp.app import App
from matrix_mcp.config import Settings, redact_text
from matrix_mcp.engine import Engine, InputError
from matrix_mcp.engine.core import ProgressFn
from matrix_mcp.errors import NotFound, StoreError, Unavailable
from matrix_mcp.mcp.notify import CountingBus, LegacySubscriptions, Notifier
from matrix_mcp.mcp.tools.schema import SchemaAccess
from matrix_mcp.sdk.compat import ModelResult

if TYPE_CHECKING:
    from matrix_mcp.integrations.service import Hooks

log = logging.getLogger("matrix_mcp.server")
T = TypeVar("T")


@dataclass
class ServerState:
    """The MCP face's state over one `App` (the composition root, `matrix_mcp/app.py`): the App owns the
    engine, the webhook service, the schema service and the background tasks; this adds what only MCP
    has (resource subscriptions and their notifier, the schema tools' error mapping) and turns the App's
    errors into tool errors. `running` is the App's, with the notifier among its background tasks."""

    app: App
    schema: SchemaAccess
    bus: CountingBus = field(default_factory=CountingBus)
    legacy: LegacySubscriptions = field(default_factory=LegacySubscriptions)
    notifier: Notifier = field(init=False)

    def __post_init__(self) -> None:
        self.notifier = Notifier(self.bus, self.legacy)
        self.app.watch(self.notifier.watch)

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.app.secrets

    def engine(self) -> Engine:
        """The App's engine; while the server starts or stops, a tool error saying so (the same text; REST
        answers 503 by its cause's type, `Unavailable`)."""
        try:
            return self.app.engine
        except Unavailable as exc:
            raise ToolError(str(exc)) from exc

    def hooks(self) -> Hooks:
        self.engine()  # the tool error while starting or stopping
        return self.app.hooks()

    def wake_dispatcher(self) -> None:
        self.app.wake_dispatcher()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ServerState]:
        """The App running: the engine open, the notifier and the App's other background tasks started;
        all closed after."""
        async with self.app.running():
            yield self

    async def call(
        self, awaitable: Awaitable[BaseModel], full: bool = True, full_only: str = ""
    ) -> CallToolResult:
        """Run an engine call; return its model as structured content plus the same JSON, compact, as text
        (hosts that ignore structuredContent read the text). full=False leaves out the field `full_only`
        (a report's full record, a heartbeat's per-lease list). Map engine/store errors to tool errors that
        name the field; never leak a password."""
        try:
            model = await awaitable
            data = model.model_dump(
                mode="json", exclude_none=True, exclude={full_only} if full_only and not full else None
            )  # absent = null: fewer tokens, less to check
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            return ModelResult(content=[TextContent(type="text", text=text)], structured_content=data)
        except Unavailable as exc:
            raise ToolError(f"retryable: {redact_text(str(exc), self.secrets)}") from exc
        except StoreError as exc:
            prefix = f"{exc.field}: " if exc.field else ""
            raise ToolError(prefix + redact_text(str(exc), self.secrets)) from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "input"
            raise ToolError(f"{where}: {first['msg']}") from exc

    async def read(self, awaitable: Awaitable[T]) -> T:
        """Protocol codes a client can act on: an unknown run/package/outcome is resource-not-found and a
        malformed name (too long, NUL...) invalid params (both -32602), each naming the part of the URI."""
        try:
            return await awaitable
        except ToolError as exc:
            raise ResourceError(str(exc)) from exc
        except (NotFound, InputError) as exc:
            message = (f"{exc.field}: " if exc.field else "") + redact_text(str(exc), self.secrets)
            if isinstance(exc, NotFound):
                raise ResourceNotFoundError(message) from None
            raise MCPError(types.INVALID_PARAMS, message) from None
        except StoreError as exc:
            raise ResourceError(redact_text(str(exc), self.secrets)) from exc

    async def complete(
        self,
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: types.CompletionArgument,
        context: types.CompletionContext | None,
    ) -> types.Completion | None:
        """Run and package names for prompt and resource-template arguments."""
        if not self.app.started:
            return None
        engine = self.app.engine
        prefix = argument.value or ""
        if argument.name == "run":
            names = [r.name for r in (await engine.list_runs()).runs]
        elif argument.name == "package":
            run = (context.arguments or {}).get("run") if context else None
            if not run:
                return types.Completion(values=[])
            try:
                names = [p.package for p in await engine.package_summaries(run)]
            except StoreError:
                return types.Completion(values=[])
        else:
            return None
        matches = [n for n in names if n.startswith(prefix)]
        return types.Completion(values=matches[:100], total=len(matches), has_more=len(matches) > 100)


def progress_of(ctx: Context) -> ProgressFn | None:
    """Where a long-poll reports how long it has waited: MCP progress notifications to the requester (the
    SDK sends them only when the request carried a progressToken); None when the call did not come over
    MCP (the REST API), with no session to send them on."""
    try:
        ctx.request_context  # noqa: B018  # raises outside an MCP request
    except ValueError:
        return None

    async def progress(done: float, total: float | None, message: str | None) -> None:
        await ctx.report_progress(done, total, message)

    return progress


def state_of(ctx: Context) -> ServerState:
    """The state of the Matrix server a tool or resource runs on."""
    state = getattr(ctx.mcp_server, "state", None)
    if not isinstance(state, ServerState):
        raise ToolError("not a Matrix server")
    return state
