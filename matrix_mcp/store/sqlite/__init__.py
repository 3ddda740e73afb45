"""The embedded SQLite outcome store (see .store); callers import SQLiteStore from here."""

from matrix_mcp.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
