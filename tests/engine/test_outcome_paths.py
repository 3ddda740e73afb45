"""Where a report's readable file goes, on both backends (the `engine` fixture runs SQLite and PostgreSQL).

A client's `outcome_path` is relative to its run's own folder, so a `matrix:work` credential cannot point
it at another run's file or folder; one path is the file of one item, so two items of a run cannot take
turns overwriting one file, and of two reports racing for one path exactly one commits. Paths stored before
they were run-relative (relative to the artifacts root) keep reading, repairing and collecting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import anyio
import pytest

from matrix_mcp.cli.main import _gc
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.errors import Conflict, StoreError
from matrix_mcp.models import ClaimedItem, PackageSpec
from matrix_mcp.store.sqlite.migrations import MIGRATIONS
from tests.conftest import assert_consistent
from tests.store.test_contract import _sql

pytestmark = pytest.mark.anyio


async def claimed(engine: Engine, run: str, items: list[str]) -> dict[str, ClaimedItem]:
    await engine.plan_run(run, packages=[PackageSpec(name="p", items=items)])
    got = await engine.claim_items(run, worker="w", limit=len(items))
    return {c.item: c for c in got.items}


async def test_a_clients_path_is_inside_its_runs_folder_and_cannot_reach_another_run(engine: Engine) -> None:
    root = engine.artifacts.root
    a = await claimed(engine, "a", ["x"])
    b = await claimed(engine, "b", ["x", "y"])
    done = await engine.complete_item(a["x"].outcome_id, lease_token=a["x"].lease_token, content="A's report")
    assert done.outcome and done.outcome.outcome_path == "a/p/x"
    # b's worker names a's file: it lands in b's folder; a's file keeps a's bytes
    out = await engine.complete_item(
        b["x"].outcome_id, lease_token=b["x"].lease_token, content="overwritten", outcome_path="a/p/x"
    )
    assert out.outcome and out.outcome.outcome_path == "b/a/p/x"
    assert (root / "b" / "a" / "p" / "x").read_text() == "overwritten"
    assert (root / "a" / "p" / "x").read_text() == "A's report"
    for bad in ["../a/p/x", "/a/p/x", "x/../../a/p/x"]:  # and it cannot climb out of b's folder
        with pytest.raises(StoreError) as err:
            await engine.complete_item(
                b["y"].outcome_id, lease_token=b["y"].lease_token, content="pwn", outcome_path=bad
            )
        assert err.value.field == "outcome_path"
    assert (root / "a" / "p" / "x").read_text() == "A's report"
    await assert_consistent(engine)


async def test_a_folder_name_taken_as_a_file_blocks_no_other_run(engine: Engine) -> None:
    """Before, a file at `a` (another run's folder) left every later file of run a unwritten."""
    root = engine.artifacts.root
    b = await claimed(engine, "b", ["y", "z"])
    a = await claimed(engine, "a", ["x"])
    squat = await engine.complete_item(
        b["y"].outcome_id, lease_token=b["y"].lease_token, content="S", outcome_path="a"
    )
    assert squat.outcome and squat.outcome.outcome_path == "b/a"
    await engine.complete_item(a["x"].outcome_id, lease_token=a["x"].lease_token, content="A's report")
    assert (root / "a" / "p" / "x").read_text() == "A's report"
    # inside its own run, a path that needs y's file as a folder is refused before anything is written
    with pytest.raises(Conflict) as err:
        await engine.complete_item(
            b["z"].outcome_id, lease_token=b["z"].lease_token, content="Z", outcome_path="a/z.txt"
        )
    assert err.value.field == "outcome_path" and "p/y" in str(err.value), str(err.value)
    assert (await engine.get_outcome(b["z"].outcome_id)).status == "generating"
    await assert_consistent(engine)


async def test_a_path_another_item_holds_is_refused_naming_that_item(engine: Engine) -> None:
    items = await claimed(engine, "r", ["first", "second"])
    first, second = items["first"], items["second"]
    await engine.complete_item(
        first.outcome_id, lease_token=first.lease_token, content="1", outcome_path="o.txt"
    )
    # the same report again (a retried call) is still its own
    again = await engine.complete_item(
        first.outcome_id, lease_token=first.lease_token, content="1", outcome_path="o.txt"
    )
    assert again.outcome and again.outcome.outcome_path == "r/o.txt"
    with pytest.raises(Conflict) as err:
        await engine.complete_item(
            second.outcome_id, lease_token=second.lease_token, content="2", outcome_path="o.txt"
        )
    assert err.value.field == "outcome_path"
    assert "p/first" in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert (engine.artifacts.root / "r" / "o.txt").read_text() == "1"
    assert (await engine.get_outcome(second.outcome_id)).status == "generating"  # nothing half-written
    # the tracking API moves paths too, under the same rule
    with pytest.raises(Conflict) as err:
        await engine.update_outcome_status(second.outcome_id, status="generating", outcome_path="o.txt")
    assert "p/first" in str(err.value)
    with pytest.raises(Conflict):
        await engine.record_outcome(run="r", package="q", item="z", outcome_path="o.txt")
    done = await engine.complete_item(
        second.outcome_id, lease_token=second.lease_token, content="2", outcome_path="o2.txt"
    )
    assert done.outcome and done.outcome.outcome_path == "r/o2.txt"
    await assert_consistent(engine)


async def test_two_workers_racing_for_one_path_one_wins(settings: Settings, engine: Engine) -> None:
    """Two engines (two processes' worth of connections on one database) report 2 × 6 items with one path
    at once: exactly one report commits; each other one is refused naming the winner."""
    names = [f"i{n}" for n in range(12)]
    items = await claimed(engine, "r", names)
    other = await Engine.open(settings)
    won: list[str] = []
    refused: list[str] = []
    try:

        async def report(eng: Engine, item: ClaimedItem) -> None:
            try:
                await eng.complete_item(
                    item.outcome_id, lease_token=item.lease_token, content=item.item, outcome_path="one.txt"
                )
            except Conflict as exc:
                assert exc.field == "outcome_path"
                refused.append(str(exc))
            else:
                won.append(item.item)

        async with anyio.create_task_group() as tg:
            for n, name in enumerate(names):
                tg.start_soon(report, engine if n % 2 else other, items[name])
    finally:
        await other.close()
    assert len(won) == 1 and len(refused) == 11, (won, refused)
    assert all(f"p/{won[0]}" in text for text in refused), refused
    assert (engine.artifacts.root / "r" / "one.txt").read_text() == won[0]
    assert (await engine.run_status("r")).counts.complete == 1
    await assert_consistent(engine)


async def test_paths_stored_relative_to_the_root_still_read_repair_and_collect(
    settings: Settings, engine: Engine
) -> None:
    """An item reported before paths were run-relative: its outcome_path names a file outside the run's
    folder (relative to the artifacts root). It reads, repairs (missing or altered) and keeps its blob."""
    root = engine.artifacts.root
    items = await claimed(engine, "r", ["old"])
    old = items["old"]
    content = "reported long ago " * 10  # large enough to live in the blob store, not the database
    engine.limits = dataclasses.replace(engine.limits, inline_content_bytes=16)
    await engine.complete_item(old.outcome_id, lease_token=old.lease_token, content=content)
    (root / "r" / "p" / "old").unlink()
    await _sql(
        settings.database_url,
        [("UPDATE outcomes SET outcome_path = ? WHERE id = ?", ("legacy/old.txt", old.outcome_id))],
    )
    detail = await engine.get_outcome(old.outcome_id)  # a read relinks the missing file where it was
    assert detail.outcome_path == "legacy/old.txt"
    assert (root / "legacy" / "old.txt").read_text() == content
    assert (await engine.outcome_content(old.outcome_id))[0] == content.encode()
    (root / "legacy" / "old.txt").unlink()
    (root / "legacy" / "old.txt").write_text("someone else's bytes")
    fixed = await engine.repair_files(verify=True)
    assert (fixed.checked, fixed.repaired, fixed.unrepairable) == (1, 1, 0)
    assert (root / "legacy" / "old.txt").read_text() == content
    garbage = await engine.collect_garbage(older_than_seconds=60)
    assert garbage.removed == 0 and engine.artifacts.blob_path(sha(content)).exists()
    await assert_consistent(engine)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_gc_repair_restores_a_file_whose_bytes_differ_from_the_stored_content(
    settings: Settings, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the attack left: a readable file holding another report's bytes (the stored content right).
    `gc --repair` (verify) puts the outcome's own bytes back, from the blob or from the store's copy; the
    start-up repair, which only looks for missing files, leaves an edited file alone."""
    items = await claimed(engine, "r", ["small", "large"])
    engine.limits = dataclasses.replace(engine.limits, inline_content_bytes=100)
    small, large = items["small"], items["large"]
    await engine.complete_item(small.outcome_id, lease_token=small.lease_token, content="kept in the store")
    await engine.complete_item(large.outcome_id, lease_token=large.lease_token, content="L" * 500)
    root = engine.artifacts.root
    small_file, large_file = root / "r" / "p" / "small", root / "r" / "p" / "large"
    for file in (small_file, large_file):
        file.unlink()
        file.write_text("overwritten by another run")
    engine.artifacts.blob_path(sha("kept in the store")).unlink()  # only the store's copy is left of it
    quick = await engine.repair_files()
    assert (quick.repaired, small_file.read_text()) == (0, "overwritten by another run")
    capsys.readouterr()
    await _gc(settings, 3600, repair=True)  # `matrix-mcp gc --repair`
    out = capsys.readouterr().out
    assert "repaired 2 missing or altered outcome file(s) of 2" in out and "0 cannot be restored" in out, out
    assert small_file.read_text() == "kept in the store" and large_file.read_text() == "L" * 500
    calm = await engine.repair_files(verify=True)
    assert (calm.checked, calm.repaired) == (2, 0)


async def test_paths_two_items_shared_before_the_key_upgrade_to_the_first_completed(tmp_path: Path) -> None:
    """A SQLite database from before one path was one item's, where two items share a file: the upgrade
    does not fail, the first completed holds the path, the other keeps its row, and no third item can take
    the path any more. (PostgreSQL's version of the migration picks the holder the same way.)"""
    db = tmp_path / "old.db"
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version, script in MIGRATIONS:
        if version >= 8:
            break
        for statement in (s.strip() for s in script.split(";\n") if s.strip()):
            c.execute(statement)
        c.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
    c.execute(
        "INSERT INTO runs (id, name, outcome_type, lease_seconds, max_attempts, backoff_seconds,"
        " backoff_cap_seconds, created_at, updated_at) VALUES ('r1', 'old', 'code', 300, 3, 5, 300, 0, 0)"
    )
    c.execute("INSERT INTO packages (id, run_id, name, position, total) VALUES (7, 'r1', 'p', 0, 2)")
    for item, completed in (("late", 20.0), ("early", 10.0)):
        c.execute(
            "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, outcome_path,"
            " available_at, created_at, updated_at, completed_at) VALUES (?, 'r1', 7, ?, 0, 'complete', 'code',"
            " 'shared/x', 0, 0, 0, ?)",
            (item, item, completed),
        )
    c.close()
    engine = await Engine.open(Settings(database_url=f"sqlite:///{db}", artifacts_dir=tmp_path / "artifacts"))
    try:
        holder = await engine.store.path_holder("shared/x")
        assert holder is not None and holder.outcome_id == "early"
        assert (await engine.get_outcome("late")).outcome_path == "shared/x"  # kept, and still reads
        moved = await engine.update_outcome_status("late", status="complete", metrics={"kept": 1})
        assert moved.outcome_path == "shared/x"  # the item that shares it still updates
    finally:
        await engine.close()
    c = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError):  # a third item cannot take the path
        c.execute(
            "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, outcome_path,"
            " available_at, created_at, updated_at) VALUES ('third', 'r1', 7, 'third', 1, 'pending', 'code',"
            " 'shared/x', 0, 0, 0)"
        )
    c.close()


@pytest.mark.postgres
async def test_paths_two_items_shared_before_the_key_upgrade_on_postgresql(postgres_database: str) -> None:
    """The same upgrade on PostgreSQL (migration 10): the first completed holds the shared path."""
    import psycopg

    from matrix_mcp.store.postgres import PostgresStore
    from matrix_mcp.store.postgres.migrations import MIGRATIONS as PG_MIGRATIONS

    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at double precision NOT NULL)"
        )
        for version, script in PG_MIGRATIONS:
            if version >= 10:
                break
            for statement in (s.strip() for s in script.split(";\n")):
                if statement:
                    conn.execute(statement.encode())
            conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (version,))
        conn.execute(
            "INSERT INTO runs (id, name, outcome_type, lease_seconds, max_attempts, backoff_seconds,"
            " backoff_cap_seconds, created_at, updated_at) VALUES ('r1', 'old', 'code', 300, 3, 5, 300, 0, 0)"
        )
        row = conn.execute(
            "INSERT INTO packages (run_id, name, position) VALUES ('r1', 'p', 0) RETURNING id"
        ).fetchone()
        assert row is not None
        for pos, (item, completed) in enumerate((("late", 20.0), ("early", 10.0), ("never", None))):
            conn.execute(
                "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type,"
                " outcome_path, available_at, created_at, updated_at, completed_at)"
                " VALUES (%s, 'r1', %s, %s, %s, 'complete', 'code', 'shared/x', 0, 0, 0, %s)",
                (item, row[0], item, pos, completed),
            )
    store = await PostgresStore.open(postgres_database)
    try:
        holder = await store.path_holder("shared/x")
        assert holder is not None and (holder.outcome_id, holder.package, holder.item) == (
            "early",
            "p",
            "early",
        )
    finally:
        await store.close()
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute("UPDATE outcomes SET metrics = '{\"kept\": 1}' WHERE id = 'late'")  # still updates
        conn.execute("UPDATE outcomes SET outcome_path = 'elsewhere' WHERE id = 'never'")  # a path of its own
        with pytest.raises(psycopg.errors.UniqueViolation):  # and, once it left, cannot take the path again
            conn.execute("UPDATE outcomes SET outcome_path = 'shared/x' WHERE id = 'never'")
