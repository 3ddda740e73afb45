"""The PostgreSQL store's change feed: events read after a sequence number, the latest one, and waiting
for the next (the Database wakes on this process's commits and on other processes' NOTIFY)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matrix_mcp.models import Event
from matrix_mcp.store import rows as R
from matrix_mcp.store.postgres import sql
from matrix_mcp.store.postgres.batch import Conn, fetch_all, fetch_one
from matrix_mcp.store.postgres.sql import LATEST_SEQ_SQL

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def events_after(db: Database, *, since: int, run_id: str | None = None, limit: int) -> list[Event]:
    async def op(c: Conn) -> list[Event]:
        if run_id is None:
            rows = await fetch_all(c, sql.EVENTS_AFTER, (since, limit))
        else:
            rows = await fetch_all(c, sql.EVENTS_AFTER_IN_RUN, (since, run_id, limit))
        return [R.event_from(r) for r in rows]

    return await db.read(op)


async def latest_seq(db: Database) -> int:
    async def op(c: Conn) -> int:
        row = await fetch_one(c, LATEST_SEQ_SQL)
        return int(row["s"]) if row else 0

    return await db.read(op)


async def wait_for_change(db: Database, since: int, *, timeout: float) -> int:
    """Wakes on this process's commits at once, on other processes' through LISTEN/NOTIFY (the Database's
    listener), and polls in case a notification is lost."""
    return await db.wait_for_change(since, timeout=timeout)
