"""The run grid as an MCP App (matrix_mcp/apps) through the SDK's in-memory Client, in both protocol eras:
the `ui://` resource is listed and readable as `text/html;profile=mcp-app` with a no-network CSP, run_status
links to it through the Apps extension's tool `_meta`, results stay what hosts without Apps read, and the
document names only the tools the reader may call. The view in a real host bridge: test_apps_browser.py."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID

from matrix_mcp.apps import GRID_URI, VIEW_TOOLS, grid_html, grid_template
from matrix_mcp.audit import current_tool_access
from matrix_mcp.config import Settings, Toolset
from matrix_mcp.mcp.server import create_server
from tests.support.http_helpers import client as http_client
from tests.support.http_helpers import create_key, serving

pytestmark = pytest.mark.anyio


def settings_in(tmp_path: Path, toolset: Toolset = "all") -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "artifacts", toolset=toolset
    )


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Client]:
    async with Client(create_server(settings_in(tmp_path)), mode=request.param) as c:
        yield c


def tools_named(html: str) -> list[str]:
    found = re.search(r'<script type="application/json" id="matrix-tools">(.*?)</script>', html)
    assert found, "the document carries its tool names"
    names: list[str] = json.loads(found.group(1))
    return names


async def test_grid_resource_is_listed_and_readable_as_an_app(client: Client) -> None:
    listed = {str(r.uri): r for r in (await client.list_resources()).resources}
    resource = listed[GRID_URI]
    assert resource.mime_type == APP_MIME_TYPE == "text/html;profile=mcp-app"
    assert resource.meta == {"ui": {"csp": {"connectDomains": [], "resourceDomains": []}}}

    read = await client.read_resource(GRID_URI)
    (content,) = read.contents
    assert content.mime_type == APP_MIME_TYPE
    assert content.meta == {"ui": {"csp": {"connectDomains": [], "resourceDomains": []}}}
    html = getattr(content, "text", "")
    assert html.startswith("<!doctype html>")
    # self-contained: no URL leaves the document (no src/href at all, no fetch, no import)
    assert not re.search(r"\b(src|href)\s*=", html)
    assert "http://" not in html and "https://" not in html and "fetch(" not in html
    assert "connect-src 'none'" in html
    # markup is never built from text
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html and "document.write" not in html
    assert tools_named(html) == list(VIEW_TOOLS)


async def test_run_status_links_the_grid_and_its_result_is_unchanged(client: Client, tmp_path: Path) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert tools["run_status"].meta == {"ui": {"resourceUri": GRID_URI}, "ui/resourceUri": GRID_URI}
    assert all(t.meta is None for name, t in tools.items() if name != "run_status")
    if client.protocol_version != "2025-11-25":  # the modern era advertises the extension
        assert EXTENSION_ID in (client.server_capabilities.extensions or {})

    await client.call_tool("plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a", "b"]}]})
    result = await client.call_tool("run_status", {"run": "r"})
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["counts"]["pending"] == 2
    (text,) = result.content
    assert json.loads(getattr(text, "text", "")) == result.structured_content


async def test_a_worker_connection_gets_a_view_without_the_tools_it_does_not_list(tmp_path: Path) -> None:
    async with Client(create_server(settings_in(tmp_path, "worker")), mode="legacy") as c:
        read = await c.read_resource(GRID_URI)
        assert tools_named(getattr(read.contents[0], "text", "")) == ["get_outcome"]


def test_the_document_names_only_what_the_caller_may_call() -> None:
    token = current_tool_access.set(lambda tool: tool != "retry_items")
    try:
        assert tools_named(grid_html(VIEW_TOOLS)) == ["run_status", "list_outcomes", "get_outcome"]
    finally:
        current_tool_access.reset(token)
    assert tools_named(grid_html(VIEW_TOOLS)) == list(VIEW_TOOLS)
    assert grid_template().count('id="matrix-tools"') == 1


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_over_http_a_read_only_key_gets_a_view_without_retry(tmp_path: Path, mode: str) -> None:
    settings = settings_in(tmp_path)
    reader = await create_key(settings, "reader", "matrix:read")
    planner = await create_key(settings, "planner", "matrix:plan", "matrix:read")
    async with serving(settings, auth=True) as (base, _):
        async with http_client(base, reader, mode) as c:
            html = getattr((await c.read_resource(GRID_URI)).contents[0], "text", "")
            assert tools_named(html) == ["run_status", "list_outcomes", "get_outcome"]
        async with http_client(base, planner, mode) as c:
            html = getattr((await c.read_resource(GRID_URI)).contents[0], "text", "")
            assert tools_named(html) == list(VIEW_TOOLS)


def test_the_view_ships_as_package_data() -> None:
    """setuptools puts only .py files and package-data matches in the wheel: the document must match one."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["matrix_mcp"]
    shipped = [
        p.relative_to(root / "matrix_mcp").as_posix()
        for p in (root / "matrix_mcp" / "apps").iterdir()
        if p.is_file() and p.suffix not in (".py", ".pyc")
    ]
    assert "grid.html" in {Path(s).name for s in shipped}
    for name in shipped:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_the_view_draws_every_status() -> None:
    """The view's status list is the models' (blocked included), and each status but pending (the cells'
    default) has its own style."""
    from matrix_mcp.models import STATUSES

    html = grid_html(VIEW_TOOLS)
    found = re.search(r"const STATUSES = (\[[^\]]*\]);", html)
    assert found and json.loads(found.group(1)) == list(STATUSES)
    for status in STATUSES[1:]:
        assert f'.cell[data-status="{status}"]' in html, status
