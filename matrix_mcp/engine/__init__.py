"""The use cases, free of SQL: planning, the work loop, watching, tracking, content and export.

Tools (MCP, REST, CLI) call the `Engine`; the engine validates, decides and calls one atomic store method.
`Engine` is a thin facade: each use case lives in its own module, as a class over `EngineCore` (the store,
the settings, the artifact store and the caches every use case shares):

- `access`: API keys, board sessions, readiness and the gauges of /metrics (`Access`; `open_access` for
  a server without an engine)
- `validate`: argument checks and their bounds (each raises `InputError` naming the field)
- `core`: `EngineCore`, `RunInfo`, run lookup and the outcome-path checks reports share
- `planning`: plan, control, list and read runs
- `work`: claim, heartbeat, complete, fail, retry
- `watching`: a run's status, progress, throughput and events
- `tracking`: the seed's tracking API (record and update outcomes, list, summarise)
- `content`: an outcome and its stored content, file repair, garbage collection
- `export`: a run's outcomes as JSON Lines or CSV

A new use case goes into the module of its noun; `Engine` gains it by inheritance, with nothing to
restate here.
"""

from __future__ import annotations

import anyio

from matrix_mcp.config import Settings
from matrix_mcp.engine.access import Access
from matrix_mcp.engine.content import Content
from matrix_mcp.engine.core import EngineCore, RunInfo
from matrix_mcp.engine.export import Export
from matrix_mcp.engine.planning import Planning
from matrix_mcp.engine.tracking import Tracking
from matrix_mcp.engine.validate import (
    MAX_MEDIA_TYPE_LENGTH,
    MAX_SEQ,
    MEDIA_TYPE_ERROR,
    MEDIA_TYPE_PATTERN,
    is_media_type,
    json_depth,
)
from matrix_mcp.engine.watching import Watching
from matrix_mcp.engine.work import Work
from matrix_mcp.errors import InputError
from matrix_mcp.store import open_store

__all__ = [
    "MAX_MEDIA_TYPE_LENGTH",
    "MAX_SEQ",
    "MEDIA_TYPE_ERROR",
    "MEDIA_TYPE_PATTERN",
    "Access",
    "Engine",
    "EngineCore",
    "InputError",
    "RunInfo",
    "is_media_type",
    "json_depth",
]


class Engine(Planning, Work, Watching, Tracking, Content, Export, Access):
    """Every use case over one store: what MCP tools, REST endpoints and the CLI call.

    Each method raises the errors of `matrix_mcp.errors` on purpose, listed in its docstring; besides
    those, any method that reads or writes the store may raise `Unavailable` while the database cannot
    be reached (retryable).
    """

    @classmethod
    async def open(cls, settings: Settings) -> Engine:
        """Open the store at settings.database_url (migrating it) and secure the artifacts root.

        Args:
            settings: the database, the artifacts root and the limits.

        Raises:
            ValueError: a database URL that is neither sqlite:///… nor postgresql://….
            Unavailable: PostgreSQL cannot be reached (one line naming host and port).
        """
        store = await open_store(settings.database_url, deadline=settings.db_deadline_seconds)
        try:
            engine = cls(store, settings)
            await anyio.to_thread.run_sync(engine.artifacts.secure_root)
            return engine
        except BaseException:
            await store.close()  # an open store left behind keeps its connection threads alive
            raise

    async def close(self) -> None:
        """Close the store and its connections."""
        await self.store.close()
