"""analyze_schema at full detail on a generated 1,000-table PostgreSQL schema, versus per-table
information_schema queries (the seed's method), in one run.

    python bench/bench_schema.py [--tables 1000] [--url postgresql://postgres@127.0.0.1:5432/test]

Creates a scratch database, fills it (10 columns, 1 foreign key and 1 index per table), measures,
and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from mcp.client import Client
from mcp.types import CallToolResult
from psycopg import sql

from servers.database_schema import build_server


def _db_url(base: str, name: str) -> str:
    p = urlsplit(base)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


def populate(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("CREATE SCHEMA bench")
        for i in range(n):
            t = sql.Identifier("bench", f"t{i:04d}")
            ref = sql.Identifier("bench", f"t{max(i - 1, 0):04d}")
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, parent_id bigint REFERENCES {}(id),"
                    " name text NOT NULL, code varchar(32) UNIQUE, amount numeric(12,2) DEFAULT 0, qty integer,"
                    " created_at timestamptz DEFAULT now(), flag boolean, payload jsonb, note text)"
                ).format(t, ref)
            )
            conn.execute(
                sql.SQL("CREATE INDEX {} ON {} (name)").format(sql.Identifier(f"t{i:04d}_name_idx"), t)
            )
        conn.execute("ANALYZE")


SEED_QUERIES = [
    """SELECT column_name, data_type, is_nullable, column_default, character_maximum_length
       FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position""",
    """SELECT tc.constraint_name, tc.constraint_type, kcu.column_name
       FROM information_schema.table_constraints tc
       JOIN information_schema.key_column_usage kcu
         ON tc.constraint_name = kcu.constraint_name AND tc.table_schema = kcu.table_schema
       WHERE tc.table_schema = %s AND tc.table_name = %s""",
    """SELECT kcu.column_name, ccu.table_name, ccu.column_name, rc.update_rule, rc.delete_rule
       FROM information_schema.referential_constraints rc
       JOIN information_schema.key_column_usage kcu ON rc.constraint_name = kcu.constraint_name
         AND rc.constraint_schema = kcu.constraint_schema
       JOIN information_schema.constraint_column_usage ccu ON rc.unique_constraint_name = ccu.constraint_name
         AND rc.unique_constraint_schema = ccu.constraint_schema
       WHERE kcu.table_schema = %s AND kcu.table_name = %s""",
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
]


def seed_method(url: str, limit: int | None) -> tuple[float, int]:
    """The seed's approach: list tables, then per-table information_schema queries."""
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY table_name",
            ("bench",),
        ).fetchall()
        if limit:
            tables = tables[:limit]
        for (name,) in tables:
            for q in SEED_QUERIES:
                conn.execute(q, ("bench", name)).fetchall()
        return time.perf_counter() - t0, len(tables)


async def ours(url: str) -> tuple[float, int, int]:
    """All tables at detail=full through the MCP tool (in-memory client), following every cursor."""
    os.environ["MATRIX_SCHEMA_MAX_BYTES"] = str(64 * 1024 * 1024)
    async with Client(build_server(url), mode="legacy") as c:
        await c.call_tool("analyze_schema", {"detail": "names", "limit": 1})  # connect once
        t0 = time.perf_counter()
        count, cursor, calls = 0, None, 0
        while True:
            args: dict[str, Any] = {"detail": "full", "schema_name": "bench", "limit": 1000}
            if cursor:
                args["cursor"] = cursor
            res = await c.call_tool("analyze_schema", args)
            calls += 1
            assert not res.is_error and res.structured_content is not None, res.content
            count += len(res.structured_content["tables"])
            cursor = res.structured_content["next_cursor"]
            if not cursor:
                break
        return time.perf_counter() - t0, count, calls


async def server_side(url: str) -> float:
    """The tool as the server runs it (MCPServer.call_tool: argument validation, catalog read, result building),
    without the Python client's jsonschema re-validation of the structured result."""
    os.environ["MATRIX_SCHEMA_MAX_BYTES"] = str(64 * 1024 * 1024)
    srv = build_server(url)
    await srv.call_tool("analyze_schema", {"detail": "names", "limit": 1})
    t0 = time.perf_counter()
    res = await srv.call_tool("analyze_schema", {"detail": "full", "schema_name": "bench", "limit": 1000})
    elapsed = time.perf_counter() - t0
    assert isinstance(res, CallToolResult) and not res.is_error and res.structured_content
    assert len(res.structured_content["tables"]) > 0
    return elapsed


async def reader_only(url: str) -> float:
    from matrix_mcp.schema.postgres_reader import PostgresReader

    r = PostgresReader(url)
    await r.read(["bench"])
    t0 = time.perf_counter()
    model = await r.read(["bench"])
    elapsed = time.perf_counter() - t0
    assert len(model.tables) > 0
    await r.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument(
        "--url",
        default=os.environ.get("MATRIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed-sample", type=int, default=50, help="tables timed with the seed method (0 = all)")
    args = ap.parse_args()
    name = f"matrix_bench_schema_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _db_url(args.url, name)
    try:
        t0 = time.perf_counter()
        populate(url, args.tables)
        print(
            f"generated {args.tables} tables (10 columns, 1 FK, 1 index each) in {time.perf_counter() - t0:.1f} s"
        )
        tool_runs = [asyncio.run(ours(url)) for _ in range(args.runs)]
        tool_s = statistics.median(r[0] for r in tool_runs)
        reader_s = statistics.median(asyncio.run(reader_only(url)) for _ in range(args.runs))
        server_s = statistics.median(asyncio.run(server_side(url)) for _ in range(args.runs))
        print(
            f"analyze_schema detail=full, {tool_runs[0][1]} tables, {tool_runs[0][2]} call(s), in-memory MCP client: "
            f"{tool_s:.3f} s (median of {args.runs}; budget 1.5 s)",
            flush=True,
        )
        print(f"  server side (MCPServer.call_tool, no client re-validation): {server_s:.3f} s", flush=True)
        print(f"  catalog read alone (5 bulk pg_catalog queries): {reader_s:.3f} s", flush=True)
        sample_s, seed_n = seed_method(url, args.seed_sample or None)
        seed_s = sample_s * args.tables / seed_n
        how = "measured" if seed_n == args.tables else f"extrapolated from {seed_n} tables ({sample_s:.2f} s)"
        print(
            f"per-table information_schema queries (seed method), {args.tables} tables x {len(SEED_QUERIES)} queries: "
            f"{seed_s:.2f} s ({how})"
        )
        print(
            f"ratio: seed method / analyze_schema end to end = {seed_s / tool_s:.0f}x ; "
            f"/ server side = {seed_s / server_s:.0f}x ; / catalog read = {seed_s / reader_s:.0f}x"
        )
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
