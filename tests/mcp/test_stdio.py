"""Real subprocesses: the console script over stdio, several servers on one SQLite file, the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio

SCRIPT = shutil.which("matrix-mcp")


def server(db: Path, artifacts: Path, script: bool = True) -> StdioServerParameters:
    if script and SCRIPT:
        command, args = SCRIPT, []
    else:
        command, args = sys.executable, ["-m", "matrix_mcp"]
    return StdioServerParameters(
        command=command,
        args=[*args, "--database-url", f"sqlite:///{db}", "--artifacts-dir", str(artifacts)],
        env={**os.environ, "MATRIX_LOG_LEVEL": "WARNING"},
    )


async def data(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    return dict(result.structured_content or {})


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_console_script_over_stdio(tmp_path: Path, mode: str) -> None:
    assert SCRIPT, "the matrix-mcp console script is installed"
    async with Client(server(tmp_path / "m.db", tmp_path / "a"), mode=mode) as c:
        plan = await data(c, "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["x", "y"]}]})
        assert plan["items"] == 2
        item = (await data(c, "claim_items", {"run": "r", "worker": "w"}))["items"][0]
        out = await data(
            c,
            "complete_item",
            {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"], "content": "hi"},
        )
        assert out["status"] == "complete"
        content = await c.read_resource(f"matrix://outcomes/{item['outcome_id']}/content")
        assert content.contents[0].text == "hi"
    assert (tmp_path / "a" / "r" / "p" / "x").read_text() == "hi"


async def test_several_server_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    db, artifacts = tmp_path / "shared.db", tmp_path / "a"
    packages = [{"name": f"p{i}", "items": [f"i{j}" for j in range(15)]} for i in range(4)]
    async with Client(server(db, artifacts)) as orchestrator:
        await data(orchestrator, "plan_run", {"name": "big", "packages": packages})
    completed: list[str] = []
    errors: list[str] = []

    async def worker(n: int) -> None:
        async with Client(server(db, artifacts, script=n % 2 == 0)) as c:
            while True:
                result = await c.call_tool("claim_items", {"run": "big", "worker": f"w{n}", "limit": 3})
                if result.is_error:
                    errors.append(str(result.content))
                    return
                got = dict(result.structured_content or {})
                if not got["items"]:
                    if got["reason"] == "done":
                        return
                    await anyio.sleep(0.02)
                    continue
                for item in got["items"]:
                    done = await c.call_tool(
                        "complete_item",
                        {
                            "outcome_id": item["outcome_id"],
                            "lease_token": item["lease_token"],
                            "content": f"w{n}",
                        },
                    )
                    if done.is_error:
                        errors.append(str(done.content))
                    else:
                        completed.append(item["outcome_id"])

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(worker, n)
    assert errors == []  # in particular, no "database is locked"
    assert len(completed) == 60 and len(set(completed)) == 60
    engine = await Engine.open(Settings(database_url=f"sqlite:///{db}", artifacts_dir=artifacts))
    try:
        run = await engine.get_run("big")
        assert run.counts.complete == 60 and run.state == "done"
        await assert_consistent(engine)
    finally:
        await engine.close()


def test_demo_runs_the_main_job(tmp_path: Path) -> None:
    assert SCRIPT
    proc = subprocess.run(
        [SCRIPT, "demo", "--run", "demo-test"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "15/15 complete, 0 failed" in proc.stdout
    assert "orders-service/api attempt 1 failed (injected)" in proc.stdout
    assert len(list((tmp_path / ".matrix" / "artifacts" / "demo-test").rglob("*.py"))) == 15
    status = subprocess.run(
        [SCRIPT, "status", "demo-test", "--check"], cwd=tmp_path, capture_output=True, text=True
    )
    assert status.returncode == 0 and "counters: consistent" in status.stdout
    assert "orders-service" in status.stdout
    listing = subprocess.run([SCRIPT, "status"], cwd=tmp_path, capture_output=True, text=True)
    assert listing.returncode == 0
    header, row = listing.stdout.splitlines()
    assert header.split()[:2] == ["run", "state"] and row.split()[:3] == ["demo-test", "done", "15/15"]


def test_status_where_nothing_has_run_creates_nothing(tmp_path: Path) -> None:
    assert SCRIPT
    listing = subprocess.run([SCRIPT, "status"], cwd=tmp_path, capture_output=True, text=True)
    assert listing.returncode == 0 and "no runs" in listing.stdout
    one = subprocess.run([SCRIPT, "status", "r"], cwd=tmp_path, capture_output=True, text=True)
    assert one.returncode == 1 and "unknown run 'r'" in one.stderr
    assert list(tmp_path.iterdir()) == []


LAZY_PROBE = """
import sys
import anyio
from mcp.client import Client
from matrix_mcp.config import Settings
from matrix_mcp.mcp.server import create_server

LAZY = ("psycopg", "psycopg_pool", "matrix_mcp.store.postgres", "matrix_mcp.schema.api", "matrix_mcp.schema.ddl",
        "matrix_mcp.schema.sqlite_reader", "matrix_mcp.schema.postgres_reader",
        "matrix_mcp.http", "prometheus_client", "limits", "jwt", "matrix_mcp.cli.keys")

def loaded():
    return sorted(m for m in LAZY if m in sys.modules)

async def main():
    settings = Settings(database_url="sqlite:///" + sys.argv[1], artifacts_dir=sys.argv[2])
    async with Client(create_server(settings)) as c:
        await c.list_tools()
        await c.call_tool("plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        got = await c.call_tool("claim_items", {"run": "r", "worker": "w"})
        item = got.structured_content["items"][0]
        await c.call_tool("complete_item", {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]})
        print("work:", loaded())
        await c.call_tool("generate_api_schema", {"format": "openapi"})
        print("schema:", loaded())

anyio.run(main)
"""


def test_heavy_and_optional_modules_load_only_when_used(tmp_path: Path) -> None:
    """On SQLite, the work loop never imports psycopg, the schema generators and readers, or the HTTP
    service's parts (auth, JWT, limits, metrics) (start-up stays fast); the first schema call loads the SQLite reader and the generator, still not psycopg."""
    proc = subprocess.run(
        [sys.executable, "-c", LAZY_PROBE, str(tmp_path / "m.db"), str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    work, schema = proc.stdout.splitlines()[-2:]
    assert work == "work: []"
    assert schema == "schema: ['matrix_mcp.schema.api', 'matrix_mcp.schema.sqlite_reader']"
