"""The SQLite store's change feed: appending events, reading them after a sequence number, and waiting
for the next one (this process's commits wake a waiter at once, other processes' within ~50-200 ms)."""

from __future__ import annotations

import sqlite3

import anyio

from matrix_mcp import rules
from matrix_mcp.models import Event
from matrix_mcp.store import rows as R
from matrix_mcp.store.sqlite import sql
from matrix_mcp.store.sqlite.connection import Database


def add_event(
    c: sqlite3.Connection, run_id: str | None, outcome_id: str | None, ev: rules.Ev, now: float
) -> int:
    """Append to the change feed; returns the event's sequence number."""
    cur = c.execute(sql.INSERT_EVENT, (run_id, outcome_id, ev.kind, ev.payload(), now))
    return int(cur.lastrowid or 0)


async def latest_seq(db: Database) -> int:
    return await db.read(lambda c: int(c.execute(sql.LATEST_SEQ).fetchone()[0]))


async def events_after(db: Database, *, since: int, run_id: str | None = None, limit: int) -> list[Event]:
    def op(c: sqlite3.Connection) -> list[Event]:
        if run_id is None:
            rows = c.execute(sql.EVENTS_AFTER, (since, limit)).fetchall()
        else:
            rows = c.execute(sql.EVENTS_AFTER_IN_RUN, (since, run_id, limit)).fetchall()
        return [R.event_from(r) for r in rows]

    return await db.read(op)


async def wait_for_change(db: Database, since: int, *, timeout: float) -> int:
    """Wakes on this process's commits at once and on other processes' within ~50–200 ms."""
    deadline = anyio.current_time() + timeout
    poll = 0.05
    while True:
        latest = await latest_seq(db)
        remaining = deadline - anyio.current_time()
        if latest > since or remaining <= 0:
            return latest
        changed = db.next_change()
        with anyio.move_on_after(min(poll, remaining)):
            await changed.wait()
        poll = min(poll * 1.5, 0.2)
