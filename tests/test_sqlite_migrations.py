"""SQLite migrations: a database written by an older version opens, upgrades in place and keeps its data."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from matrix_mcp.store.sqlite import SQLiteStore
from matrix_mcp.store.sqlite_schema import MIGRATIONS

pytestmark = pytest.mark.anyio


def make_v1(path: Path) -> str:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    version, script = MIGRATIONS[0]
    assert version == 1
    for statement in (s.strip() for s in script.split(";\n") if s.strip()):
        c.execute(statement)
    c.execute("INSERT INTO schema_migrations VALUES (1, ?)", (time.time(),))
    c.execute(
        "INSERT INTO runs (id, name, outcome_type, lease_seconds, max_attempts, backoff_seconds,"
        " backoff_cap_seconds, created_at, updated_at) VALUES ('r1', 'old', 'code', 300, 3, 5, 300, 0, 0)"
    )
    c.execute(
        "INSERT INTO packages (id, run_id, name, position, total, complete, duration_sum, duration_n)"
        " VALUES (7, 'r1', 'p', 0, 3, 3, 6.5, 3)"
    )
    for i, d in enumerate((1.0, 2.0, 3.5)):
        c.execute(
            "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, available_at,"
            " created_at, updated_at, started_at, completed_at, duration_seconds)"
            " VALUES (?, 'r1', 7, ?, ?, 'complete', 'code', 0, 0, 0, 0, ?, ?)",
            (f"o{i}", f"i{i}", i, d, d),
        )
    c.executemany("INSERT INTO package_durations VALUES (7, ?, ?)", [(0, 1), (3, 1), (6, 1)])
    c.close()
    return "r1"


async def test_v1_database_upgrades_in_place(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    run_id = make_v1(db)
    store = await SQLiteStore.open(db)
    try:
        assert (await store.recount(run_id)).consistent
        (summary,) = await store.package_summaries(run_id)
        assert summary.completed_items == 3 and summary.p50_duration_seconds is not None
        assert summary.p50_duration_seconds == pytest.approx(2.0, rel=0.1)
        versions = [r[0] for r in sqlite3.connect(db).execute("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in MIGRATIONS]
    finally:
        await store.close()
    again = await SQLiteStore.open(db)  # reopening applies nothing twice
    await again.close()


async def test_many_processes_starting_at_once_migrate_once(tmp_path: Path) -> None:
    """Eight stores opening one fresh file at the same moment (as eight server processes would): each opens,
    every migration is applied exactly once, and the board works from all of them."""
    import anyio

    db = tmp_path / "fresh.db"
    stores: list[SQLiteStore] = []

    async def start() -> None:
        stores.append(await SQLiteStore.open(db))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(start)
        assert len(stores) == 8
        versions = [r[0] for r in sqlite3.connect(db).execute("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in MIGRATIONS]
    finally:
        for s in stores:
            await s.close()
