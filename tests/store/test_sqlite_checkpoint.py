"""SQLite: the WAL is copied back into the database file by a background thread (PASSIVE checkpoints), not
inside a report's COMMIT; a writer checkpoints itself only past a backstop; closing the store stops it."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec
from matrix_mcp.store.sqlite import connection as sqlite_connection

pytestmark = pytest.mark.anyio

PAGE = 4096


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "matrix-sqlite-checkpoint" and t.is_alive()]


async def test_the_wal_is_checkpointed_in_the_background_and_the_thread_stops(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    before = len(_checkpoint_threads())
    engine = await Engine.open(Settings(database_url=f"sqlite:///{db}", artifacts_dir=tmp_path / "a"))
    try:
        assert len(_checkpoint_threads()) == before + 1
        items = sqlite_connection.CHECKPOINT_EVERY  # two write batches each: two checkpoint requests
        await engine.plan_run("r", packages=[PackageSpec(name="p", items=[f"i{k}" for k in range(items)])])
        main_before = db.stat().st_size
        for _ in range(items):
            c = (await engine.claim_items("r", worker="w")).items[0]
            await engine.complete_item(c.outcome_id, lease_token=c.lease_token, metrics={"n": 1})
        wal_frames = (db.with_name("m.db-wal").stat().st_size - 32) // (PAGE + 24)
        # fewer frames than any writer's own checkpoint waits for (SQLite's default 1,000; ours the backstop)
        assert wal_frames < 1000 < sqlite_connection.WAL_BACKSTOP_PAGES
        # yet the completions reach the database file itself while the store is open: the background thread
        for _ in range(200):
            if db.stat().st_size > main_before:
                break
            await anyio.sleep(0.05)
        assert db.stat().st_size > main_before
        reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            done = reader.execute("SELECT COUNT(*) FROM outcomes WHERE status = 'complete'").fetchone()[0]
        finally:
            reader.close()
        assert done == items
    finally:
        await engine.close()
    assert len(_checkpoint_threads()) == before


async def test_a_quiet_store_checkpoints_what_fewer_batches_wrote(tmp_path: Path) -> None:
    """Writes that stop short of CHECKPOINT_EVERY batches still reach the database file once writes pause:
    readers of a fully checkpointed WAL read the file alone."""
    db = tmp_path / "m.db"
    engine = await Engine.open(Settings(database_url=f"sqlite:///{db}", artifacts_dir=tmp_path / "a"))
    try:
        await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a", "b", "c"])])
        main_before = db.stat().st_size
        for _ in range(3):  # six write batches, far fewer than CHECKPOINT_EVERY
            c = (await engine.claim_items("r", worker="w")).items[0]
            await engine.complete_item(c.outcome_id, lease_token=c.lease_token)
        assert sqlite_connection.CHECKPOINT_EVERY > 6
        for _ in range(100):
            if db.stat().st_size > main_before:
                break
            await anyio.sleep(0.05)
        assert db.stat().st_size > main_before
    finally:
        await engine.close()
