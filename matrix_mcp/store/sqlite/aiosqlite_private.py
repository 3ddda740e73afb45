"""Every use of aiosqlite 0.22 internals, and nothing else; each one is pinned by a test in
tests/store/test_aiosqlite_private.py that fails when aiosqlite changes it (the version is pinned to the tested
minor in pyproject.toml).

1. `Connection._execute(fn, *args)`: runs `fn(*args)` on the connection's own thread and awaits it. The public
   methods cost one thread hop per statement; a group-commit batch or a multi-statement snapshot read runs
   as one function in one hop instead.
2. `Connection._conn`: the `sqlite3.Connection` behind it. The batch function above takes it, and the inline
   writer (opened with check_same_thread=False) runs a group-commit batch on it on the event loop, with no
   thread hop at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")


def raw_connection(conn: aiosqlite.Connection) -> sqlite3.Connection:
    """The sqlite3 connection an aiosqlite connection drives."""
    raw: sqlite3.Connection = conn._conn
    return raw


async def in_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(sqlite3_connection, *args) on the aiosqlite connection's own thread, in one hop."""
    return await conn._execute(fn, raw_connection(conn), *args)  # type: ignore[no-untyped-call,no-any-return]
