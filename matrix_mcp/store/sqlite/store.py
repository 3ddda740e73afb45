"""The embedded SQLite outcome store on aiosqlite: the Store protocol, each method delegated to the module of
its noun (runs, work, tracking, events, keys, content, counters) with the store's Database
(store/delegate.py: `on_db`).

- WAL, busy_timeout, foreign keys on; several server processes may share one file.
- One writer connection per process. Concurrent write requests are merged into one
  `BEGIN IMMEDIATE` transaction (group commit); each request runs inside its own SAVEPOINT so one
  bad request rolls back alone. The whole batch runs as one function on the writer's thread.
- Reads run on their own connections inside a read transaction (one consistent snapshot).
- Summary counters live on the package rows and change in the same transaction as the outcome.
"""

from __future__ import annotations

from pathlib import Path

from matrix_mcp.store.delegate import DialectStore, delegated
from matrix_mcp.store.sqlite import content, counters, events, keys, review, runs, tracking, work
from matrix_mcp.store.sqlite.connection import Database
from matrix_mcp.store.sqlite.hooks import SQLiteHooks


@delegated(runs, work, review, tracking, events, keys, content, counters)
class SQLiteStore(DialectStore[Database]):
    """See the module docstring. Open with `await SQLiteStore.open(path)`."""

    @classmethod
    async def open(cls, path: str | Path) -> SQLiteStore:
        return cls(await Database.open(path))

    @property
    def path(self) -> Path:
        return self.db.path

    @property
    def hooks(self) -> SQLiteHooks:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        return SQLiteHooks(self.db)

    async def integrity_check(self) -> str:
        return await self.db.integrity_check()
