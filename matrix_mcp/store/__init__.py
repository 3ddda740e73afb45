"""The outcome store: the Store protocol (`protocol`), its parameter objects (`params`), what both dialects
share (`rows`, `group_commit`, `hooks`), and one package per dialect (`sqlite`, `postgres`).

`open_store(url)` is the one way in: it imports a dialect only when its URL is asked for (psycopg only for
PostgreSQL)."""

from __future__ import annotations

from matrix_mcp.config import is_postgres_url, redact_url, sqlite_path
from matrix_mcp.store.protocol import Store


async def open_store(url: str, *, deadline: float | None = None) -> Store:
    """The store at `url` (sqlite:///path or postgresql://…), opened and migrated. `deadline`: PostgreSQL
    only, seconds within which every database call answers (MATRIX_DB_DEADLINE_SECONDS; default 10)."""
    if is_postgres_url(url):
        from matrix_mcp.store.postgres import PostgresStore

        if deadline is None:
            return await PostgresStore.open(url)
        return await PostgresStore.open(url, deadline=deadline)
    path = sqlite_path(url)
    if path is None:
        raise ValueError(
            f"unsupported database URL {redact_url(url)!r}: use sqlite:///path or postgresql://…"
        )
    from matrix_mcp.store.sqlite import SQLiteStore

    return await SQLiteStore.open(path)


__all__ = ["Store", "open_store"]
