"""The run grid view (matrix_mcp/apps) in headless Chromium, inside a minimal host built on the official
`@modelcontextprotocol/ext-apps` host bridge (`AppBridge` + `PostMessageTransport`). The host page lists the
tools, follows run_status's `_meta.ui.resourceUri`, reads the `ui://` resource, renders it in a sandboxed
iframe (scripts only, opaque origin) and proxies the view's `tools/call` through an SDK Client to a real
Matrix service on 127.0.0.1, under an API key with the caller's scopes.

The npm package (pinned) is installed once into a cache folder (MATRIX_TEST_NPM_CACHE, default
~/.cache/matrix-mcp-tests) and its ESM host bridge bundled with esbuild into one script the host page loads
from the test's own HTTP server; the install is the only traffic off 127.0.0.1 and happens once per cache.
Skipped when Chromium, Playwright or npm is missing here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from matrix_mcp.config import Settings
from tests.support.http_helpers import client, create_key, free_port, running, serving

pytestmark = pytest.mark.anyio

EXT_APPS = "@modelcontextprotocol/ext-apps@2.0.4"
ESBUILD = "esbuild@0.28.2"
EVIL_PACKAGE = "<script>window.__pwned=1</script>"
EVIL_ITEM = '<img src=x onerror="window.__pwned=2">'
ERROR = 'boom <b onmouseover="window.__pwned=3">bold</b> & more'
VIEW_READS = {"run_status", "list_outcomes", "get_outcome"}

HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>test host</title></head>
<body><div id="host-status">starting</div>
<script src="/host-bridge.js"></script>
<script>
(async () => {
  const query = new URLSearchParams(location.search);
  const who = query.get("as");
  window.calls = [];
  async function rpc(method, params) {
    const response = await fetch("/rpc?as=" + encodeURIComponent(who), {
      method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify({method, params}),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error);
    return body;
  }
  // what a host does: find the tool's view, read it, render it sandboxed, bridge it
  const {tools} = await rpc("tools/list", {});
  const tool = tools.find((t) => t.name === "run_status");
  const uri = (tool._meta && tool._meta.ui && tool._meta.ui.resourceUri) || tool._meta["ui/resourceUri"];
  const {contents} = await rpc("resources/read", {uri});
  window.viewMimeType = contents[0].mimeType;
  window.viewCsp = contents[0]._meta.ui.csp;
  const iframe = document.createElement("iframe");
  iframe.setAttribute("sandbox", "allow-scripts");
  iframe.style.width = "900px";
  document.body.append(iframe);
  const bridge = new ExtAppsHost.AppBridge(null, {name: "matrix-test-host", version: "1"},
    {serverTools: {}, serverResources: {}}, {hostContext: {theme: "light", toolInfo: {tool}}});
  bridge.oncalltool = async (params) => { window.calls.push(params.name); return rpc("tools/call", params); };
  bridge.onreadresource = async (params) => rpc("resources/read", params);
  bridge.onsizechange = ({height}) => { if (height) iframe.style.height = height + "px"; };
  const args = {run: query.get("run")};
  const result = rpc("tools/call", {name: "run_status", arguments: args});
  bridge.oninitialized = async () => {
    await bridge.sendToolInput({arguments: args});
    await bridge.sendToolResult(await result);
    document.getElementById("host-status").textContent = "sent";
  };
  await bridge.connect(new ExtAppsHost.PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  iframe.srcdoc = contents[0].text;
})().catch((err) => { document.getElementById("host-status").textContent = "host error: " + err.message; });
</script></body></html>"""


def cache_root() -> Path:
    configured = os.environ.get("MATRIX_TEST_NPM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "matrix-mcp-tests"


@pytest.fixture(scope="session")
def host_bridge_js() -> bytes:
    """The ext-apps host bridge as one browser script (global `ExtAppsHost`), built once per cache."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("no npm here (the test host bundles @modelcontextprotocol/ext-apps)")
    folder = cache_root() / "ext-apps-2.0.4"
    bundle = folder / "host-bridge.js"
    if not bundle.exists():
        folder.mkdir(parents=True, exist_ok=True)
        install = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(folder),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                EXT_APPS,
                ESBUILD,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert install.returncode == 0, f"npm install {EXT_APPS} failed: {install.stderr[-2000:]}"
        entry = folder / "host-entry.mjs"
        entry.write_text(
            'export { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";\n'
        )
        build = subprocess.run(
            [
                str(folder / "node_modules" / ".bin" / "esbuild"),
                str(entry),
                "--bundle",
                "--format=iife",
                "--global-name=ExtAppsHost",
                "--platform=browser",
                f"--outfile={bundle}.tmp",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=folder,
        )
        assert build.returncode == 0, f"esbuild failed: {build.stderr[-2000:]}"
        os.replace(f"{bundle}.tmp", bundle)
    return bundle.read_bytes()


def host_app(bridge_js: bytes, clients: dict[str, Client]) -> Starlette:
    """The test host: its page, the bundled bridge, and /rpc, which forwards the page's MCP requests through
    the SDK Client of the caller named by `?as=`."""

    async def page(_: Request) -> Response:
        return HTMLResponse(HOST_PAGE)

    async def bridge(_: Request) -> Response:
        return Response(bridge_js, media_type="text/javascript")

    async def rpc(request: Request) -> Response:
        mcp = clients[request.query_params["as"]]
        body = await request.json()
        method, params = body["method"], body.get("params") or {}
        result: Any
        if method == "tools/list":
            result = await mcp.list_tools()
        elif method == "tools/call":
            result = await mcp.call_tool(params["name"], params.get("arguments") or {})
        elif method == "resources/read":
            result = await mcp.read_resource(params["uri"])
        else:
            return JSONResponse({"error": f"unsupported {method}"}, status_code=400)
        return JSONResponse(result.model_dump(mode="json", by_alias=True, exclude_none=True))

    return Starlette(
        routes=[
            Route("/", page),
            Route("/host-bridge.js", bridge),
            Route("/rpc", rpc, methods=["POST"]),
        ]
    )


async def open_view(browser: Any, base: str, who: str, run: str) -> tuple[Any, Any, list[str], list[str]]:
    """The host page for caller `who` showing `run`: (page, the view's frame, page errors, URLs the view
    itself requested)."""
    page = await browser.new_page(viewport={"width": 1000, "height": 900})
    errors: list[str] = []
    view_requests: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: view_requests.append(r.url) if r.frame != page.main_frame else None)
    await page.goto(f"{base}/?as={who}&run={run}")
    await page.wait_for_function("document.getElementById('host-status').textContent !== 'starting'")
    assert await page.text_content("#host-status") == "sent"
    frame = page.frames[1]
    await frame.wait_for_selector("body[data-ready='1']")
    return page, frame, errors, view_requests


async def statuses(frame: Any) -> dict[str, int]:
    found: dict[str, int] = await frame.evaluate(
        """() => {
            const counts = {};
            for (const cell of document.querySelectorAll('.cell')) {
                counts[cell.dataset.status] = (counts[cell.dataset.status] || 0) + 1;
            }
            return counts;
        }"""
    )
    return found


async def test_the_grid_view_in_an_ext_apps_host(browser: Any, host_bridge_js: bytes, tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    planner = await create_key(settings, "planner", "matrix:plan", "matrix:read")
    reader = await create_key(settings, "reader", "matrix:read")
    worker = await create_key(settings, "worker", "matrix:work")
    async with (
        serving(settings, auth=True) as (base, _),
        httpx2.AsyncClient(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {planner}"}) as api,
    ):
        packages = [{"name": f"pkg{i}", "items": [f"item{j}" for j in range(4)]} for i in range(3)]
        packages.append({"name": EVIL_PACKAGE, "items": [EVIL_ITEM]})
        plan = await api.post("/runs", json={"name": "grid", "packages": packages, "max_attempts": 1})
        assert plan.status_code == 201, plan.text
        async with (
            client(base, worker) as work,
            client(base, planner, mode="legacy") as as_planner,
            client(base, reader, mode="legacy") as as_reader,
        ):
            claimed = await work.call_tool("claim_items", {"run": "grid", "worker": "w1", "limit": 3})
            done, failing, _ = (claimed.structured_content or {})["items"]
            await work.call_tool(
                "complete_item", {"outcome_id": done["outcome_id"], "lease_token": done["lease_token"]}
            )
            await work.call_tool(
                "fail_item",
                {"outcome_id": failing["outcome_id"], "lease_token": failing["lease_token"], "error": ERROR},
            )
            expected = {"complete": 1, "failed": 1, "generating": 1, "pending": 10}

            host_port = free_port()
            app = host_app(host_bridge_js, {"planner": as_planner, "reader": as_reader})
            async with running(app, host_port) as host:
                # a read-only caller: the grid, the failures and the item detail; no action buttons
                page, frame, errors, view_requests = await open_view(browser, host, "reader", "grid")
                assert await page.evaluate("window.viewMimeType") == "text/html;profile=mcp-app"
                assert await page.evaluate("window.viewCsp") == {"connectDomains": [], "resourceDomains": []}
                assert await statuses(frame) == expected
                assert await frame.text_content("#failures-title") == "Failures (1)"
                await frame.click(f".cell[data-outcome-id='{failing['outcome_id']}']")
                await frame.wait_for_selector("#detail-error")
                assert await frame.text_content("#detail-error") == ERROR
                assert ERROR in (await frame.text_content("#history") or "")
                assert await frame.query_selector_all("[data-action]") == []
                assert await frame.query_selector("[data-role=refresh]") is not None  # reading is allowed
                calls = await page.evaluate("window.calls")
                assert "get_outcome" in calls and set(calls) <= VIEW_READS
                # untrusted names and errors are text: no element or handler came from them
                headers = [await h.text_content() for h in await frame.query_selector_all("[role=rowheader]")]
                assert headers == ["pkg0", "pkg1", "pkg2", EVIL_PACKAGE]
                evil = await frame.query_selector(f".cell[title*='{EVIL_ITEM[:8]}']")
                assert (
                    evil is not None
                    and await evil.get_attribute("title") == f"{EVIL_PACKAGE} / {EVIL_ITEM}: pending"
                )
                await evil.click()
                await frame.wait_for_function(
                    "() => document.getElementById('detail-title').textContent.includes('onerror')"
                )
                assert await frame.text_content("#detail-title") == f"{EVIL_PACKAGE} / {EVIL_ITEM}"
                assert await frame.evaluate(
                    "() => [window.__pwned, document.querySelectorAll('img, b, #detail script').length]"
                ) == [None, 0]
                assert view_requests == [] and errors == []
                await page.close()

                # a planner: retry appears (retry_items is listed) and goes through retry_items
                page, frame, errors, view_requests = await open_view(browser, host, "planner", "grid")
                assert await statuses(frame) == expected
                assert await frame.text_content("[data-action=retry-failed]") == "Retry 1 failed"
                await frame.click(f".cell[data-outcome-id='{failing['outcome_id']}']")
                await frame.wait_for_selector("[data-action=retry-item]")
                await frame.click("[data-action=retry-item]")
                await frame.wait_for_function(
                    "() => document.getElementById('notice').textContent === '1 items re-queued'"
                )
                await frame.wait_for_selector(
                    f".cell[data-outcome-id='{failing['outcome_id']}'][data-status=pending]"
                )
                assert await statuses(frame) == {"complete": 1, "generating": 1, "pending": 11}
                assert await frame.query_selector("[data-action=retry-failed]") is None
                assert "retry_items" in await page.evaluate("window.calls")
                assert view_requests == [] and errors == []
                await page.close()

        status = await api.get("/runs/grid")
        assert status.json()["counts"]["failed"] == 0, json.dumps(status.json())[:500]


async def test_the_grid_view_shows_blocked_items_and_what_they_wait_for(
    browser: Any, host_bridge_js: bytes, tmp_path: Path
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    reader = await create_key(settings, "reader", "matrix:read")
    planner = await create_key(settings, "planner", "matrix:plan")
    async with (
        serving(settings, auth=True) as (base, _),
        httpx2.AsyncClient(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {planner}"}) as api,
    ):
        packages = [
            {"name": "schema", "priority": 1, "items": [{"name": "users", "locks": ["file:db.py"]}]},
            {"name": "services", "after": ["schema"], "items": ["accounts"]},
        ]
        assert (await api.post("/runs", json={"name": "staged", "packages": packages})).status_code == 201
        async with client(base, reader, mode="legacy") as as_reader:
            host_port = free_port()
            async with running(host_app(host_bridge_js, {"reader": as_reader}), host_port) as host:
                page, frame, errors, view_requests = await open_view(browser, host, "reader", "staged")
                assert await statuses(frame) == {"pending": 1, "blocked": 1}
                assert "1 blocked" in (await frame.text_content("#summary") or "")
                blocked = await frame.query_selector(".cell[data-status=blocked]")
                assert (
                    blocked is not None
                    and await blocked.get_attribute("title") == "services / accounts: blocked"
                )
                await blocked.click()
                await frame.wait_for_function(
                    "() => document.getElementById('detail-title').textContent === 'services / accounts'"
                )
                fields = await frame.text_content("#detail-fields")
                assert fields is not None and "Waits forschema/*" in fields and "Priority0" in fields
                assert view_requests == [] and errors == []
                await page.close()
