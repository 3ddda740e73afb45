"""The composition root: one `App` per server process, owning what every face serves with.

The App holds the settings, the engine (open while `running`), the webhook service, the schema service and
the background tasks (file repair, webhook dispatch, and the watchers a face adds, such as the MCP server's
change notifier). The faces *receive* it: the MCP server (`create_server(app=…)`) and the HTTP service
(`matrix_service`) are built around one App, and the REST API and the board call `app.engine`, never the
store behind it. Before start-up and after shut-down `app.engine` raises `Unavailable`, which every face
maps by type (a tool error saying so, HTTP 503).

Layering: the App sits below the faces (mcp/, http/, cli/) and above the engine, integrations, schema and
store; it imports none of the faces.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from matrix_mcp import __version__
from matrix_mcp.config import Settings, url_password
from matrix_mcp.engine import Engine
from matrix_mcp.errors import MatrixError, starting
from matrix_mcp.integrations.runner import Waker, dispatch_when_needed
from matrix_mcp.schema.service import SchemaService

if TYPE_CHECKING:
    from matrix_mcp.engine.access import Access
    from matrix_mcp.integrations.service import Hooks

log = logging.getLogger("matrix_mcp.app")

Watcher = Callable[[Engine], Coroutine[Any, Any, None]]
"""A background task run with the open engine while the App runs (cancelled when it stops)."""


class App:
    """What a Matrix server serves with: the engine, the webhook service, the schema service and the
    background tasks, opened and closed together by `running`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schema = SchemaService(lambda: settings.schema_database_url or settings.database_url)
        self.waker = Waker()
        self._engine: Engine | None = None
        self._hooks: Hooks | None = None
        self._watchers: list[Watcher] = []

    @property
    def secrets(self) -> tuple[str, ...]:
        """What no result, log line or error may show (the database password)."""
        return tuple(p for p in (url_password(self.settings.database_url),) if p)

    @property
    def engine(self) -> Engine:
        """The engine, while the App runs.

        Raises:
            Unavailable: the server is starting or stopping.
        """
        if self._engine is None:
            raise starting()
        return self._engine

    @property
    def started(self) -> bool:
        """Whether the engine is open (between start-up and shut-down)."""
        return self._engine is not None

    def access(self) -> Access | None:
        """The engine's access use cases (API keys, sessions, readiness, gauges), or None before start-up /
        after close."""
        return self._engine

    def hooks(self) -> Hooks:
        """The webhook service over the open store (loaded on first use).

        Raises:
            Unavailable: the server is starting or stopping.
        """
        from matrix_mcp.integrations.service import Hooks  # loaded on the first webhook call

        store = self.engine.store
        if self._hooks is None or self._hooks.store is not store:
            self._hooks = Hooks(store, self.settings.database_url)
        return self._hooks

    def wake_dispatcher(self) -> None:
        """Start dispatching webhook deliveries now (a subscription was added or re-activated)."""
        self.waker.wake()

    def watch(self, watcher: Watcher) -> None:
        """Run `watcher(engine)` in the background whenever the App runs (from its next start-up)."""
        self._watchers.append(watcher)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[App]:
        """Open the engine; while the body runs, repair recent files, dispatch webhook events and run the
        watchers in the background; then stop them and close the engine and the schema service."""
        try:
            engine = await Engine.open(self.settings)
        except BaseException:
            await self.schema.close()
            raise
        self._engine = engine
        log.info("matrix-mcp %s serving %s", __version__, engine.store.url_for_display)
        try:
            async with anyio.create_task_group() as tg:
                for watcher in self._watchers:
                    tg.start_soon(watcher, engine)
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
            self._engine = None
            self._hooks = None
            try:
                await engine.close()
            finally:
                await self.schema.close()


async def repair_recent_files(engine: Engine) -> None:
    """Restore files that a process killed between commit and link left missing (recent completions)."""
    try:
        report = await engine.repair_recent_files()
    except MatrixError as exc:
        log.warning("could not check recent outcome files: %s", exc)
        return
    if report.repaired or report.unrepairable:
        log.warning(
            "restored %d missing outcome file(s); %d cannot be restored", report.repaired, report.unrepairable
        )
