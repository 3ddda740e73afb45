"""The MCP surface through the SDK's in-memory Client, in both protocol eras, on both backends (the store-
independent tools/list checks on SQLite only)."""

from __future__ import annotations

import base64
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
from matrix_mcp.mcp.server import create_server
from matrix_mcp.models import ClaimedItem, PackageSpec
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


@pytest.fixture(params=["auto", "legacy"])
async def sqlite_client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Client]:
    """Both eras on SQLite only, for what does not depend on the store (tools/list is byte-identical on
    both backends): saves the PostgreSQL database per case."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "artifacts")
    async with Client(create_server(settings), mode=request.param) as c:
        yield c


async def assert_store_consistent(settings: Settings) -> None:
    """The store's counters equal a recount, read by a separate Engine on the server's store."""
    engine = await Engine.open(settings)
    try:
        await assert_consistent(engine)
    finally:
        await engine.close()


async def call(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


async def call_error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error and result.structured_content is not None, result.content
    assert json.loads(getattr(result.content[0], "text", "")) == result.structured_content
    return str(result.structured_content["error"])


PLAN = {
    "name": "svc",
    "goal": "Build services",
    "packages": [
        {"name": f"pkg{i}", "description": f"package {i}", "items": ["a", "b", "c"]} for i in range(4)
    ],
}


async def test_protocol_eras(sqlite_client: Client) -> None:
    assert sqlite_client.protocol_version in ("2026-07-28", "2025-11-25")
    tools = {t.name: t for t in (await sqlite_client.list_tools()).tools}
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
    await assert_store_consistent(store_settings)


async def test_errors_name_the_field(client: Client, store_settings: Settings) -> None:
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
    await assert_store_consistent(store_settings)


async def test_fail_retry_and_history(client: Client, store_settings: Settings) -> None:
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
    await assert_store_consistent(store_settings)


async def test_long_poll_status_sends_progress(client: Client, store_settings: Settings) -> None:
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
    await assert_store_consistent(store_settings)


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


async def test_export_tool(client: Client, store_settings: Settings) -> None:
    await call(client, "plan_run", PLAN)
    out = await call(client, "export_outcomes", {"run": "svc", "format": "csv"})
    assert out["count"] == 12 and Path(out["path"]).read_text().startswith("id,")
    out = await call(client, "export_outcomes", {"run": "svc", "format": "jsonl"})
    assert out["count"] == 12 and len(Path(out["path"]).read_text().splitlines()) == 12
    await assert_store_consistent(store_settings)


async def test_tools_list_fits_the_budget(sqlite_client: Client) -> None:
    """All tool definitions together, as JSON on the wire, stay within 36 KB of the client's context (32 KB
    until review_item and update_policy came, 2.1 KB together; 34,776 bytes then)."""
    result = await sqlite_client.list_tools()
    size = len(result.model_dump_json(by_alias=True, exclude_none=True))
    assert len(result.tools) >= 17
    assert size <= 36 * 1024, size


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
    await assert_store_consistent(store_settings)


async def test_resource_updates_modern(store_settings: Settings) -> None:
    async with Client(create_server(store_settings), mode="auto") as c:
        await call(c, "plan_run", PLAN)
        async with c.listen(resource_subscriptions=["matrix://runs/svc"]) as sub:
            await call(c, "claim_items", {"run": "svc", "worker": "w"})
            uri = None
            with anyio.fail_after(10):
                async for event in sub:  # a stream that ends without an event leaves uri None: the test fails
                    uri = getattr(event, "uri", None)
                    break
            assert uri == "matrix://runs/svc"
    await assert_store_consistent(store_settings)


async def _two_claimed_outcomes(settings: Settings) -> tuple[ClaimedItem, ClaimedItem]:
    """Plan and claim before the server starts, so its notification watcher starts after those events:
    every notification a test then sees comes from what the test does next."""
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("svc", packages=[PackageSpec(name="pkg", items=["a", "b"])])
        a, b = (await engine.claim_items("svc", worker="w", limit=2)).items
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
    await assert_store_consistent(store_settings)


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
    await assert_store_consistent(store_settings)


REPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "metrics": {
            "type": "object",
            "required": ["lines_generated"],
            "properties": {
                "lines_generated": {"type": "integer", "minimum": 0},
                "quality_score": {"type": "number", "maximum": 1},
            },
        },
        "metadata": {"type": "object", "properties": {"language": {"enum": ["python", "go"]}}},
    },
}


async def test_outcome_schema_rejects_a_report_through_the_client(
    client: Client, store_settings: Settings
) -> None:
    """A report that breaks the run's outcome_schema is a tool error naming the field (also by hand, through
    update_outcome_status) and changes nothing: no status, metrics, artifact or event. A valid report then
    completes the outcome on the same lease."""
    plan = {"name": "s", "packages": [{"name": "p", "items": ["a", "b"]}], "outcome_schema": REPORT_SCHEMA}
    await call(client, "plan_run", plan)
    item = (await call(client, "claim_items", {"run": "s", "worker": "w"}))["items"][0]
    ref = {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"], "content": "# a\n"}
    seq = (await call(client, "run_status", {"run": "s"}))["latest_seq"]
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({"metrics": {"quality_score": 0.5}}, "metrics", "'lines_generated' is a required property"),
        ({"metrics": {"lines_generated": "many"}}, "metrics.lines_generated", "is not of type 'integer'"),
        ({"metrics": {"lines_generated": 3, "quality_score": 7}}, "metrics.quality_score", "maximum"),
        (
            {"metrics": {"lines_generated": 3}, "metadata": {"language": "cobol"}},
            "metadata.language",
            "'cobol' is not one of",
        ),
    ]
    for report, field, detail in bad:
        text = await call_error(client, "complete_item", {**ref, **report})
        assert f"{field}: violates the run's outcome_schema" in text and detail in text, text
    text = await call_error(
        client,
        "update_outcome_status",
        {"outcome_id": item["outcome_id"], "status": "complete", "metrics": {"quality_score": 0.5}},
    )
    assert "metrics: violates the run's outcome_schema" in text, text

    outcome = await call(client, "get_outcome", {"outcome_id": item["outcome_id"]})
    assert outcome["status"] == "generating" and outcome["attempts"] == 1
    assert outcome["metrics"] == {} and outcome["metadata"] == {} and "content_sha256" not in outcome
    assert [h["status"] for h in outcome["history"]] == ["generating"]
    status = await call(client, "run_status", {"run": "s"})
    assert status["latest_seq"] == seq, "a rejected report records no event"
    assert status["counts"]["generating"] == 1 and status["counts"]["complete"] == 0

    good = {"metrics": {"lines_generated": 3, "quality_score": 0.9}, "metadata": {"language": "python"}}
    ack = await call(client, "complete_item", {**ref, **good})
    assert ack == {"outcome_id": item["outcome_id"], "status": "complete", "attempt": 1}
    done = await call(client, "complete_item", {**ref, **good, "detail": "full"})  # the identical repeat
    done = done["outcome"]
    assert done["status"] == "complete" and done["metrics"] == good["metrics"]
    assert done["metadata"] == good["metadata"] and done["content_sha256"]
    content = await client.read_resource(f"matrix://outcomes/{item['outcome_id']}/content")
    assert content.contents[0].text == "# a\n"
    status = await call(client, "run_status", {"run": "s"})
    assert status["counts"]["complete"] == 1 and status["counts"]["generating"] == 0
    assert status["counts"]["pending"] == 1
    await assert_store_consistent(store_settings)


async def walk(client: Client, filters: dict[str, Any], limit: int) -> list[list[str]]:
    """Every page of list_outcomes for the filters, following next_cursor until a page has none."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while len(pages) < 100:
        args = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = await call(client, "list_outcomes", args)
        pages.append([o["id"] for o in page["outcomes"]])
        cursor = page.get("next_cursor")
        if cursor is None:
            return pages
    raise AssertionError("list_outcomes never ended")


async def all_ids(client: Client, filters: dict[str, Any]) -> list[str]:
    page = await call(client, "list_outcomes", {**filters, "limit": 1000})
    assert page.get("next_cursor") is None
    return [o["id"] for o in page["outcomes"]]


def forged_cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_list_outcomes_cursor_pagination_through_the_client(
    client: Client, store_settings: Settings
) -> None:
    """list_outcomes pages walk every outcome exactly once, in creation order, with and without filters; the
    last page has no next_cursor (no empty page after an exact fit); changes between pages neither repeat nor
    skip an outcome; a cursor the server did not issue is a tool error naming `cursor`."""
    plan = {
        "name": "s",
        "packages": [{"name": f"p{i}", "items": [f"i{j}" for j in range(7)]} for i in range(3)],
    }
    await call(client, "plan_run", plan)
    await call(client, "plan_run", {"name": "other", "packages": [{"name": "p1", "items": ["x", "y"]}]})
    everything = await all_ids(client, {"run": "s"})
    assert len(everything) == 21 and len(set(everything)) == 21

    pages = await walk(client, {"run": "s"}, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 1]
    assert [i for p in pages for i in p] == everything
    assert [i for p in await walk(client, {"run": "s"}, 1) for i in p] == everything
    assert await walk(client, {"run": "s"}, 21) == [everything]
    p1 = await all_ids(client, {"run": "s", "package": "p1"})
    assert len(p1) == 7 and set(p1) <= set(everything)
    assert await walk(client, {"run": "s", "package": "p1"}, 7) == [p1]
    assert [len(p) for p in await walk(client, {"run": "s", "package": "p1"}, 3)] == [3, 3, 1]
    assert [i for p in await walk(client, {"package": "p1"}, 2) for i in p] == await all_ids(
        client, {"package": "p1"}
    )

    # a status filter, and an outcome leaving the filter between pages: nothing repeated, nothing skipped
    claimed = (await call(client, "claim_items", {"run": "s", "worker": "w", "limit": 2}))["items"]
    pending = await all_ids(client, {"run": "s", "status": "pending"})
    assert len(pending) == 19 and not {c["outcome_id"] for c in claimed} & set(pending)
    first = await call(client, "list_outcomes", {"run": "s", "status": "pending", "limit": 5})
    seen = [o["id"] for o in first["outcomes"]]
    await call(client, "update_outcome_status", {"outcome_id": seen[0], "status": "cancelled"})
    # ... and outcomes added between pages come at the end
    added = await call(client, "plan_run", {**plan, "packages": [{"name": "p9", "items": ["n1", "n2"]}]})
    assert not added["created"] and added["added_items"] == 2
    cursor = first["next_cursor"]
    while cursor:
        page = await call(
            client, "list_outcomes", {"run": "s", "status": "pending", "limit": 5, "cursor": cursor}
        )
        seen += [o["id"] for o in page["outcomes"]]
        cursor = page.get("next_cursor")
    new = await all_ids(client, {"run": "s", "package": "p9"})
    assert seen == pending + new and len(set(seen)) == 21

    for garbage in ("not-a-cursor", "%%%", forged_cursor("x:5"), forged_cursor("o:abc"), forged_cursor("o:")):
        text = await call_error(client, "list_outcomes", {"run": "s", "cursor": garbage})
        assert "cursor:" in text, (garbage, text)
    await assert_store_consistent(store_settings)


async def test_list_outcomes_refuses_an_out_of_range_cursor(client: Client) -> None:
    await call(client, "plan_run", {"name": "s", "packages": [{"name": "p", "items": ["a"]}]})
    text = await call_error(client, "list_outcomes", {"run": "s", "cursor": forged_cursor("o:" + "9" * 30)})
    assert "cursor:" in text, text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_package_resource_subscriber_is_notified(store_settings: Settings, mode: str) -> None:
    """A completion notifies matrix://runs/{run}/packages/{package} on both backends (the event names its
    package on PostgreSQL as on SQLite), in both eras."""
    a, _ = await _two_claimed_outcomes(store_settings)
    watched = "matrix://runs/svc/packages/pkg"
    arrived = anyio.Event()

    async def handler(message: Any) -> None:
        root = getattr(message, "root", message)
        if (
            getattr(root, "method", None) == "notifications/resources/updated"
            and str(root.params.uri) == watched
        ):
            arrived.set()

    async with Client(create_server(store_settings), mode=mode, message_handler=handler) as c:
        if mode == "legacy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await c.subscribe_resource(watched)
            await _complete(c, a)
            with anyio.fail_after(10):
                await arrived.wait()
        else:
            async with c.listen(resource_subscriptions=[watched]) as sub:
                await _complete(c, a)
                uri = None
                with anyio.fail_after(10):
                    async for event in sub:
                        uri = getattr(event, "uri", None)
                        break
                assert uri == watched
        summary = json.loads((await c.read_resource(watched)).contents[0].text)
    assert summary["completed_items"] == 1
    await assert_store_consistent(store_settings)
