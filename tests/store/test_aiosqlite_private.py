"""One test per use of aiosqlite internals (matrix_mcp.store.sqlite.aiosqlite_private): each fails when
aiosqlite changes what we rely on."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import aiosqlite
import pytest

from matrix_mcp.store.sqlite.aiosqlite_private import in_thread, raw_connection


async def test_raw_connection_is_the_sqlite3_connection_aiosqlite_drives(tmp_path: Path) -> None:
    """`Connection._conn`: the sqlite3 connection itself — what aiosqlite writes through is what we read,
    and (opened with check_same_thread=False) it can be used on the event loop's thread directly."""
    async with aiosqlite.connect(
        str(tmp_path / "a.db"), isolation_level=None, check_same_thread=False
    ) as conn:
        await conn.execute("CREATE TABLE t (x INTEGER)")
        await conn.execute("INSERT INTO t VALUES (7)")
        raw = raw_connection(conn)
        assert isinstance(raw, sqlite3.Connection)
        assert raw.execute("SELECT x FROM t").fetchall() == [(7,)]
        raw.execute("INSERT INTO t VALUES (8)")
        async with conn.execute("SELECT count(*) FROM t") as cur:
            assert await cur.fetchone() == (2,)


async def test_in_thread_runs_one_function_on_the_connections_thread(tmp_path: Path) -> None:
    """`Connection._execute(fn, *args)`: fn runs once, on aiosqlite's own thread (not the event loop's), gets
    the sqlite3 connection and the arguments, and its result — or its exception — comes back."""
    async with aiosqlite.connect(str(tmp_path / "b.db"), isolation_level=None) as conn:
        seen: list[int] = []

        def batch(c: sqlite3.Connection, a: int, b: int) -> int:
            seen.append(threading.get_ident())
            c.execute("CREATE TABLE t (x INTEGER)")
            c.executemany("INSERT INTO t VALUES (?)", [(a,), (b,)])
            return int(c.execute("SELECT sum(x) FROM t").fetchone()[0])

        assert await in_thread(conn, batch, 2, 3) == 5
        assert len(seen) == 1 and seen[0] != threading.get_ident()
        await in_thread(conn, lambda c: seen.append(threading.get_ident()))
        assert seen[1] == seen[0]  # the connection's one thread, every time

        def broken(c: sqlite3.Connection) -> None:
            c.execute("SELECT * FROM missing")

        with pytest.raises(sqlite3.OperationalError, match="missing"):
            await in_thread(conn, broken)
