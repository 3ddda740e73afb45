"""The sibling matrix-schema-mcp server through the SDK client: in memory (both eras) and over stdio."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from servers.database_schema import build_server, resolve_url
from tests.support.schema_fixtures import (
    HOSTILE_TABLE,
    HOSTILE_TABLE_2,
    ScratchDatabase,
    build_sqlite,
    pg_corpus,
)

pytestmark = pytest.mark.anyio
__all__ = ["pg_corpus"]

TOOLS = {"analyze_schema", "generate_table_ddl", "find_relationships", "generate_api_schema"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{build_sqlite(tmp_path / 'c.db')}"
    db: ScratchDatabase = request.getfixturevalue("pg_corpus")
    return db.url


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, db_url: str) -> AsyncIterator[Client]:
    async with Client(build_server(db_url), mode=request.param) as c:
        yield c


async def call(c: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await c.call_tool(name, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def error(c: Client, name: str, args: dict[str, Any]) -> str:
    result = await c.call_tool(name, args)
    assert result.is_error
    return " ".join(getattr(b, "text", "") for b in result.content)


async def test_tools_have_output_schemas(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= TOOLS
    for name in TOOLS:
        assert tools[name].output_schema is not None
        assert tools[name].annotations is not None and tools[name].annotations.read_only_hint


async def test_analyze_pages_through_every_table(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATRIX_SCHEMA_MAX_BYTES", "1500")
    first = await call(client, "analyze_schema", {"detail": "full"})
    assert first["audit"]["session_read_only"] is True
    assert first["truncated_by_budget"] and first["next_cursor"]
    seen = [(t["schema_name"], t["name"]) for t in first["tables"]]
    cursor = first["next_cursor"]
    while cursor:
        page = await call(client, "analyze_schema", {"detail": "full", "cursor": cursor})
        seen += [(t["schema_name"], t["name"]) for t in page["tables"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == first["table_count"]
    assert any(name == HOSTILE_TABLE for _, name in seen) and any(name == HOSTILE_TABLE_2 for _, name in seen)


async def test_analyze_summary_shape(client: Client) -> None:
    out = await call(client, "analyze_schema", {"tables": ["orders"], "detail": "summary"})
    (orders,) = out["tables"]
    assert out["table_count"] == 1 and out["next_cursor"] is None
    assert orders["primary_key"]["columns"] == ["region", "order_no"]
    cols = {c["name"]: c for c in orders["columns"]}
    assert cols["qty"]["default"] == "1" and cols["qty"]["nullable"] is False
    assert "untrusted" in out["notice"]
    names = await call(client, "analyze_schema", {"detail": "names", "limit": 2})
    assert len(names["tables"]) == 2 and set(names["tables"][0]) == {"schema_name", "name", "kind"}


async def test_hostile_names_are_data(client: Client) -> None:
    for name in (HOSTILE_TABLE, HOSTILE_TABLE_2):
        ddl = await call(client, "generate_table_ddl", {"table_name": name})
        assert ddl["table_name"] == name and name.replace('"', '""') in ddl["ddl"]
    msg = await error(client, "generate_table_ddl", {"table_name": "nope'; DROP TABLE tags; --"})
    assert "table_name" in msg
    msg = await error(client, "analyze_schema", {"tables": ["x'); DELETE FROM customers; --"]})
    assert "tables" in msg
    await error(client, "analyze_schema", {"cursor": "not-a-cursor"})
    # everything still there
    out = await call(client, "analyze_schema", {"detail": "names"})
    names = {t["name"] for t in out["tables"]}
    assert {"tags", "customers", HOSTILE_TABLE, HOSTILE_TABLE_2} <= names


async def test_ambiguous_name_needs_schema(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("one schema in SQLite")
    async with Client(build_server(db_url), mode="legacy") as c:
        msg = await error(c, "generate_table_ddl", {"table_name": "items"})
        assert "schema_name" in msg and "public" in msg and "sales" in msg
        out = await call(c, "generate_table_ddl", {"table_name": "items", "schema_name": "sales"})
        assert "bigserial" in out["ddl"]


async def test_relationships_and_api(client: Client) -> None:
    rels = (await call(client, "find_relationships", {"table_name": "tags"}))["relationships"]
    assert {r["cardinality"] for r in rels} == {"1:N", "M:N"}
    api = await call(client, "generate_api_schema", {"format": "openapi"})
    assert api["document"]["openapi"] == "3.1.0"
    gql = await call(client, "generate_api_schema", {"format": "graphql", "tables": ["customers", "orders"]})
    assert gql["table_count"] == 2 and "type Customers" in gql["document"]
    assert "format" in await error(client, "generate_api_schema", {"format": "yaml"})


async def test_resources(client: Client) -> None:
    fp = json.loads((await client.read_resource("schema://fingerprint")).contents[0].text)  # type: ignore[union-attr]
    assert fp["fingerprint"].startswith("sha256:")
    table = json.loads((await client.read_resource("schema://tables/orders")).contents[0].text)  # type: ignore[union-attr]
    assert table["table"]["name"] == "orders" and "untrusted" in table["notice"]
    audit = json.loads((await client.read_resource("schema://audit")).contents[0].text)  # type: ignore[union-attr]
    assert audit["session_read_only"] is True
    with pytest.raises(Exception, match="no table"):
        await client.read_resource("schema://tables/missing")


async def test_password_never_leaks() -> None:
    url = "postgresql://nobody:s3cr3t-pw@127.0.0.1:1/none"
    async with Client(build_server(url), mode="legacy") as c:
        msg = await error(c, "analyze_schema", {})
        assert "s3cr3t-pw" not in msg and "database" in msg


def test_url_resolution() -> None:
    assert resolve_url("sqlite:///a.db", {"DATABASE_URL": "sqlite:///b.db"}) == "sqlite:///a.db"
    assert resolve_url(None, {"DATABASE_URL": "sqlite:///b.db"}) == "sqlite:///b.db"
    seed = {"DB_HOST": "h", "DB_PORT": "5433", "DB_NAME": "d", "DB_USER": "u", "DB_PASSWORD": "p w"}
    assert resolve_url(None, seed) == "postgresql://u:p%20w@h:5433/d"


async def test_stdio_console_script(tmp_path: Path) -> None:
    exe = shutil.which("matrix-schema-mcp") or str(Path(sys.executable).with_name("matrix-schema-mcp"))
    if not Path(exe).exists():
        pytest.fail("matrix-schema-mcp is not installed: pip install -e '.[test]'")
    db = build_sqlite(tmp_path / "stdio.db")
    params = StdioServerParameters(
        command=exe, args=["--database-url", f"sqlite:///{db}"], env=dict(os.environ)
    )
    for mode in ("auto", "legacy"):
        async with Client(params, mode=mode) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert tools >= TOOLS
            out = await call(c, "generate_table_ddl", {"table_name": HOSTILE_TABLE_2})
            assert out["table_name"] == HOSTILE_TABLE_2
    # the database was opened read-only: still intact
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (1,)
