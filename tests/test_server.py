"""The MCP surface through the SDK's in-memory Client, in both protocol eras, on both backends."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import ClaimedItem, PackageSpec
from matrix_mcp.server import create_server
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio


@pytest.fixture
def store_settings(database_url: str, tmp_path: Path) -> Settings:
    """The server's settings on each backend (conftest's `database_url`: SQLite, and PostgreSQL)."""
    return Settings(database_url=database_url, artifacts_dir=tmp_path / "artifacts")


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, store_settings: Settings) -> AsyncIterator[Client]:
    async with Client(create_server(store_settings), mode=request.param) as c:
        yield c


async def call(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


async def call_error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


PLAN = {
    "name": "svc",
    "goal": "Build services",
    "packages": [
        {"name": f"pkg{i}", "description": f"package {i}", "items": ["a", "b", "c"]} for i in range(4)
    ],
}


async def test_protocol_eras(client: Client) -> None:
    assert client.protocol_version in ("2026-07-28", "2025-11-25")
    tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in (
        "plan_run",
        "claim_items",
        "heartbeat",
        "complete_item",
        "fail_item",
        "retry_items",
        "control_run",
        "list_runs",
        "run_status",
        "record_outcome",
        "update_outcome_status",
        "get_outcome",
        "list_outcomes",
        "package_summary",
        "system_metrics",
        "record_integration_event",
        "export_outcomes",
    ):
        assert name in tools, name
        assert tools[name].output_schema is not None, name


async def test_full_run_with_concurrent_workers(client: Client, store_settings: Settings) -> None:
    plan = await call(client, "plan_run", PLAN)
    assert plan["created"] and plan["items"] == 12
    assert not (await call(client, "plan_run", PLAN))["created"]
    done: list[str] = []

    async def worker(n: int) -> None:
        while True:
            got = await call(client, "claim_items", {"run": "svc", "worker": f"w{n}", "limit": 2})
            if not got["items"]:
                assert got["reason"] in ("done", "all_leased")
                if got["reason"] == "done":
                    return
                await anyio.sleep(0.01)
                continue
            for item in got["items"]:
                assert item["briefing"].startswith("Build services")
                out = await call(
                    client,
                    "complete_item",
                    {
                        "outcome_id": item["outcome_id"],
                        "lease_token": item["lease_token"],
                        "content": f"# {item['package']}/{item['item']}\n",
                        "metrics": {"lines_generated": 1, "quality_score": 0.75},
                    },
                )
                assert out["status"] == "complete"
                done.append(item["outcome_id"])

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(worker, n)
    assert len(done) == 12 and len(set(done)) == 12
    status = await call(client, "run_status", {"run": "svc"})
    assert status["counts"]["complete"] == 12 and status["state"] == "done"
    assert {p["package"]: p["completed_items"] for p in status["packages"]} == {
        f"pkg{i}": 3 for i in range(4)
    }
    summary = await call(client, "package_summary", {"package": "pkg1", "run": "svc"})
    assert summary["success_rate"] == 1.0 and summary["average_quality_score"] == 0.75
    assert summary["total_lines_generated"] == 3
    metrics = await call(client, "system_metrics", {})
    assert metrics["outcomes_complete"] == 12 and metrics["outcomes_total"] == 12
    # resources
    content = await client.read_resource(f"matrix://outcomes/{done[0]}/content")
    assert content.contents[0].mime_type == "text/plain" and content.contents[0].text.startswith("# pkg")
    record = json.loads((await client.read_resource(f"matrix://outcomes/{done[0]}")).contents[0].text)
    assert record["status"] == "complete" and record["history"][0]["status"] == "complete"
    run_doc = json.loads((await client.read_resource("matrix://runs/svc")).contents[0].text)
    assert run_doc["counts"]["complete"] == 12
    pkg_doc = json.loads((await client.read_resource("matrix://runs/svc/packages/pkg2")).contents[0].text)
    assert pkg_doc["completed_items"] == 3
    runs_doc = json.loads((await client.read_resource("matrix://runs")).contents[0].text)
    assert [r["name"] for r in runs_doc["runs"]] == ["svc"]
    assert (
        json.loads((await client.read_resource("matrix://metrics")).contents[0].text)["outcomes_complete"]
        == 12
    )
    engine = await Engine.open(store_settings)
    try:
        await assert_consistent(engine)
    finally:
        await engine.close()


async def test_errors_name_the_field(client: Client) -> None:
    await call(client, "plan_run", PLAN)
    assert "run:" in await call_error(client, "claim_items", {"run": "nope", "worker": "w"})
    assert "limit" in await call_error(client, "claim_items", {"run": "svc", "worker": "w", "limit": 0})
    got = await call(client, "claim_items", {"run": "svc", "worker": "w"})
    item = got["items"][0]
    text = await call_error(
        client, "complete_item", {"outcome_id": item["outcome_id"], "lease_token": "stale"}
    )
    assert "lease_token" in text
    text = await call_error(
        client,
        "complete_item",
        {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"], "outcome_path": "../../etc/x"},
    )
    assert "outcome_path" in text
    assert "status" in await call_error(
        client, "update_outcome_status", {"outcome_id": item["outcome_id"], "status": "bogus"}
    )
    assert "cursor" in await call_error(client, "list_outcomes", {"cursor": "%%%"})
    bad_plan = {"name": "x", "packages": [{"name": "p", "items": ["a", "a"]}]}
    assert "packages[0].items[1]" in await call_error(client, "plan_run", bad_plan)


async def test_fail_retry_and_history(client: Client) -> None:
    await call(
        client,
        "plan_run",
        {"name": "r", "packages": [{"name": "p", "items": ["x"]}], "backoff_seconds": 0, "max_attempts": 2},
    )
    for attempt in (1, 2):
        item = (await call(client, "claim_items", {"run": "r", "worker": "w"}))["items"][0]
        assert item["attempt"] == attempt
        out = await call(
            client,
            "fail_item",
            {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"], "error": f"e{attempt}"},
        )
    assert out["status"] == "failed"
    detail = await call(client, "get_outcome", {"outcome_id": item["outcome_id"]})
    assert [h["error"] for h in detail["history"]] == ["e1", "e2"]
    assert (await call(client, "retry_items", {"run": "r"}))["requeued"] == 1
    assert (await call(client, "claim_items", {"run": "r", "worker": "w"}))["items"]


async def test_long_poll_status_sends_progress(client: Client) -> None:
    await call(client, "plan_run", PLAN)
    seq = (await call(client, "run_status", {"run": "svc"}))["latest_seq"]
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async def claim_later() -> None:
        await anyio.sleep(0.3)
        await call(client, "claim_items", {"run": "svc", "worker": "w"})

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim_later)
        result = await client.call_tool(
            "run_status", {"run": "svc", "since": seq, "wait_seconds": 10}, progress_callback=on_progress
        )
    data = result.structured_content or {}
    assert [e["kind"] for e in data["events"]] == ["claimed"]
    assert progress, "a waiting long-poll reports progress"


async def test_prompts_and_completions(client: Client) -> None:
    import mcp_types as types

    await call(client, "plan_run", PLAN)
    prompts = {p.name for p in (await client.list_prompts()).prompts}
    assert {"plan_matrix", "outcome_generator", "integrator", "triage_failures"} <= prompts
    got = await client.get_prompt("outcome_generator", {"run": "svc", "worker": "w1"})
    assert "claim_items" in got.messages[0].content.text
    comp = await client.complete(
        types.PromptReference(type="ref/prompt", name="integrator"), {"name": "run", "value": "s"}
    )
    assert comp.completion.values == ["svc"]
    comp = await client.complete(
        types.ResourceTemplateReference(type="ref/resource", uri="matrix://runs/{run}/packages/{package}"),
        {"name": "package", "value": "pkg"},
        context_arguments={"run": "svc"},
    )
    assert comp.completion.values == ["pkg0", "pkg1", "pkg2", "pkg3"]


async def test_export_tool(client: Client) -> None:
    await call(client, "plan_run", PLAN)
    out = await call(client, "export_outcomes", {"run": "svc", "format": "csv"})
    assert out["count"] == 12 and Path(out["path"]).read_text().startswith("id,")


async def test_tools_list_fits_the_budget(client: Client) -> None:
    """All tool definitions together, as JSON on the wire, stay within 32 KB of the client's context."""
    result = await client.list_tools()
    size = len(result.model_dump_json(by_alias=True, exclude_none=True))
    assert len(result.tools) >= 17
    assert size <= 32 * 1024, size


async def test_resource_updates_legacy(store_settings: Settings) -> None:
    received: list[str] = []
    got = anyio.Event()

    async def handler(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            received.append(str(root.params.uri))
            got.set()

    async with Client(create_server(store_settings), mode="legacy", message_handler=handler) as c:
        assert c.server_capabilities.resources is not None and c.server_capabilities.resources.subscribe
        await call(c, "plan_run", PLAN)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await c.subscribe_resource("matrix://runs/svc")
        await call(c, "claim_items", {"run": "svc", "worker": "w"})
        with anyio.fail_after(10):
            await got.wait()
    assert "matrix://runs/svc" in received


async def test_resource_updates_modern(store_settings: Settings) -> None:
    async with Client(create_server(store_settings), mode="auto") as c:
        await call(c, "plan_run", PLAN)
        async with c.listen(resource_subscriptions=["matrix://runs/svc"]) as sub:
            await call(c, "claim_items", {"run": "svc", "worker": "w"})
            with anyio.fail_after(10):
                async for event in sub:
                    assert getattr(event, "uri", None) == "matrix://runs/svc"
                    break


async def _two_claimed_outcomes(settings: Settings) -> tuple[ClaimedItem, ClaimedItem]:
    """Plan and claim before the server starts, so its notification watcher starts after those events:
    every notification a test then sees comes from what the test does next."""
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("svc", [PackageSpec(name="pkg", items=["a", "b"])])
        a, b = (await engine.claim_items("svc", "w", limit=2)).items
    finally:
        await engine.close()
    return a, b


async def _complete(c: Client, item: ClaimedItem) -> None:
    args = {"outcome_id": item.outcome_id, "lease_token": item.lease_token, "content": "done"}
    assert (await call(c, "complete_item", args))["status"] == "complete"


async def test_outcome_resource_updates_legacy(store_settings: Settings) -> None:
    a, b = await _two_claimed_outcomes(store_settings)
    watched, barrier = f"matrix://outcomes/{a.outcome_id}", "matrix://runs/svc"
    received: list[str] = []
    arrived: dict[str, anyio.Event] = {watched: anyio.Event(), barrier: anyio.Event()}

    async def handler(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            uri = str(root.params.uri)
            received.append(uri)
            if uri in arrived:
                arrived[uri].set()

    async with Client(create_server(store_settings), mode="legacy", message_handler=handler) as c:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await c.subscribe_resource(watched)
            await c.subscribe_resource(barrier)
        # completing another outcome of the run notifies the run (sent after any outcome URI of the
        # same change), not the watched outcome
        await _complete(c, b)
        with anyio.fail_after(10):
            await arrived[barrier].wait()
        assert watched not in received and f"matrix://outcomes/{b.outcome_id}" not in received
        await _complete(c, a)
        with anyio.fail_after(10):
            await arrived[watched].wait()
        record = json.loads((await c.read_resource(watched)).contents[0].text)
    assert record["status"] == "complete"


async def test_outcome_resource_updates_modern(store_settings: Settings) -> None:
    a, b = await _two_claimed_outcomes(store_settings)
    watched, barrier = f"matrix://outcomes/{a.outcome_id}", "matrix://runs/svc"
    async with Client(create_server(store_settings), mode="auto") as c:
        assert c.protocol_version == "2026-07-28"
        async with c.listen(resource_subscriptions=[watched, barrier]) as sub:
            seen: list[str | None] = []
            await _complete(c, b)
            with anyio.fail_after(10):
                async for event in sub:
                    seen.append(getattr(event, "uri", None))
                    if seen[-1] == barrier:
                        break
            assert watched not in seen, seen
            await _complete(c, a)
            with anyio.fail_after(10):
                async for event in sub:
                    if getattr(event, "uri", None) == watched:
                        break
        record = json.loads((await c.read_resource(watched)).contents[0].text)
    assert record["status"] == "complete"


async def test_outcome_schema_rejection_and_pagination_through_the_client(
    client: Client, store_settings: Settings
) -> None:
    """A report that breaks the run's outcome_schema is a tool error naming the field and changes nothing; a
    valid one completes. list_outcomes pages walk every outcome exactly once and end without a cursor."""
    schema = {
        "type": "object",
        "properties": {"metrics": {"type": "object", "required": ["lines_generated"]}},
    }
    plan = {
        "name": "s",
        "packages": [{"name": f"p{i}", "items": [f"i{j}" for j in range(7)]} for i in range(3)],
    }
    await call(client, "plan_run", {**plan, "outcome_schema": schema})
    item = (await call(client, "claim_items", {"run": "s", "worker": "w"}))["items"][0]
    ref = {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
    text = await call_error(client, "complete_item", {**ref, "metrics": {"quality_score": 0.5}})
    assert "metrics" in text and "lines_generated" in text, text
    assert (await call(client, "get_outcome", {"outcome_id": item["outcome_id"]}))["status"] == "generating"
    done = await call(client, "complete_item", {**ref, "metrics": {"lines_generated": 3}})
    assert done["status"] == "complete"

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        args: dict[str, Any] = {"run": "s", "limit": 5}
        if cursor:
            args["cursor"] = cursor
        page = await call(client, "list_outcomes", args)
        pages += 1
        seen += [o["id"] for o in page["outcomes"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
        assert len(page["outcomes"]) == 5
    assert pages == 5 and len(seen) == 21 and len(set(seen)) == 21
    assert item["outcome_id"] in seen
    assert "cursor" in await call_error(client, "list_outcomes", {"run": "s", "cursor": "not-a-cursor"})
    engine = await Engine.open(store_settings)
    try:
        await assert_consistent(engine)
    finally:
        await engine.close()
