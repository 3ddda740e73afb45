"""Hostile input on both backends: SQL in every name (stored as text, never executed, also through the
schema tools), artifact paths that try to leave the root, configurable limits, and disk trouble for
artifacts (full or read-only directory)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client

from matrix_mcp.config import Limits, Settings
from matrix_mcp.mcp.server import create_server
from tests.support.reliability_helpers import check_store

pytestmark = pytest.mark.anyio

SQL = [
    "'; DROP TABLE outcomes; --",
    "COMMIT; DROP SCHEMA public CASCADE;",
    'x"; DELETE FROM runs; --',
    "1 OR 1=1",
]


async def data(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    r = await c.call_tool(tool, args)
    assert not r.is_error, r.content
    return dict(r.structured_content or {})


async def error(c: Client, tool: str, args: dict[str, Any]) -> str:
    r = await c.call_tool(tool, args)
    assert r.is_error, r.structured_content
    return " ".join(getattr(x, "text", "") for x in r.content)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with Client(create_server(settings)) as c:
        yield c


def store_tables(url: str) -> set[str]:
    from tests.support.reliability_helpers import _rows

    if url.startswith("sqlite"):
        return {r[0] for r in _rows(url, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {r[0] for r in _rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


async def test_sql_in_every_name_is_stored_as_text(client: Client, settings: Settings) -> None:
    url = settings.database_url
    before = store_tables(url)
    for k, evil in enumerate(SQL):
        run = f"{evil}-{k}"
        plan = await data(
            client,
            "plan_run",
            {
                "name": run,
                "goal": evil,
                "outcome_type": evil,
                "packages": [{"name": evil, "description": evil, "items": [evil, evil + "2"]}],
            },
        )
        assert plan["run"]["name"] == run and plan["items"] == 2
        got = await data(client, "claim_items", {"run": run, "worker": evil, "package": evil, "limit": 2})
        assert {i["item"] for i in got["items"]} == {evil, evil + "2"} and got["items"][0]["package"] == evil
        item = got["items"][0]
        done = await data(
            client,
            "complete_item",
            {
                "outcome_id": item["outcome_id"],
                "lease_token": item["lease_token"],
                "content": evil,
                "metrics": {evil: 1, "lines_generated": 3},
                "metadata": {evil: evil},
                "detail": "full",
            },
        )
        done = done["outcome"]
        assert done["metrics"][evil] == 1 and done["worker"] == evil
        await data(
            client,
            "fail_item",
            {
                "outcome_id": got["items"][1]["outcome_id"],
                "lease_token": got["items"][1]["lease_token"],
                "error": evil,
                "retryable": False,
            },
        )
        rec = await data(
            client,
            "record_outcome",
            {
                "run": run,
                "package": evil + "p",
                "item": evil,
                "status": "complete",
                "created_by": evil,
                "error_message": evil,
            },
        )
        assert rec["outcome"]["package"] == evil + "p"
        await data(
            client,
            "record_integration_event",
            {"integration_type": evil, "action": evil, "status": evil, "run": run, "details": {evil: evil}},
        )
        page = await data(
            client, "list_outcomes", {"run": run, "package": evil, "worker": evil, "status": "complete"}
        )
        assert [o["item"] for o in page["outcomes"]] == [evil]
        summary = await data(client, "package_summary", {"package": evil, "run": run})
        assert summary["completed_items"] == 1 and summary["failed_items"] == 1
        await data(client, "retry_items", {"run": run, "package": evil})
        await data(client, "export_outcomes", {"run": run, "format": "csv"})
        # lookups by hostile names that do not exist are clean "unknown" errors, never SQL errors
        assert (
            "unknown"
            in (await error(client, "package_summary", {"package": evil + "zz", "run": run})).lower()
        )
        assert "run" in await error(client, "claim_items", {"run": evil + "zz", "worker": "w"})
    runs = await data(client, "list_runs", {})
    assert {r["name"] for r in runs["runs"]} == {f"{e}-{k}" for k, e in enumerate(SQL)}
    assert store_tables(url) == before
    assert await check_store(url, settings.artifacts_dir) == []


def create_evil_table(url: str, name: str) -> None:
    if url.startswith("sqlite"):
        import sqlite3

        from matrix_mcp.config import sqlite_path

        conn = sqlite3.connect(sqlite_path(url))  # type: ignore[arg-type]
        with conn:
            conn.execute(
                'CREATE TABLE "'
                + name.replace('"', '""')
                + '" (id INTEGER PRIMARY KEY, "v; DROP TABLE runs" TEXT)'
            )
        conn.close()
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL('CREATE TABLE {} (id int PRIMARY KEY, "v; DROP TABLE runs" text)').format(
                sql.Identifier(name)
            )
        )


async def test_sql_in_table_names_through_the_schema_tools(client: Client, settings: Settings) -> None:
    url = settings.database_url
    await data(client, "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["i"]}]})
    evil = "t'; DROP TABLE outcomes; --"
    create_evil_table(url, evil)
    before = store_tables(url)
    ddl = await data(client, "generate_table_ddl", {"table_name": evil})
    assert "DROP TABLE outcomes" in str(ddl)  # the name is in the DDL, quoted as an identifier
    listed = await data(client, "analyze_schema", {"tables": [evil], "detail": "full"})
    assert evil in str(listed)
    await data(client, "find_relationships", {"table_name": evil})
    await data(client, "generate_api_schema", {"tables": [evil]})
    for name in SQL:
        for tool, args in (
            ("generate_table_ddl", {"table_name": name}),
            ("generate_table_ddl", {"table_name": "outcomes", "schema_name": name}),
            ("analyze_schema", {"tables": [name], "schema_name": name}),
            ("find_relationships", {"table_name": name}),
            ("generate_api_schema", {"tables": [name], "format": "graphql"}),
        ):
            r = await client.call_tool(tool, args)  # an error or an empty answer; never executed
            if r.is_error:
                assert "syntax" not in str(r.content).lower(), r.content
    assert store_tables(url) == before and "outcomes" in before
    assert (
        await data(
            client,
            "get_outcome",
            {"outcome_id": (await data(client, "list_outcomes", {"run": "r"}))["outcomes"][0]["id"]},
        )
    )["item"] == "i"
    assert await check_store(url, settings.artifacts_dir) == []


async def test_artifact_paths_never_leave_the_root(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    root = settings.artifacts_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir(parents=True, exist_ok=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "target.txt")
    await data(
        client, "plan_run", {"name": "r", "packages": [{"name": "p", "items": [f"i{j}" for j in range(30)]}]}
    )
    bad = [
        "../escape.txt",
        "a/../../escape.txt",
        "/tmp/abs.txt",
        str(outside / "abs.txt"),
        "~/home.txt",
        "a\\..\\..\\win.txt",
        "link/escape.txt",
        "link/../../escape.txt",
        "filelink",
        "x" * 300,
        "/".join(["d" * 200] * 8),
        "CON",
        "nul.txt",
        "a/aux/b.txt",
        ".blobs/00/evil",
        "exports/evil.jsonl",
        "a\x00b",
        ".",
        "",
    ]
    refused = 0
    for path in bad:
        item = (await data(client, "claim_items", {"run": "r", "worker": "w"}))["items"][0]
        ref = {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
        text = await error(client, "complete_item", {**ref, "content": "evil", "outcome_path": path})
        assert "outcome_path" in text, (path, text)
        got = await data(client, "get_outcome", {"outcome_id": item["outcome_id"]})
        assert got["status"] == "generating"  # the outcome was not completed
        text = await error(
            client,
            "record_outcome",
            {"run": "r", "package": "p", "item": f"rec{refused}", "outcome_path": path},
        )
        assert "outcome_path" in text
        refused += 1
    # a symlink planted at an item's default path: the report must not write through it
    (root / "r").mkdir(exist_ok=True)
    (root / "r" / "p2").symlink_to(outside, target_is_directory=True)
    await data(client, "plan_run", {"name": "r", "packages": [{"name": "p2", "items": ["x"]}]})
    item = (await data(client, "claim_items", {"run": "r", "worker": "w", "package": "p2"}))["items"][0]
    await client.call_tool(
        "complete_item",
        {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"], "content": "evil"},
    )
    assert list(outside.iterdir()) == []  # nothing written outside the root
    assert refused == len(bad)
    assert await check_store(settings.database_url, root) == []


@pytest.fixture
def limited(database_url: str, tmp_path: Path) -> Settings:
    env = {
        "MATRIX_DATABASE_URL": database_url,
        "MATRIX_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "MATRIX_MAX_CONTENT_BYTES": "100",
        "MATRIX_MAX_ITEMS_PER_PLAN": "5",
        "MATRIX_MAX_PAGE_SIZE": "3",
        "MATRIX_MAX_JSON_DEPTH": "3",
        "MATRIX_MAX_JSON_BYTES": "200",
    }
    s = Settings.from_env(env)
    assert s.limits == Limits(
        max_content_bytes=100, max_items_per_plan=5, max_page_size=3, max_json_depth=3, max_json_bytes=200
    )
    return s


async def test_limits_are_configurable_and_enforced_with_clear_errors(limited: Settings) -> None:
    with pytest.raises(ValueError, match="MATRIX_MAX_PAGE_SIZE"):
        Settings.from_env({"MATRIX_MAX_PAGE_SIZE": "0"})
    async with Client(create_server(limited)) as c:
        assert "packages" in await error(
            c, "plan_run", {"name": "r", "packages": [{"name": "p", "items": list("abcdef")}]}
        )
        assert (await data(c, "list_runs", {}))["runs"] == []  # nothing half-written
        await data(c, "plan_run", {"name": "r", "packages": [{"name": "p", "items": list("abcd")}]})
        assert "limit" in await error(c, "claim_items", {"run": "r", "worker": "w", "limit": 4})
        assert "limit" in await error(c, "list_outcomes", {"run": "r", "limit": 4})
        items = (await data(c, "claim_items", {"run": "r", "worker": "w", "limit": 3}))["items"]
        ref = {"outcome_id": items[0]["outcome_id"], "lease_token": items[0]["lease_token"]}
        assert "content" in await error(c, "complete_item", {**ref, "content": "x" * 101})
        assert "metrics" in await error(c, "complete_item", {**ref, "metrics": {"a": {"b": {"c": {"d": 1}}}}})
        assert "metadata" in await error(c, "complete_item", {**ref, "metadata": {"a": "x" * 300}})
        assert "specifications" in await error(
            c,
            "plan_run",
            {
                "name": "r2",
                "packages": [
                    {"name": "p", "items": [{"name": "a", "specifications": {"a": {"b": {"c": {"d": 1}}}}}]}
                ],
            },
        )
        assert "details" in await error(
            c,
            "record_integration_event",
            {"integration_type": "t", "action": "a", "details": {"x": "y" * 300}},
        )
        leases = [{"outcome_id": i["outcome_id"], "lease_token": i["lease_token"]} for i in items] * 2
        assert "leases" in await error(c, "heartbeat", {"leases": leases})
        assert (await data(c, "get_outcome", {"outcome_id": ref["outcome_id"]}))["status"] == "generating"
        done = await data(c, "complete_item", {**ref, "content": "x" * 100, "metrics": {"a": {"b": 1}}})
        assert done["status"] == "complete"
    assert await check_store(limited.database_url, limited.artifacts_dir) == []


@contextlib.contextmanager
def mounted(kind: str, path: Path) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    cmds = {
        "full": [["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)]],
        "readonly": [
            ["mount", "--bind", str(path), str(path)],
            ["mount", "-o", "remount,ro,bind", str(path)],
        ],
    }[kind]
    done = 0
    try:
        for cmd in cmds:
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                pytest.skip(f"cannot mount ({' '.join(cmd)}): {p.stderr.strip()}")
            done += 1
        yield
    finally:
        if done:
            subprocess.run(["umount", str(path)], capture_output=True)


@pytest.mark.parametrize("kind", ["full", "readonly"])
async def test_artifact_disk_trouble_is_a_clear_error_and_nothing_is_lost(
    database_url: str, tmp_path: Path, kind: str
) -> None:
    artifacts = tmp_path / f"artifacts-{uuid.uuid4().hex[:6]}"
    # content over 1 KiB goes to the blob store before the commit; up to it, into the store with the report
    settings = Settings(
        database_url=database_url, artifacts_dir=artifacts, limits=Limits(inline_content_bytes=1024)
    )
    async with Client(create_server(settings)) as c:
        await data(c, "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a", "b", "c"]}]})
        items = (await data(c, "claim_items", {"run": "r", "worker": "w", "limit": 3}))["items"]
        refs = [{"outcome_id": i["outcome_id"], "lease_token": i["lease_token"]} for i in items]
        await data(c, "complete_item", {**refs[0], "content": "before"})
        with mounted(kind, artifacts):
            if kind == "full":
                (artifacts / "filler").write_bytes(b"\0" * 40_000)
            text = await error(c, "complete_item", {**refs[1], "content": "y" * 60_000})
            assert "content" in text and ("space" in text.lower() or "read-only" in text.lower()), text
            assert (await data(c, "get_outcome", {"outcome_id": refs[1]["outcome_id"]}))[
                "status"
            ] == "generating"
            # small content is durable in the store: the report commits; only its readable copy waits
            small = await data(c, "complete_item", {**refs[2], "content": "kept in the store"})
            assert small["status"] == "complete"
        # the device is back: the missing copy is rebuilt from the store on read
        small_detail = await data(c, "get_outcome", {"outcome_id": refs[2]["outcome_id"]})
        assert (artifacts / small_detail["outcome_path"]).read_text() == "kept in the store"
        # the same lease completes, the earlier artifact is intact
        done = await data(c, "complete_item", {**refs[1], "content": "after"})
        assert done["status"] == "complete"
        first = await c.read_resource(f"matrix://outcomes/{refs[0]['outcome_id']}/content")
        assert first.contents[0].text == "before"  # type: ignore[union-attr]
    assert await check_store(database_url, artifacts) == []
