"""The small module that reaches into mcp internals: its behaviour, pinned so an SDK upgrade shows up here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcp.client import Client

from matrix_mcp import sdk_compat
from matrix_mcp.config import Settings
from matrix_mcp.models import Outcome, RunStatus
from matrix_mcp.sdk_compat import compact_schema, inline_refs
from matrix_mcp.server import create_server
from servers.database_schema import build_server

pytestmark = pytest.mark.anyio


def test_compact_schema_keeps_meaning() -> None:
    schema = {
        "title": "X",
        "type": "object",
        "properties": {
            "title": {"title": "Title", "type": "string"},  # a property *named* title survives
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None, "title": "Maybe"},
            "kind": {"anyOf": [{"enum": ["a", "b"], "type": "string"}, {"type": "null"}]},
            "must": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "either": {"anyOf": [{"type": "object"}, {"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["title", "must"],
        "additionalProperties": True,
    }
    out = compact_schema(schema)
    # optional inputs lose the null branch (leaving them out means None); a required nullable one keeps it
    # as anyOf of single types; nothing becomes a type array
    assert out == {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "maybe": {"type": "integer"},
            "kind": {"enum": ["a", "b"], "type": "string"},
            "must": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "either": {"anyOf": [{"type": "object"}, {"type": "string"}]},
        },
        "required": ["title", "must"],
    }
    validator = jsonschema.Draft202012Validator(out)
    assert validator.is_valid({"title": "t", "must": None})
    assert validator.is_valid({"title": "t", "must": "m", "maybe": 2, "kind": "a", "either": {}})
    assert not validator.is_valid({"title": "t", "must": None, "kind": "c"})
    assert not validator.is_valid({"maybe": 1, "must": None})


def test_output_schemas_validate_real_results() -> None:
    for model in (Outcome, RunStatus):
        schema = inline_refs(compact_schema(model.model_json_schema(), output=True))
        assert "$ref" not in str(schema) or "$defs" in schema
        jsonschema.Draft202012Validator.check_schema(schema)
    status = RunStatus.model_validate(
        {
            "run": "r",
            "run_id": "i",
            "state": "active",
            "goal": None,
            "counts": {"pending": 1, "total": 1},
            "packages": [],
            "progress": 0,
            "throughput_per_minute": None,
            "eta_seconds": None,
            "latest_seq": 3,
            "events": [],
        }
    )
    schema = inline_refs(compact_schema(RunStatus.model_json_schema(), output=True))
    jsonschema.validate(status.model_dump(mode="json", exclude_none=True), schema)  # as the server sends it
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**status.model_dump(mode="json"), "latest_seq": "x"}, schema)


def test_inline_refs_keeps_shared_definitions() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A"}, "b1": {"$ref": "#/$defs/B"}, "b2": {"$ref": "#/$defs/B"}},
        "$defs": {"A": {"type": "string"}, "B": {"type": "integer"}},
    }
    out = inline_refs(schema)
    assert out["properties"]["a"] == {"type": "string"}
    assert out["properties"]["b1"] == {"$ref": "#/$defs/B"}
    assert out["$defs"] == {"B": {"type": "integer"}}


async def test_content_resource_keeps_its_mime_type(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with Client(create_server(settings), mode="legacy") as c:
        await c.call_tool("plan_run", {"name": "r", "packages": [{"name": "p", "items": ["x", "y"]}]})
        for mime, content, encoding in (
            ("application/json", '{"a": 1}', "utf-8"),
            ("image/png", "iVBORw0K", "base64"),
        ):
            got = (await c.call_tool("claim_items", {"run": "r", "worker": "w"})).structured_content or {}
            item = got["items"][0]
            await c.call_tool(
                "complete_item",
                {
                    "outcome_id": item["outcome_id"],
                    "lease_token": item["lease_token"],
                    "content": content,
                    "content_encoding": encoding,
                    "mime_type": mime,
                },
            )
            res = (await c.read_resource(f"matrix://outcomes/{item['outcome_id']}/content")).contents[0]
            assert res.mime_type == mime
            if mime == "image/png":
                assert getattr(res, "blob", None) == "iVBORw0K"
            else:
                assert getattr(res, "text", None) == content
        tools = (await c.list_tools()).tools
        assert all("\n" not in (t.description or "") for t in tools)


async def test_text_arguments_that_look_like_json_stay_text(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with Client(create_server(settings), mode="legacy") as c:
        plan = await c.call_tool(
            "plan_run",
            {"name": "r", "goal": '{"target": "json"}', "packages": [{"name": "true", "items": ["1"]}]},
        )
        assert not plan.is_error and (plan.structured_content or {})["run"]["goal"] == '{"target": "json"}'
        got = await c.call_tool("claim_items", {"run": "r", "worker": "null", "package": "true"})
        assert not got.is_error, got.content
        item = (got.structured_content or {})["items"][0]
        assert item["package"] == "true"
        # a list sent as a JSON string is still accepted where a list is expected (Claude Desktop does this)
        hb = await c.call_tool(
            "heartbeat",
            {
                "leases": f'[{{"outcome_id": "{item["outcome_id"]}", "lease_token": "{item["lease_token"]}"}}]',
                "detail": "full",
            },
        )
        assert not hb.is_error and len((hb.structured_content or {})["extended"]) == 1


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_unknown_arguments_are_refused_not_ignored(tmp_path: Path, mode: str) -> None:
    """A misspelt option must not silently do nothing: `policy={...}` or `lease_second=5` on plan_run is a
    validation error naming what the tool takes, and nothing is planned; the input schemas say so."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with Client(create_server(settings), mode=mode) as c:  # type: ignore[arg-type]
        packages = [{"name": "p", "items": ["a"]}]
        bad = await c.call_tool("plan_run", {"name": "r", "packages": packages, "lease_second": 5})
        assert bad.is_error
        text = bad.content[0].text  # type: ignore[union-attr]
        assert "lease_second" in text and "unknown argument" in text and "lease_seconds" in text
        runs = await c.call_tool("list_runs", {})
        assert runs.structured_content == {"runs": []}
        ok = await c.call_tool("plan_run", {"name": "r", "packages": packages, "lease_seconds": 5})
        assert not ok.is_error
        tools = (await c.list_tools()).tools
        assert tools and all(t.input_schema.get("additionalProperties") is False for t in tools)


def test_precomputed_tool_definitions_are_current() -> None:
    """tool_schemas.json must describe the code as it is: regenerate it after changing a tool's signature,
    docstring or result model (the servers then register those tools the slow way until you do)."""
    data = json.loads(sdk_compat.TOOL_CACHE.read_text(encoding="utf-8"))
    assert data["fingerprint"]["sources"] == sdk_compat.tool_fingerprint()["sources"], (
        "matrix_mcp/tool_schemas.json is stale: run `python -m matrix_mcp.sdk_compat`"
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_precomputed_tools_are_the_sdks_tools(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both servers list exactly the same tools with the precomputed definitions as without them, and a
    precomputed tool validates its arguments and its result as the SDK's own does. Under another release
    of the SDK or pydantic than the file was written with, the definitions are not used at all."""
    data = json.loads(sdk_compat.TOOL_CACHE.read_text(encoding="utf-8"))
    usable = data["fingerprint"] == sdk_compat.tool_fingerprint()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    listed: dict[str, list[dict[str, Any]]] = {}
    contexts: dict[str, dict[str, str | None]] = {}
    for cache in ("1", "0"):
        monkeypatch.setenv("MATRIX_TOOL_CACHE", cache)
        matrix, schema = create_server(settings), build_server(f"sqlite:///{tmp_path / 'm.db'}")
        tools = [t for s in (matrix, schema) for t in s._tool_manager.list_tools()]
        kinds = {type(t.fn_metadata).__name__ for t in tools}
        contexts[cache] = {t.name: t.context_kwarg for t in tools}
        assert kinds == ({"CachedFuncMetadata"} if cache == "1" and usable else {"StrictFuncMetadata"})
        listed[cache] = []
        for server in (matrix, schema):
            async with Client(server, mode=mode) as c:  # type: ignore[arg-type]
                listed[cache] += [t.model_dump(mode="json") for t in (await c.list_tools()).tools]
                if server is matrix:
                    bad = await c.call_tool("claim_items", {"run": "r", "worker": "w", "limit": 0})
                    assert bad.is_error and "limit" in bad.content[0].text  # type: ignore[union-attr]
                else:
                    ok = await c.call_tool("find_relationships", {})
                    assert not ok.is_error and "relationships" in (ok.structured_content or {})
    assert listed["1"] == listed["0"] and len(listed["1"]) == 32
    assert contexts["1"] == contexts["0"] and contexts["0"]["run_status"] == "ctx"


def _type_arrays(node: Any, path: str = "") -> list[str]:
    """Paths of every `type` whose value is an array, anywhere in a schema."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("type"), list):
            found.append(path or "/")
        for key, value in node.items():
            found += _type_arrays(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _type_arrays(value, f"{path}/{i}")
    return found


@pytest.mark.parametrize("cache", ["1", "0"])
async def test_no_tool_schema_has_a_type_array(
    cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tool's inputSchema and outputSchema, on both servers, with and without the precomputed
    definitions: no `type: [..]` (Gemini function declarations reject them; the Inspector's schema lint
    warns), and the input schemas' top level stays a plain object (Claude Code drops a server's tools
    otherwise)."""
    monkeypatch.setenv("MATRIX_TOOL_CACHE", cache)
    monkeypatch.setattr(sdk_compat, "_cache", None)
    db = tmp_path / "m.db"
    for server in (
        create_server(Settings(database_url=f"sqlite:///{db}", artifacts_dir=tmp_path / "a")),
        build_server(f"sqlite:///{db}"),
    ):
        async with Client(server, mode="legacy") as c:
            tools = (await c.list_tools()).tools
        assert tools
        for tool in tools:
            assert tool.input_schema.get("type") == "object", tool.name
            for kind, schema in (("inputSchema", tool.input_schema), ("outputSchema", tool.output_schema)):
                assert _type_arrays(schema) == [], (tool.name, kind)
