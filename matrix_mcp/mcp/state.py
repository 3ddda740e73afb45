"""The state a Matrix server serves with, and how its tools and resources reach it.

A tool reaches the server's `ServerState` (the engine, the notifier, the webhook service, the schema service)
through its context: `ctx.mcp_server` is the server `create_server` built, and `state` is its explicit state
object, opened and closed by the server's lifespan (`running`). The same works for a call through the REST
API, which has no MCP request behind it. `call` and `read` turn engine results and errors into tool results,
tool errors and protocol errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import mcp_types as types
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, ValidationError

from matrix_mcp import __version__
from matrix_mcp.config import Settings, redact_text, url_password
from matrix_mcp.engine import Engine, InputError
from matrix_mcp.errors import STARTING, NotFound, StoreError, Unavailable, starting
from matrix_mcp.integrations.runner import Waker, dispatch_when_needed
from matrix_mcp.mcp.notify import CountingBus, LegacySubscriptions, Notifier
from matrix_mcp.mcp.tools.schema import SchemaAccess
from matrix_mcp.sdk_compat import ModelResult

if TYPE_CHECKING:
    from matrix_mcp.integrations.service import Hooks

log = logging.getLogger("matrix_mcp.server")
T = TypeVar("T")


@dataclass
class ServerState:
    """Everything a Matrix server serves with, created by `create_server`; the engine (and what depends on it)
    exists while the server's lifespan runs (`running`), which also closes the schema service."""

    settings: Settings
    schema: SchemaAccess
    bus: CountingBus = field(default_factory=CountingBus)
    legacy: LegacySubscriptions = field(default_factory=LegacySubscriptions)
    waker: Waker = field(default_factory=Waker)
    engine_: Engine | None = None
    notifier: Notifier | None = None
    hooks_: Hooks | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(p for p in (url_password(self.settings.database_url),) if p)

    def engine(self) -> Engine:
        if self.engine_ is None:  # the same text as a tool error; REST answers 503 by its cause's type
            raise ToolError(STARTING) from starting()
        return self.engine_

    def hooks(self) -> Hooks:
        from matrix_mcp.integrations.service import Hooks  # loaded on the first webhook call

        store = self.engine().store
        if self.hooks_ is None or self.hooks_.store is not store:
            self.hooks_ = Hooks(store, self.settings.database_url)
        return self.hooks_

    def wake_dispatcher(self) -> None:
        self.waker.wake()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ServerState]:
        """Open the engine, watch for changes to notify, repair recent files and dispatch events while the
        server runs; close the engine and the schema service after."""
        try:
            engine = await Engine.open(self.settings)
        except BaseException:
            await self.schema.close()
            raise
        self.engine_ = engine
        self.notifier = Notifier(self.bus, self.legacy)
        log.info("matrix-mcp %s serving %s", __version__, engine.store.url_for_display)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.notifier.watch, engine.store)
                tg.start_soon(repair_recent_files, engine)  # in the background: start-up stays fast
                # events out: a cheap check now and then; the dispatcher loads only once a webhook exists
                tg.start_soon(
                    dispatch_when_needed,
                    engine.store,
                    self.settings.database_url,
                    self.waker,
                    Path(self.settings.artifacts_dir),
                )
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.engine_ = None
            self.hooks_ = None
            try:
                await engine.close()
            finally:
                await self.schema.close()

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
        engine = self.engine_
        if engine is None:
            return None
        prefix = argument.value or ""
        if argument.name == "run":
            names = [r.name for r in (await engine.list_runs()).runs]
        elif argument.name == "package":
            run = (context.arguments or {}).get("run") if context else None
            if not run:
                return types.Completion(values=[])
            try:
                names = [
                    p.package
                    for p in await engine.store.package_summaries((await engine.run_info(ref=run)).id)
                ]
            except StoreError:
                return types.Completion(values=[])
        else:
            return None
        matches = [n for n in names if n.startswith(prefix)]
        return types.Completion(values=matches[:100], total=len(matches), has_more=len(matches) > 100)


def state_of(ctx: Context) -> ServerState:
    """The state of the Matrix server a tool or resource runs on."""
    state = getattr(ctx.mcp_server, "state", None)
    if not isinstance(state, ServerState):
        raise ToolError("not a Matrix server")
    return state


def engine_of(mcp: MCPServer[Any]) -> Engine | None:
    """The engine a server built by `create_server` is serving with; None before start-up / after close
    (the HTTP service's health, metrics and key checks use it)."""
    state = getattr(mcp, "state", None)
    return state.engine_ if isinstance(state, ServerState) else None


async def repair_recent_files(engine: Engine) -> None:
    """Restore files that a process killed between commit and link left missing (recent completions)."""
    try:
        report = await engine.repair_recent_files()
    except StoreError as exc:
        log.warning("could not check recent outcome files: %s", exc)
        return
    if report.repaired or report.unrepairable:
        log.warning(
            "restored %d missing outcome file(s); %d cannot be restored", report.repaired, report.unrepairable
        )
