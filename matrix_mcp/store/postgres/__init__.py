"""The PostgreSQL outcome store (see .store); callers import PostgresStore from here."""

from matrix_mcp.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
