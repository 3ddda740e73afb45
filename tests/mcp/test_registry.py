"""The registry (matrix_mcp/mcp/registry.py): every tool the server serves has a spec, and every table
keyed by tool name (scopes, toolsets, REST endpoints) says what the specs say, nothing more; every resource
it lists has a spec too, whose scope the HTTP scope gate asks for.

When the tables became derived, they were compared once against the hand-written ones they replaced (equal:
28 scopes, 5 worker and 17 orchestrator tools, 16 endpoints); what stays is that the derived tables hold each
spec's facts, so a tool can be added in one place and no tool can be left unmapped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mcp.client import Client

from matrix_mcp.config import Settings
from matrix_mcp.http.endpoints import ENDPOINTS
from matrix_mcp.http.scopes import TOOL_SCOPES, required_scope, resource_scope, tool_scope
from matrix_mcp.mcp import registry
from matrix_mcp.mcp.server import create_server
from matrix_mcp.mcp.spec import ALL_SCOPES, READ, Endpoint, ToolSpec
from matrix_mcp.mcp.toolsets import ORCHESTRATOR_TOOLS, WORKER_TOOLS, in_toolset


async def test_every_tool_the_server_serves_has_a_spec(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=str(tmp_path / "a"))
    async with Client(create_server(settings)) as c:
        served = [t.name for t in (await c.list_tools()).tools]
    assert served == [spec.name for spec in registry.TOOLS]
    assert len(served) == len(set(served)) == 30  # 28, then review_item and update_policy


@pytest.mark.parametrize("spec", registry.TOOLS, ids=lambda s: s.name)
def test_each_specs_facts_are_in_the_derived_tables(spec: ToolSpec) -> None:
    assert spec.scope in ALL_SCOPES
    assert TOOL_SCOPES[spec.name] == spec.scope == tool_scope(spec.name)
    assert (spec.name in WORKER_TOOLS) == ("worker" in spec.toolsets)
    assert (spec.name in ORCHESTRATOR_TOOLS) == ("orchestrator" in spec.toolsets)
    for toolset in ("worker", "orchestrator", "all"):
        assert in_toolset(toolset, spec.name) == (toolset == "all" or toolset in spec.toolsets)
    served_at = [e for e in ENDPOINTS if e.tool == spec.name]
    assert served_at == ([] if spec.rest is None else [spec.rest])


def test_the_derived_tables_name_no_tool_without_a_spec() -> None:
    names = set(registry.BY_NAME)
    assert set(TOOL_SCOPES) == names
    assert names >= WORKER_TOOLS | ORCHESTRATOR_TOOLS
    assert {e.tool for e in ENDPOINTS} <= names
    assert len({(e.method, e.path) for e in ENDPOINTS}) == len(ENDPOINTS)  # one tool per route
    assert tool_scope("no_such_tool") == "matrix:admin"  # a name no spec has: closed


async def test_every_resource_the_server_lists_has_a_spec_with_its_facts(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=str(tmp_path / "a"))
    async with Client(create_server(settings)) as c:
        listed = [
            (str(r.uri), r.name, r.title, r.description, r.mime_type)
            for r in (await c.list_resources()).resources
        ]
        templates = [
            (t.uri_template, t.name, t.title, t.description, t.mime_type)
            for t in (await c.list_resource_templates()).resource_templates
        ]
    facts = {
        spec.uri: (spec.uri, spec.name, spec.title, spec.description, spec.mime_type)
        for spec in registry.RESOURCES
    }
    assert sorted(listed + templates) == sorted(facts.values())
    assert len(listed) == 7 and len(templates) == 5


def test_a_resources_scope_is_its_specs_and_its_templates() -> None:
    assert [spec.uri for spec in registry.RESOURCES if spec.scope != READ] == ["matrix://webhooks"]
    for spec in registry.RESOURCES:
        assert required_scope("resources/read", {"uri": spec.uri}) == spec.scope
    assert resource_scope("matrix://webhooks") == "matrix:admin"
    assert resource_scope("matrix://outcomes/o_1/content") == READ  # a template's resource
    assert resource_scope("schema://tables/public.users") == READ
    assert resource_scope("matrix://webhooks/x") == READ  # no resource: its read fails as not found
    assert required_scope("resources/subscribe", {"uri": "matrix://webhooks"}) == "matrix:admin"


def test_the_scope_map_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        TOOL_SCOPES["list_runs"] = "matrix:admin"  # type: ignore[index]


async def some_tool() -> None:
    """A tool for the spec checks below."""


def test_a_spec_cannot_leave_out_its_scope_or_misstate_a_fact() -> None:
    with pytest.raises(TypeError, match="scope"):
        ToolSpec(some_tool)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="scope: unknown scope 'matrix:everything'"):
        ToolSpec(some_tool, scope="matrix:everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="toolsets: every tool is in 'all'"):
        ToolSpec(some_tool, scope=READ, toolsets=frozenset({"all"}))
    with pytest.raises(ValueError, match="rest: endpoint of 'other_tool' given to tool 'some_tool'"):
        ToolSpec(some_tool, scope=READ, rest=Endpoint("GET", "/x", "X.", tool="other_tool"))
    spec = ToolSpec(some_tool, scope=READ, rest=Endpoint("GET", "/x/{run}", "X.", query=("since",)))
    assert spec.rest == Endpoint("GET", "/x/{run}", "X.", query=("since",), tool="some_tool")
    assert spec.rest.path_params == ["run"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.scope = "matrix:admin"  # type: ignore[misc]
