"""What 2026 hosts do, and what the server does for them: long-polls capped under the 60 s request timeout
with progress notifications while they wait; every result — errors included — whole in structuredContent;
an outcome's content inline for hosts that cannot read resources. Through the SDK's Client, in both
protocol eras, on both backends."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp_types import CallToolResult

from matrix_mcp.config import MAX_WAIT_SECONDS, Settings
from matrix_mcp.engine import core as engine_core
from matrix_mcp.mcp.server import create_server
from tests.support.http_helpers import client as http_client
from tests.support.http_helpers import create_key, serving

pytestmark = pytest.mark.anyio

PLAN = {"name": "r", "packages": [{"name": "p", "items": ["a", "b"]}], "max_attempts": 1}


@pytest.fixture
def store_settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, artifacts_dir=tmp_path / "artifacts")


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, store_settings: Settings) -> AsyncIterator[Client]:
    async with Client(create_server(store_settings), mode=request.param) as c:
        yield c


def whole(result: CallToolResult) -> dict[str, Any]:
    """A result with everything in structuredContent: the text block is that content, serialized."""
    assert result.structured_content is not None, result.content
    texts = [getattr(b, "text", None) for b in result.content]
    assert texts and all(t is not None for t in texts), result.content
    assert [json.loads(t) for t in texts if t is not None] == [result.structured_content]
    return dict(result.structured_content)


async def ok(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await c.call_tool(tool, args)
    assert not result.is_error, result.content
    return whole(result)


async def refused(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await c.call_tool(tool, args)
    assert result.is_error, result.content
    data = whole(result)
    assert isinstance(data["error"], str) and "\n" not in data["error"] and data["kind"], data
    return data


async def test_long_polls_are_capped_at_50_seconds(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in ("claim_items", "run_status"):
        wait = tools[name].input_schema["properties"]["wait_seconds"]
        assert wait["maximum"] == MAX_WAIT_SECONDS == 50, (name, wait)
    await ok(client, "plan_run", PLAN)
    over = await refused(client, "claim_items", {"run": "r", "worker": "w", "wait_seconds": 51})
    assert over["kind"] == "invalid_argument" and over["field"] == "wait_seconds"
    assert over["error"].startswith("wait_seconds: ") and "50" in over["error"]
    over = await refused(client, "run_status", {"run": "r", "since": 0, "wait_seconds": 50.5})
    assert over["field"] == "wait_seconds"
    assert (await ok(client, "run_status", {"run": "r", "wait_seconds": 50}))["run"] == "r"


async def test_long_polls_send_progress_in_seconds_waited(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_core, "PROGRESS_EVERY_SECONDS", 0.1)  # the 5 s cadence, shortened
    await ok(client, "plan_run", PLAN)
    leased = await ok(client, "claim_items", {"run": "r", "worker": "w", "limit": 2})
    assert len(leased["items"]) == 2
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    # every item leased: the claim waits its whole second, telling how long it has waited
    waited = await client.call_tool(
        "claim_items", {"run": "r", "worker": "w2", "wait_seconds": 1}, progress_callback=on_progress
    )
    assert whole(waited)["items"] == [] and whole(waited)["reason"] == "all_leased"
    assert len(seen) >= 2, seen
    values = [p for p, _, _ in seen]
    assert values == sorted(set(values)) and values[0] >= 0 and values[-1] <= 1, seen
    assert all(total == 1 for _, total, _ in seen) and "waiting for an item of r" in str(seen[0][2])

    seen.clear()
    seq = (await ok(client, "run_status", {"run": "r"}))["latest_seq"]
    status = await client.call_tool(
        "run_status", {"run": "r", "since": seq, "wait_seconds": 1}, progress_callback=on_progress
    )
    assert whole(status)["events"] == []
    values = [p for p, _, _ in seen]
    assert len(values) >= 2 and values == sorted(set(values)) and all(t == 1 for _, t, _ in seen), seen
    assert "0 of 2 items finished" in str(seen[0][2])

    # a wait that ends early (an item comes back) still reports while it lasts, and answers at once
    seen.clear()
    item = leased["items"][0]

    async def fail_later() -> None:
        await anyio.sleep(0.3)
        await ok(client, "fail_item", {**_lease(item), "error": "boom", "retryable": True})

    async with anyio.create_task_group() as tg:
        tg.start_soon(fail_later)
        result = await client.call_tool(
            "run_status", {"run": "r", "since": seq, "wait_seconds": 50}, progress_callback=on_progress
        )
    assert [e["kind"] for e in whole(result)["events"]] == ["failed"]
    assert seen and all(total == 50 for _, total, _ in seen)


def _lease(item: dict[str, Any]) -> dict[str, Any]:
    return {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}


async def test_no_result_has_information_only_in_its_text_block(client: Client) -> None:
    """Hosts that pass only structuredContent to the model (when a result has both) lose nothing:
    successes, engine errors of every kind, the SDK's own argument errors, an unknown tool."""
    await ok(client, "plan_run", PLAN)
    item = (await ok(client, "claim_items", {"run": "r", "worker": "w"}))["items"][0]
    await ok(client, "heartbeat", {"leases": [_lease(item)]})
    await ok(client, "get_outcome", {"outcome_id": item["outcome_id"]})
    await ok(client, "list_runs", {})
    await ok(client, "complete_item", {**_lease(item), "content": "done"})

    unknown = await refused(client, "run_status", {"run": "nope"})
    assert unknown["kind"] == "not_found" and unknown["field"] == "run" and "nope" in unknown["error"]
    stale = await refused(client, "complete_item", {**_lease(item), "lease_token": "x" * 20, "content": "y"})
    assert stale["kind"] == "stale_lease" and stale["field"] == "lease_token"
    differs = await refused(client, "complete_item", {**_lease(item), "content": "other"})
    assert differs["kind"] == "conflict"
    missing = await refused(client, "claim_items", {"run": "r"})
    assert missing["kind"] == "invalid_argument" and missing["field"] == "worker"
    wrong_type = await refused(client, "claim_items", {"run": "r", "worker": "w", "limit": "many"})
    assert wrong_type["field"] == "limit"
    page = await refused(client, "list_outcomes", {"limit": 100_000})
    assert page == {"error": "limit: must be at most 1000", "kind": "invalid_argument", "field": "limit"}
    bad_name = await refused(client, "plan_run", {"name": "", "packages": []})
    assert bad_name["kind"] == "invalid_argument" and bad_name["field"] == "name"
    no_tool = await refused(client, "no_such_tool", {})
    assert "no_such_tool" in no_tool["error"]


async def test_a_refused_scope_is_structured_too(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    worker = await create_key(settings, "worker", "matrix:work")
    async with serving(settings, auth=True) as (base, _), http_client(base, worker) as c:
        result = await c.call_tool("plan_run", PLAN)
        assert result.is_error
        data = whole(result)
        assert data["kind"] == "insufficient_scope" and "matrix:plan" in data["error"]


async def test_get_outcome_returns_content_inline(client: Client) -> None:
    await ok(
        client, "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["t", "u", "bin", "none"]}]}
    )
    items = {
        i["item"]: i
        for i in (await ok(client, "claim_items", {"run": "r", "worker": "w", "limit": 4}))["items"]
    }
    text = "héllo, wörld\n" * 3
    await ok(client, "complete_item", {**_lease(items["t"]), "content": text, "mime_type": "text/plain"})
    await ok(client, "complete_item", {**_lease(items["u"]), "content": "é" * 10})
    raw = bytes(range(256))
    await ok(
        client,
        "complete_item",
        {
            **_lease(items["bin"]),
            "content": base64.b64encode(raw).decode(),
            "content_encoding": "base64",
            "mime_type": "image/png",
        },
    )

    def get(item: str, **args: Any) -> Any:
        return ok(client, "get_outcome", {"outcome_id": items[item]["outcome_id"], **args})

    plain = await get("t")
    assert "content" not in plain  # only when asked
    full = (await get("t", include_content=True))["content"]
    assert full == {
        "encoding": "utf-8",
        "data": text,
        "mime_type": "text/plain",
        "included_bytes": len(text.encode()),
        "total_bytes": len(text.encode()),
        "truncated": False,
    }
    # cut inside a two-byte character: the character is left out whole, and the cut is said
    cut = (await get("u", include_content=True, max_bytes=5))["content"]
    assert (
        cut["data"] == "éé" and cut["included_bytes"] == 4 and cut["total_bytes"] == 20 and cut["truncated"]
    )
    binary = (await get("bin", include_content=True, max_bytes=100))["content"]
    assert binary["encoding"] == "base64" and base64.b64decode(binary["data"]) == raw[:100]
    assert binary["mime_type"] == "image/png" and binary["truncated"] and binary["total_bytes"] == 256
    assert "content" not in await get("none", include_content=True)  # nothing stored yet
    too_many = await refused(
        client,
        "get_outcome",
        {"outcome_id": items["t"]["outcome_id"], "include_content": True, "max_bytes": 0},
    )
    assert too_many["field"] == "max_bytes"


async def test_rest_mirrors_inline_content_and_the_wait_cap(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with (
        serving(settings, auth=False) as (base, _),
        httpx2.AsyncClient(base_url=base + "/api/v1") as api,
    ):
        await api.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        item = (await api.post("/runs/r/claim", json={"worker": "w"})).json()["items"][0]
        done = await api.post(
            f"/outcomes/{item['outcome_id']}/complete",
            json={"lease_token": item["lease_token"], "content": "0123456789"},
        )
        assert done.status_code == 200, done.text
        got = await api.get(
            f"/outcomes/{item['outcome_id']}", params={"include_content": "true", "max_bytes": "4"}
        )
        assert got.status_code == 200, got.text
        assert got.json()["content"]["data"] == "0123" and got.json()["content"]["truncated"] is True
        assert "content" not in (await api.get(f"/outcomes/{item['outcome_id']}")).json()
        over = await api.get("/runs/r", params={"since": "0", "wait_seconds": "51"})
        assert over.status_code == 400 and over.json()["field"] == "wait_seconds"
        doc = (await api.get("/openapi.json")).json()
        params = {p["name"]: p for p in doc["paths"]["/api/v1/outcomes/{outcome_id}"]["get"]["parameters"]}
        assert {"include_content", "max_bytes"} <= set(params)
        status_params = {p["name"]: p for p in doc["paths"]["/api/v1/runs/{run}"]["get"]["parameters"]}
        assert status_params["wait_seconds"]["schema"]["maximum"] == 50
