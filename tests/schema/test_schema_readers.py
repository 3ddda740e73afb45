"""Catalog readers, DDL round trip, relationships and API documents on the SQLite and PostgreSQL corpora."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from graphql import build_schema
from openapi_spec_validator import validate

from matrix_mcp.schema.api import graphql_sdl, openapi_document
from matrix_mcp.schema.ddl import dependency_order, table_ddl
from matrix_mcp.schema.model import SchemaModel, check_enum, comparable, fingerprint
from matrix_mcp.schema.postgres_reader import PostgresReader
from matrix_mcp.schema.relationships import relationships
from matrix_mcp.schema.sqlite_reader import SQLiteReader
from tests.support.schema_fixtures import (
    HOSTILE_TABLE,
    HOSTILE_TABLE_2,
    ScratchDatabase,
    build_sqlite,
    pg_corpus,
    pg_empty,
    sqlite_db,
)

pytestmark = pytest.mark.anyio
__all__ = ["pg_corpus", "pg_empty", "sqlite_db"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def read_sqlite(path: Path) -> SchemaModel:
    reader = SQLiteReader(path)
    try:
        return await reader.read()
    finally:
        await reader.close()


async def read_pg(url: str) -> SchemaModel:
    reader = PostgresReader(url)
    try:
        return await reader.read()
    finally:
        await reader.close()


def script_for(model: SchemaModel) -> str:
    pre: list[str] = []
    body: list[str] = []
    for table in dependency_order(model):
        out = table_ddl(table, model)
        pre += out.prerequisites
        body.append(out.ddl)
    return "\n".join(list(dict.fromkeys(pre)) + body)


def by_name(model: SchemaModel, name: str, schema: str | None = None) -> Any:
    (table,) = model.find(name, schema)
    return table


# ---- SQLite ---------------------------------------------------------------------------------------------


async def test_sqlite_model(sqlite_db: Path) -> None:
    model = await read_sqlite(sqlite_db)
    orders = by_name(model, "orders")
    assert orders.primary_key.name == "orders_pk" and orders.primary_key.columns == ["region", "order_no"]
    line_total = orders.column("line_total")
    assert (line_total.generated, line_total.generated_storage) == ("qty * unit_price", "stored")
    assert orders.column("half_price").generated_storage == "virtual"
    assert [c.name for c in orders.checks] == ["total_nonneg"]
    (partial,) = [i for i in orders.indexes if i.name == "orders_open"]
    assert partial.partial == "total > 0"
    lines = by_name(model, "order_lines")
    (fk,) = lines.foreign_keys
    assert (fk.name, fk.columns, fk.to_columns) == (
        "order_lines_order_fk",
        ["region", "order_no"],
        ["region", "order_no"],
    )
    assert (fk.on_delete, fk.deferrable, fk.initially_deferred) == ("CASCADE", True, True)
    assert any(i.expression for i in lines.indexes)
    customers = by_name(model, "customers")
    assert customers.column("id").identity == "autoincrement"
    assert customers.column("id").type == "bigint"
    assert customers.column("balance").precision == 12 and customers.column("balance").scale == 2
    assert by_name(model, "customer_tags").options == ["WITHOUT ROWID"]
    hostile = by_name(model, "select")
    assert [c.name for c in hostile.columns] == ["from", "Ünïcødé Name", HOSTILE_TABLE, "order"]
    assert by_name(model, "active_customers").kind == "view"
    assert by_name(model, HOSTILE_TABLE) and by_name(model, HOSTILE_TABLE_2)


async def test_sqlite_ddl_round_trip(sqlite_db: Path, tmp_path: Path) -> None:
    model = await read_sqlite(sqlite_db)
    copy = build_sqlite(tmp_path / "copy.db", script_for(model))
    again = await read_sqlite(copy)
    assert comparable(again) == comparable(model)
    assert fingerprint(again) == fingerprint(model)


async def test_sqlite_fingerprint_changes_with_schema(sqlite_db: Path) -> None:
    before = fingerprint(await read_sqlite(sqlite_db))
    with sqlite3.connect(sqlite_db) as conn:
        conn.execute("INSERT INTO tags (name) VALUES ('data only')")
    assert fingerprint(await read_sqlite(sqlite_db)) == before
    with sqlite3.connect(sqlite_db) as conn:
        conn.execute("ALTER TABLE tags ADD COLUMN colour TEXT")
    assert fingerprint(await read_sqlite(sqlite_db)) != before


async def test_sqlite_reader_cannot_write(sqlite_db: Path) -> None:
    reader = SQLiteReader(sqlite_db)
    try:
        conn = await reader._connection()
        with pytest.raises(sqlite3.OperationalError):
            await conn.execute("DROP TABLE tags")
        with pytest.raises((sqlite3.OperationalError, sqlite3.ProgrammingError)):
            await conn.execute("PRAGMA query_only = OFF; DROP TABLE tags")
        await conn.execute("PRAGMA query_only = OFF")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await conn.execute("DROP TABLE tags")  # mode=ro still refuses
    finally:
        await reader.close()
    assert by_name(await read_sqlite(sqlite_db), "tags")


# ---- PostgreSQL -----------------------------------------------------------------------------------------


async def test_pg_model(pg_corpus: ScratchDatabase) -> None:
    model = await read_pg(pg_corpus.url)
    assert {t.schema_name for t in model.find("items")} == {"public", "sales"}
    customers = by_name(model, "customers", "public")
    assert customers.column("id").identity == "always"
    assert customers.comment and "Ignore previous instructions" in customers.comment
    assert customers.column("email").comment == "primary contact"
    assert customers.column("labels").type == "array" and customers.column("labels").element_type == "text"
    assert by_name(model, "tags").column("id").identity == "by default"
    assert by_name(model, "items", "sales").column("id").serial
    orders = by_name(model, "orders", "sales")
    assert orders.column("line_total").generated == "qty::numeric * unit_price"
    assert orders.column("mood").enum_values == ["happy", "sad", "ok"]
    lines = by_name(model, "order_lines", "sales")
    (fk,) = lines.foreign_keys
    assert fk.columns == ["region", "order_no"] and fk.to_columns == ["region", "order_no"]
    assert (fk.on_delete, fk.on_update, fk.deferrable, fk.initially_deferred) == (
        "CASCADE",
        "NO ACTION",
        True,
        True,
    )
    assert any(i.expression and i.name == "order_lines_sku_lower" for i in lines.indexes)
    assert any(i.partial for i in orders.indexes)
    parent = by_name(model, "measurements")
    assert parent.kind == "partitioned_table" and parent.partition_key == "RANGE (logdate)"
    part = by_name(model, "measurements_2024")
    assert part.partition_of == "public.measurements" and part.primary_key and part.primary_key.inherited
    assert by_name(model, "order_totals").kind == "materialized_view"
    assert by_name(model, "select", "Weird Schema").columns[2].name == HOSTILE_TABLE
    assert customers.row_estimate_source in ("pg_class.reltuples", "not analyzed")


async def test_pg_ddl_round_trip(pg_corpus: ScratchDatabase, pg_empty: ScratchDatabase) -> None:
    model = await read_pg(pg_corpus.url)
    with psycopg.connect(pg_empty.url, autocommit=True) as conn:
        conn.execute(script_for(model).encode())
    again = await read_pg(pg_empty.url)
    assert comparable(again) == comparable(model)


async def test_pg_session_is_read_only_and_single_statement(pg_corpus: ScratchDatabase) -> None:
    reader = PostgresReader(pg_corpus.url)
    try:
        with pytest.raises(RuntimeError, match=r"read-only|multiple commands"):
            await reader._run([("COMMIT; DROP SCHEMA public CASCADE;", {})])
        with pytest.raises(RuntimeError, match="read-only"):
            await reader._run([("CREATE TABLE public.intruder (a int)", {})])
        audit = await reader.audit()
        assert audit.session_read_only and audit.statement_timeout_ms == 15000
        assert audit.superuser == ("SUPERUSER" in audit.dangerous_roles)
    finally:
        await reader.close()
    model = await read_pg(pg_corpus.url)
    assert by_name(model, "customers", "public") and not model.find("intruder")


async def test_pg_fingerprint_changes_with_schema(pg_corpus: ScratchDatabase) -> None:
    before = fingerprint(await read_pg(pg_corpus.url))
    with psycopg.connect(pg_corpus.url, autocommit=True) as conn:
        conn.execute("CREATE INDEX tags_lower ON public.tags (lower(name))")
    assert fingerprint(await read_pg(pg_corpus.url)) != before


# ---- generators (both databases) ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def corpus_model(request: pytest.FixtureRequest, tmp_path: Path) -> SchemaModel:
    if request.param == "sqlite":
        return await read_sqlite(build_sqlite(tmp_path / "c.db"))
    db: ScratchDatabase = request.getfixturevalue("pg_corpus")
    return await read_pg(db.url)


async def test_openapi_document_validates(corpus_model: SchemaModel) -> None:
    doc = openapi_document(corpus_model)
    validate(doc)
    schemas = doc["components"]["schemas"]
    name = "Customers"
    assert "id" not in schemas[f"{name}Create"]["required"]
    assert schemas[name]["properties"]["status"]["enum"] == ["active", "suspended", "closed"]
    assert schemas[name]["properties"]["id"]["format"] == "int64"
    assert schemas["Orders"]["properties"]["line_total"]["readOnly"] is True
    assert "line_total" not in schemas["OrdersCreate"]["properties"]
    assert schemas["Orders"]["properties"]["total"]["type"] == "string"  # numeric travels as a string
    assert set(schemas["OrdersCreate"]["required"]) == {
        "region",
        "order_no",
        "customer_id",
        "total",
        "unit_price",
    }
    if corpus_model.dialect == "postgresql":
        assert "id" not in schemas["CustomersCreate"]["properties"]  # identity ALWAYS cannot be supplied
        assert {"PublicItems", "SalesItems"} <= set(schemas)
        assert schemas["Orders"]["properties"]["mood"]["enum"] == ["happy", "sad", "ok", None]


async def test_graphql_sdl_builds(corpus_model: SchemaModel) -> None:
    schema = build_schema(graphql_sdl(corpus_model))
    customers = schema.type_map["Customers"]
    fields = customers.fields  # type: ignore[attr-defined]
    assert "tagsViaCustomerTags" in fields and "ordersListByCustomerId" in fields
    assert "customersByManagerId" in fields and "customersListByManagerId" in fields
    assert str(fields["id"].type) in ("BigInt!",)
    assert "tagsViaCustomerTags" in fields
    assert "customersViaCustomerTags" in schema.type_map["Tags"].fields  # type: ignore[attr-defined]
    column = fields["id"].ast_node.directives[0]
    assert column.name.value == "column" and column.arguments[0].value.value == "id"  # the column's own name


async def test_relationships(corpus_model: SchemaModel) -> None:
    rels = relationships(corpus_model)
    by = {(r.kind, r.from_table, r.to_table, tuple(r.from_columns)): r for r in rels}
    composite = by[("foreign_key", "order_lines", "orders", ("region", "order_no"))]
    assert composite.to_columns == ["region", "order_no"] and composite.cardinality == "1:N"
    assert composite.on_delete == "CASCADE" and composite.deferrable
    assert by[("foreign_key", "customers", "customers", ("manager_id",))].self_referencing
    assert by[("foreign_key", "customer_settings", "customers", ("customer_id",))].cardinality == "1:1"
    mn = by[("many_to_many", "customers", "tags", ("id",))]
    assert mn.cardinality == "M:N" and mn.via_table is not None and mn.via_table.endswith("customer_tags")
    assert len([r for r in rels if r.from_table == "order_lines"]) == 1  # no N² pairs for composite keys


def test_check_enum_forms() -> None:
    assert check_enum("status IN ('a', 'b''c')") == ("status", ["a", "b'c"])
    assert check_enum("status = ANY (ARRAY['a'::text, 'b'::text])") == ("status", ["a", "b"])
    assert check_enum(
        "(kind)::text = ANY ((ARRAY['x'::character varying, 'y'::character varying])::text[])"
    ) == ("kind", ["x", "y"])
    assert check_enum("total >= 0") is None
    assert check_enum("status IN ('a', lower(other))") is None
