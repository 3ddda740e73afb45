"""The claim policy over real HTTP on 127.0.0.1: REST plans with dependencies, priorities, lock keys and caps
and shows the blocked status, the claim's reason and an item's waits_for / locks_held as the MCP tools do; a
bad plan gets the same one-line error from REST, MCP over HTTP and `matrix-mcp plan` (one validation, in the
engine, behind every face)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.http.endpoints import PREFIX
from tests.support.http_helpers import client, serving

pytestmark = pytest.mark.anyio


def api(base: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=base + PREFIX, timeout=30)


PLAN: dict[str, Any] = {
    "name": "staged",
    "max_concurrent": 2,
    "on_dependency_failure": "block",
    "packages": [
        {
            "name": "a",
            "items": [{"name": "x", "locks": ["file:db.py"]}, {"name": "y", "locks": ["file:db.py"]}],
        },
        {"name": "b", "after": ["a"], "priority": 3, "items": ["z"]},
    ],
}
CYCLE: dict[str, Any] = {
    "name": "cyclic",
    "packages": [
        {"name": "a", "items": [{"name": "x", "after": ["b/y"]}]},
        {"name": "b", "items": [{"name": "y", "after": ["a/*"]}]},
    ],
}


async def test_rest_shows_the_policy_as_the_tools_do(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=False) as (base, _), api(base) as h:
        made = await h.post("/runs", json=PLAN)
        assert made.status_code == 201, made.text
        run = made.json()["run"]
        assert (run["policy"]["max_concurrent"], run["policy"]["on_dependency_failure"]) == (2, "block")
        assert (run["counts"]["pending"], run["counts"]["blocked"]) == (2, 1)
        blocked = (await h.get("/outcomes", params={"run": "staged", "status": "blocked"})).json()["outcomes"]
        assert [(o["package"], o["item"], o["priority"]) for o in blocked] == [("b", "z", 0)]
        z = (await h.get(f"/outcomes/{blocked[0]['id']}")).json()
        assert z["waits_for"] == ["a/*"] and z["status"] == "blocked"
        claimed = (await h.post("/runs/staged/claim", json={"worker": "w", "limit": 2})).json()
        assert len(claimed["items"]) == 1 and claimed["reason"] == "locked"  # one key for both of a's items
        holder = (await h.get(f"/outcomes/{claimed['items'][0]['outcome_id']}")).json()
        assert holder["locks_held"] == ["file:db.py"] and holder["locks"] == ["file:db.py"]
        status = (await h.get("/runs/staged")).json()
        b = next(p for p in status["packages"] if p["package"] == "b")
        assert (b["after"], b["priority"], b["blocked_items"]) == (["a"], 3, 1)
        async with client(base, None) as mcp:  # the same read through the tool on the same server
            tool = await mcp.call_tool("get_outcome", {"outcome_id": blocked[0]["id"]})
            assert tool.structured_content == (await h.get(f"/outcomes/{blocked[0]['id']}")).json()


async def test_a_bad_plan_is_the_same_line_on_every_face(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=False) as (base, _), api(base) as h:
        rest = await h.post("/runs", json=CYCLE)
        assert rest.status_code == 400
        body = rest.json()
        assert body["error"] == "invalid_argument" and body["field"] == "packages"
        line = body["error_description"]
        assert line.startswith("packages: dependency cycle: ")
        async with client(base, None) as mcp:
            tool = await mcp.call_tool("plan_run", CYCLE)
            assert tool.is_error and tool.structured_content is not None
            assert tool.structured_content["error"] == line
    plan = tmp_path / "cyclic.json"
    plan.write_text(json.dumps({k: v for k, v in CYCLE.items() if k != "name"}), encoding="utf-8")
    cli = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "matrix_mcp",
            "--database-url",
            settings.database_url,
            "plan",
            "cyclic",
            "--from",
            str(plan),
        ],
        check=False,
    )
    assert cli.returncode == 1 and cli.stderr.decode().strip() == f"matrix-mcp: {plan}: {line}"
