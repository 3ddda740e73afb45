"""The small module that reaches into mcp internals: its behaviour, pinned so an SDK upgrade shows up here."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcp.client import Client
from mcp.server.mcpserver.tools import Tool

from matrix_mcp.config import Settings
from matrix_mcp.mcp.server import create_server
from matrix_mcp.models import Outcome, RunStatus
from matrix_mcp.sdk import compat as sdk_compat
from matrix_mcp.sdk.compat import compact_schema, inline_refs
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
        text = (bad.structured_content or {})["error"]
        assert "lease_second" in text and "unknown argument" in text and "lease_seconds" in text
        runs = await c.call_tool("list_runs", {})
        assert runs.structured_content == {"runs": []}
        ok = await c.call_tool("plan_run", {"name": "r", "packages": packages, "lease_seconds": 5})
        assert not ok.is_error
        tools = (await c.list_tools()).tools
        assert tools and all(t.input_schema.get("additionalProperties") is False for t in tools)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tool definition cache of this test's own."""
    monkeypatch.setenv("MATRIX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MATRIX_TOOL_CACHE", raising=False)
    return tmp_path / "cache"


def _no_sdk_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("built the SDK's way although the cache is current")

    monkeypatch.setattr(Tool, "from_function", refuse)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_cached_tools_are_the_sdks_tools(
    tmp_path: Path, mode: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first start writes the definitions to the cache; the next builds no tool the SDK's way and lists
    exactly the same tools as a server built without the cache; a cached tool validates its arguments and
    its result as the SDK's own does."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    schema_url = f"sqlite:///{tmp_path / 'm.db'}"
    listed: dict[str, list[dict[str, Any]]] = {}
    for kind in ("off", "first", "cached"):
        if kind == "off":
            monkeypatch.setenv("MATRIX_TOOL_CACHE", "0")
        else:
            monkeypatch.delenv("MATRIX_TOOL_CACHE", raising=False)
        if kind == "cached":
            assert sorted(p.name.split("-")[1] for p in cache.iterdir()) == ["database", "matrix"]
            _no_sdk_build(monkeypatch)
        matrix, schema = create_server(settings), build_server(schema_url)
        if kind == "off":
            assert not cache.exists()
        tools = [t for s in (matrix, schema) for t in s.tool_definitions().values()]
        assert {type(t.fn_metadata) for t in tools} == {sdk_compat.LazyFuncMetadata}
        assert {t.name: t.context_kwarg for t in tools} == dict.fromkeys([t.name for t in tools], "ctx")
        listed[kind] = []
        for server in (matrix, schema):
            async with Client(server, mode=mode) as c:  # type: ignore[arg-type]
                listed[kind] += [t.model_dump(mode="json") for t in (await c.list_tools()).tools]
                if server is matrix:
                    bad = await c.call_tool("claim_items", {"run": "r", "worker": "w", "limit": 0})
                    assert bad.is_error and "limit" in (bad.structured_content or {})["error"]
                    ok = await c.call_tool("list_runs", {})
                    assert not ok.is_error and ok.structured_content == {"runs": []}
                else:
                    ok = await c.call_tool("find_relationships", {})
                    assert not ok.is_error and "relationships" in (ok.structured_content or {})
    assert listed["off"] == listed["first"] == listed["cached"] and len(listed["off"]) == 34


MODELS_PY = """from pydantic import BaseModel, Field


class Answer(BaseModel):
    value: int = Field(description="VERSION-ONE")
"""
TOOLS_PY = '''from mcp.server.mcpserver import Context

from stale_pkg.models import Answer


async def answer(ctx: Context, x: int) -> Answer:
    """DOC-ONE"""
    return Answer(value=x)
'''


async def test_tool_cache_cannot_go_stale(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool whose result model lives in another module: editing that module (a field's description) or the
    tool's docstring changes the definitions the next start serves, with nothing to regenerate."""
    pkg = tmp_path / "stale_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODELS_PY)
    (pkg / "tools.py").write_text(TOOLS_PY)
    monkeypatch.syspath_prepend(str(tmp_path))

    def build() -> Tool:
        for name in ("stale_pkg.tools", "stale_pkg.models"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        tools = importlib.import_module("stale_pkg.tools")
        return sdk_compat.build_tools("stale", [sdk_compat.ToolSpec(tools.answer)], 10).tools[0]

    first = build()
    assert first.description == "DOC-ONE" and "VERSION-ONE" in json.dumps(first.output_schema)
    assert len(list(cache.iterdir())) == 1
    with monkeypatch.context() as m:  # unchanged: served from the cache
        _no_sdk_build(m)
        assert build().output_schema == first.output_schema
    models = pkg / "models.py"
    models.write_text(MODELS_PY.replace("VERSION-ONE", "VERSION-TWO"))
    second = json.dumps(build().output_schema)
    assert "VERSION-TWO" in second and "VERSION-ONE" not in second
    (pkg / "tools.py").write_text(TOOLS_PY.replace("DOC-ONE", "DOC-TWO"))
    assert build().description == "DOC-TWO"
    for name in ("stale_pkg.tools", "stale_pkg.models", "stale_pkg"):
        sys.modules.pop(name, None)


def test_an_unwritable_cache_only_means_building_at_every_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MATRIX_TOOL_CACHE", raising=False)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("MATRIX_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level(logging.INFO):
        server = build_server(f"sqlite:///{tmp_path / 'm.db'}")
    assert len(server.tool_definitions()) == 4
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # silent: nothing for the operator
    (tmp_path / "damaged").mkdir()
    monkeypatch.setenv("MATRIX_CACHE_DIR", str(tmp_path / "damaged"))
    path = sdk_compat.cache_file("database-schema")
    assert path is not None
    path.write_text("{not json")  # a damaged file is rebuilt and replaced
    assert len(build_server(f"sqlite:///{tmp_path / 'm.db'}").tool_definitions()) == 4
    assert set(json.loads(path.read_text())["tools"]) == {
        "analyze_schema",
        "generate_table_ddl",
        "find_relationships",
        "generate_api_schema",
    }


PAGED = {
    "claim_items": "limit",
    "list_outcomes": "limit",
    "complete_item": "claim_next",  # enforced, not advertised (the worker toolset's 6 KiB)
    "fail_item": "claim_next",
    "analyze_schema": "limit",
}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_page_sizes_follow_the_configured_limit(tmp_path: Path, mode: str) -> None:
    """MATRIX_MAX_PAGE_SIZE is the bound of every page-size argument: advertised as the input schema's
    maximum (1000 by default) and enforced, a value above it refused with one line naming the field."""
    for size in (None, 5000):
        env = {
            "MATRIX_DATABASE_URL": f"sqlite:///{tmp_path / f'{size}.db'}",
            "MATRIX_ARTIFACTS_DIR": str(tmp_path),
        }
        settings = Settings.from_env(env if size is None else {**env, "MATRIX_MAX_PAGE_SIZE": str(size)})
        bound = size or 1000
        async with Client(create_server(settings), mode=mode) as c:  # type: ignore[arg-type]
            tools = {t.name: t for t in (await c.list_tools()).tools}
            for tool, arg in PAGED.items():
                expected = None if arg == "claim_next" else bound
                assert tools[tool].input_schema["properties"][arg].get("maximum") == expected, (tool, arg)
            items = [f"i{n}" for n in range(1500)]
            await c.call_tool("plan_run", {"name": "r", "packages": [{"name": "p", "items": items}]})
            page = await c.call_tool("list_outcomes", {"run": "r", "limit": 1500})
            claim = await c.call_tool("claim_items", {"run": "r", "worker": "w", "limit": 1200})
            if size is None:
                for refused in (page, claim):
                    assert refused.is_error
                    assert (refused.structured_content or {})["error"] == "limit: must be at most 1000"
            else:
                assert len((page.structured_content or {})["outcomes"]) == 1500
                assert len((claim.structured_content or {})["items"]) == 1200
            for tool, args in (
                ("claim_items", {"run": "r", "worker": "w", "limit": str(bound + 1)}),
                ("analyze_schema", {"limit": bound + 1}),
                ("fail_item", {"outcome_id": "x", "lease_token": "t", "error": "e", "claim_next": bound + 1}),
            ):
                over = await c.call_tool(tool, args)
                field = PAGED[tool]
                assert (
                    over.is_error
                    and (over.structured_content or {})["error"] == f"{field}: must be at most {bound}"
                )


async def test_the_schema_service_is_closed_at_shutdown(tmp_path: Path) -> None:
    """Each server owns its schema service: opened on the first schema call, closed when the server stops."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    for server in (create_server(settings), build_server(f"sqlite:///{tmp_path / 'm.db'}")):
        service = server.state.schema.service
        async with Client(server, mode="legacy") as c:
            assert not (await c.call_tool("analyze_schema", {})).is_error
            assert service._reader is not None  # opened
        assert service._reader is None  # closed with the server


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
    """Every tool's inputSchema and outputSchema, on both servers, with and without the definition cache: no `type: [..]` (Gemini function declarations reject them; the Inspector's schema lint
    warns), and the input schemas' top level stays a plain object (Claude Code drops a server's tools
    otherwise)."""
    monkeypatch.setenv("MATRIX_TOOL_CACHE", cache)
    monkeypatch.setenv("MATRIX_CACHE_DIR", str(tmp_path / "cache"))
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
