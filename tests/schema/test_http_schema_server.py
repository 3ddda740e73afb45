"""matrix-schema-mcp over HTTP with the same authentication as matrix-mcp: API keys from a Matrix store."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.http.options import ServiceOptions
from servers.database_schema import http_service
from tests.support.http_helpers import client, create_key, free_port, post_init, running

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_schema_server_requires_a_key_with_read(tmp_path: Path, mode: str) -> None:
    keys_url = f"sqlite:///{tmp_path / 'matrix.db'}"
    settings = Settings(database_url=keys_url, artifacts_dir=tmp_path / "a")
    reader = await create_key(settings, "analyst", "read")
    worker = await create_key(settings, "worker", "work")
    port = free_port()
    service = http_service(keys_url, keys_url, ServiceOptions(port=port), auth=True)
    async with running(service.app, port) as base:
        async with client(base, reader, mode) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {"analyze_schema", "generate_table_ddl"} <= tools
            got = await c.call_tool("analyze_schema", {"detail": "names"})
            assert not got.is_error and "api_keys" in str(got.structured_content)
        async with client(base, worker, mode) as c:
            assert (await c.list_tools()).tools == []
            refused = await c.call_tool("analyze_schema", {})
            assert refused.is_error and "matrix:read" in (refused.structured_content or {})["error"]
        async with httpx2.AsyncClient() as http:
            r = await post_init(http, base)
            assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]
            assert (await http.get(f"{base}/readyz")).status_code == 200
            assert "matrix_tool_calls_total" in (await http.get(f"{base}/metrics")).text
