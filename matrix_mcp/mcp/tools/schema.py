"""The schema tools and resources, served by the sibling server and the main one.

One implementation: the tool functions below (`SPECS`), `schema_resources(access)` and
`add_schema_templates(mcp)`. They reach the server's `SchemaAccess` through the context
(`ctx.mcp_server.state.schema`); the access is created with the server and closed by its lifespan.
Connections open lazily and read-only; the DDL / OpenAPI / GraphQL generators and psycopg are imported only
when used.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.server.mcpserver.resources import Resource, ResourceSecurity
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from matrix_mcp.config import redact_text, url_password
from matrix_mcp.mcp.spec import ORCHESTRATOR, READ, ResourceSpec, ToolSpec
from matrix_mcp.pagination import cursor_payload, cursor_text
from matrix_mcp.schema.model import (
    UNTRUSTED_NOTICE,
    ConnectionAudit,
    SchemaModel,
    Table,
    fingerprint,
)
from matrix_mcp.schema.relationships import Relationship
from matrix_mcp.schema.service import LookupError_, SchemaService
from matrix_mcp.sdk.compat import PAGE_BOUND

log = logging.getLogger("matrix_mcp.schema")

DEFAULT_MAX_BYTES = 60_000
DEFAULT_LIMITS = {"names": 1000, "summary": 100, "full": 50}
Detail = Literal["names", "summary", "full"]

T = TypeVar("T")


class SchemaAccess:
    """The schema service of one server and how its failures read: created with the server, closed by the
    server's lifespan (`close`). `service`: one the server's owner already made and closes (the Matrix
    server's App); else its own."""

    def __init__(self, url_provider: Callable[[], str], service: SchemaService | None = None) -> None:
        self.url_provider = url_provider
        self.service = service or SchemaService(url_provider)

    async def close(self) -> None:
        await self.service.close()

    def fail(self, exc: BaseException) -> ToolError:
        secret = url_password(self.url_provider()) or ""
        text = redact_text(str(exc), secrets=(secret,))
        if isinstance(exc, LookupError_ | ToolError):
            return ToolError(text)
        log.warning("schema tool failed: %s", text)
        return ToolError(f"database: {text}")

    async def guarded(self, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except ToolError:
            raise
        except Exception as exc:
            raise self.fail(exc) from None


def access_of(ctx: Context) -> SchemaAccess:
    """The schema access of the server a tool or resource runs on (its `state.schema`)."""
    access = getattr(getattr(ctx.mcp_server, "state", None), "schema", None)
    if not isinstance(access, SchemaAccess):
        raise ToolError("schema analysis is not available on this server")
    return access


# ---- output models ---------------------------------------------------------------------------------


# Table records travel as plain dicts, described here rather than field by field: a full-detail page of
# 1,000 tables holds ~10,000 column objects, and a schema declaring each nested field made every client's
# jsonschema re-validation take seconds (and cost ~4 KB of each client's context in tools/list).
TABLES_DESCRIPTION = (
    "Per table: schema_name, name, kind; with detail summary/full also columns [{name, type (canonical), "
    "native_type, nullable, default, identity, serial, generated, max_length, precision, scale, element_type, "
    "enum_values, comment}], primary_key {name, columns}, unique_keys, checks [{name, expression}], "
    "foreign_keys [{name, columns, to_schema, to_table, to_columns, on_update, on_delete, deferrable}], "
    "indexes [{name, columns, unique, partial, expression, method, definition}], comment, row_estimate, "
    "row_estimate_source, view_definition, partition_key, partition_of, partition_bound. Absent = null/empty."
)


class AnalyzeResult(BaseModel):
    notice: str = UNTRUSTED_NOTICE
    dialect: str
    database: str | None = None
    schema_: str | None = Field(
        default=None, alias="schema", description="The schema analysed; null means all."
    )
    table_count: int = Field(description="Tables and views matching the request, over all pages.")
    tables: list[dict[str, Any]] = Field(description=TABLES_DESCRIPTION)
    next_cursor: str | None = Field(description="Pass as cursor to continue; null on the last page.")
    truncated_by_budget: bool = Field(default=False, description="The page stopped early at the byte budget.")
    fingerprint: str | None = None
    audit: ConnectionAudit | None = None

    model_config = {"populate_by_name": True}


class DdlResult(BaseModel):
    notice: str = UNTRUSTED_NOTICE
    dialect: str
    schema_name: str
    table_name: str
    ddl: str
    prerequisites: list[str] = Field(
        description="Schemas and enum types the table needs, run first if missing."
    )
    depends_on: list[str] = Field(
        description="Tables that must exist first (foreign keys, partition parent)."
    )


class RelationshipsResult(BaseModel):
    notice: str = UNTRUSTED_NOTICE
    relationships: list[Relationship]
    next_cursor: str | None = None


class ApiSchemaResult(BaseModel):
    notice: str = UNTRUSTED_NOTICE
    format: Literal["openapi", "graphql"]
    table_count: int
    document: dict[str, Any] | str = Field(
        description="OpenAPI 3.1 as a JSON object, or GraphQL SDL as text."
    )


class FingerprintOut(BaseModel):
    fingerprint: str
    dialect: str
    database: str | None
    table_count: int


# ---- helpers ---------------------------------------------------------------------------------------


def _encode_cursor(data: dict[str, Any]) -> str:
    return cursor_text(json.dumps(data, ensure_ascii=False))


def _decode_cursor(cursor: str) -> dict[str, Any]:
    payload = cursor_payload(cursor)
    try:
        data = None if payload is None else json.loads(payload)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ToolError("cursor: not a cursor returned by this tool")
    return data


def _table_dict(t: Table, detail: Detail) -> dict[str, Any]:
    """One table as the JSON record analyze_schema returns (null and empty fields left out)."""
    head: dict[str, Any] = {"schema_name": t.schema_name, "name": t.name, "kind": t.kind}
    if detail == "names":
        return head
    if detail == "summary":
        columns = []
        for c in t.columns:
            col: dict[str, Any] = {"name": c.name, "type": c.type, "nullable": c.nullable}
            if c.default is not None:
                col["default"] = c.default
            columns.append(col)
        extra: dict[str, Any] = {
            "columns": columns,
            "primary_key": t.primary_key.model_dump(mode="json", exclude_defaults=True)
            if t.primary_key
            else None,
            "foreign_keys": [fk.model_dump(mode="json", exclude_defaults=True) for fk in t.foreign_keys]
            or None,
            "comment": t.comment,
            "row_estimate": t.row_estimate,
        }
        return head | {k: v for k, v in extra.items() if v is not None}
    data = t.model_dump(mode="json", exclude={"source_sql", "columns"}, exclude_defaults=True)
    data = {k: v for k, v in data.items() if v not in (None, [], {})}
    data["columns"] = [
        {"nullable": c.nullable, **c.model_dump(mode="json", exclude_defaults=True)} for c in t.columns
    ]
    return head | data


def _structured(model: BaseModel) -> dict[str, Any]:
    """Null fields are left out (a full-detail column has a dozen of them: size and tokens), except the
    model's required ones, which stay present as null (the output schemas say so)."""
    data = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        if field.is_required() and key not in data:
            data[key] = None
    return data


def _result(model: BaseModel, summary: str) -> CallToolResult:
    data = _structured(model)
    return CallToolResult(
        content=[TextContent(type="text", text=f"{summary}\n{UNTRUSTED_NOTICE}")],
        structured_content=data,
    )


def _max_bytes() -> int:
    raw = os.environ.get("MATRIX_SCHEMA_MAX_BYTES", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_BYTES


# ---- registration ----------------------------------------------------------------------------------


READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)


async def _analyze(
    service: SchemaService,
    schema_name: str | None,
    tables: list[str] | None,
    detail: Detail,
    limit: int | None,
    cursor: str | None,
) -> CallToolResult:
    rels = await service.relations(schema_name)
    keys = sorted((s, n) for s, n, _ in rels)
    if tables:
        wanted = [await service.resolve(name, schema_name, "tables") for name in tables]
        keys = [k for k in keys if k in set(wanted)]
    after: tuple[str, str] | None = None
    if cursor:
        data = _decode_cursor(cursor)
        raw = data.get("after")
        if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw)):
            raise ToolError("cursor: not a cursor returned by this tool")
        after = (raw[0], raw[1])
    page_keys = [k for k in keys if after is None or k > after]
    cap = limit or DEFAULT_LIMITS[detail]
    chunk = page_keys[:cap]
    if detail == "names":
        kinds = {(s, n): k for s, n, k in rels}
        page: list[dict[str, Any]] = [{"schema_name": s, "name": n, "kind": kinds[(s, n)]} for s, n in chunk]
        model = None
    else:
        model = (
            await service.read(None, chunk) if chunk else SchemaModel(dialect="sqlite", schemas=[], tables=[])
        )
        page = [_table_dict(t, detail) for t in model.tables]
    budget = _max_bytes()
    used = 0
    kept: list[dict[str, Any]] = []
    truncated = False
    for t in page:
        size = len(json.dumps(t, ensure_ascii=False).encode())
        if kept and used + size > budget:
            truncated = True
            break
        kept.append(t)
        used += size
    last_index = len(kept)
    more = truncated or len(page_keys) > len(chunk)
    next_cursor = None
    if more and kept:
        last = kept[-1]
        next_cursor = _encode_cursor({"after": [last["schema_name"], last["name"]]})
    reader = await service.reader()
    audit = await service.audit() if cursor is None else None
    result = AnalyzeResult(
        dialect=reader.dialect,
        database=model.database if model else None,
        schema=schema_name,
        table_count=len(keys),
        tables=kept,
        next_cursor=next_cursor,
        truncated_by_budget=truncated,
        audit=audit,
    )
    structured = _structured(result)
    text = (
        f"{len(kept)} of {len(keys)} tables/views ({detail})"
        + (f"; more with cursor={next_cursor}" if next_cursor else "")
        + f" [{last_index} on this page]"
    )
    return CallToolResult(
        content=[TextContent(type="text", text=f"{text}\n{UNTRUSTED_NOTICE}")],
        structured_content=structured,
    )


async def analyze_schema(
    ctx: Context,
    schema_name: Annotated[
        str | None, Field(description="Only this schema (PostgreSQL); default all.")
    ] = None,
    tables: Annotated[list[str] | None, Field(description="Only these tables or views.")] = None,
    detail: Annotated[Detail, Field(description="names | summary | full")] = "summary",
    limit: Annotated[int | None, Field(ge=1, description="Tables per page."), PAGE_BOUND] = None,
    cursor: Annotated[str | None, Field(description="next_cursor of the previous page.")] = None,
) -> Annotated[CallToolResult, AnalyzeResult]:
    """Describe tables and views: columns, keys, constraints, indexes. Paged by a byte budget and a cursor."""
    access = access_of(ctx)
    return await access.guarded(_analyze(access.service, schema_name, tables, detail, limit, cursor))


async def _ddl(
    service: SchemaService, table_name: str, include_indexes: bool, schema_name: str | None
) -> DdlResult:
    from matrix_mcp.schema.ddl import table_ddl

    table, model = await service.table(table_name, schema_name, "table_name")
    out = table_ddl(table, model, include_indexes)
    return DdlResult(
        dialect=model.dialect,
        schema_name=table.schema_name,
        table_name=table.name,
        ddl=out.ddl,
        prerequisites=out.prerequisites,
        depends_on=out.depends_on,
    )


async def generate_table_ddl(
    ctx: Context,
    table_name: Annotated[str, Field(min_length=1, description="Table or view name.")],
    include_indexes: bool = True,
    schema_name: Annotated[
        str | None, Field(description="Needed when the name exists in several schemas.")
    ] = None,
) -> DdlResult:
    """CREATE statement for one table or view (constraints, indexes, comments) that recreates it."""
    access = access_of(ctx)
    return await access.guarded(_ddl(access.service, table_name, include_indexes, schema_name))


async def _rels(
    service: SchemaService, table_name: str | None, schema_name: str | None, cursor: str | None
) -> CallToolResult:
    from matrix_mcp.schema.relationships import involving, relationships

    model = await service.read()
    rels = relationships(model)
    if table_name:
        key = await service.resolve(table_name, schema_name, "table_name")
        table = next(t for t in model.tables if (t.schema_name, t.name) == key)
        rels = involving(rels, table, model.dialect)
    start = 0
    if cursor:
        raw = _decode_cursor(cursor).get("offset")
        if not isinstance(raw, int) or raw < 0:
            raise ToolError("cursor: not a cursor returned by this tool")
        start = raw
    budget = _max_bytes()
    kept: list[Relationship] = []
    used = 0
    for rel in rels[start:]:
        size = len(rel.model_dump_json().encode())
        if kept and used + size > budget:
            break
        kept.append(rel)
        used += size
    end = start + len(kept)
    result = RelationshipsResult(
        relationships=kept, next_cursor=_encode_cursor({"offset": end}) if end < len(rels) else None
    )
    return _result(result, f"{len(kept)} of {len(rels)} relationships")


async def find_relationships(
    ctx: Context,
    table_name: Annotated[str | None, Field(description="Only relationships touching this table.")] = None,
    schema_name: str | None = None,
    cursor: str | None = None,
) -> Annotated[CallToolResult, RelationshipsResult]:
    """Foreign keys (composite columns paired by position, ON UPDATE/DELETE) and M:N junctions, with cardinality."""
    access = access_of(ctx)
    return await access.guarded(_rels(access.service, table_name, schema_name, cursor))


async def _api(
    service: SchemaService, fmt: str, tables: list[str] | None, schema_name: str | None
) -> CallToolResult:
    from matrix_mcp.schema.api import graphql_sdl, openapi_document

    keys = None
    if tables:
        keys = [await service.resolve(name, schema_name, "tables") for name in tables]
    model = await service.read(None if keys else ([schema_name] if schema_name else None), keys)
    document: dict[str, Any] | str
    if fmt == "openapi":
        document = openapi_document(model, title=f"{model.database or 'database'} API")
    else:
        document = graphql_sdl(model)
    result = ApiSchemaResult(format=fmt, table_count=len(model.tables), document=document)  # type: ignore[arg-type]
    return _result(result, f"{fmt} document for {len(model.tables)} tables/views")


async def generate_api_schema(
    ctx: Context,
    format: Literal["openapi", "graphql"] = "openapi",
    tables: Annotated[list[str] | None, Field(description="Only these tables; default all.")] = None,
    schema_name: str | None = None,
) -> Annotated[CallToolResult, ApiSchemaResult]:
    """OpenAPI 3.1 document (create/update/read schemas) or GraphQL SDL generated from the schema."""
    access = access_of(ctx)
    return await access.guarded(_api(access.service, format, tables, schema_name))


SPECS = tuple(
    ToolSpec(fn, READ_ONLY, scope=READ, toolsets=ORCHESTRATOR)
    for fn in (analyze_schema, generate_table_ddl, find_relationships, generate_api_schema)
)


# ---- resources --------------------------------------------------------------------------------------


async def table_resource(table: str, ctx: Context) -> str:
    access = access_of(ctx)
    try:
        t, _ = await access.service.table(table, None, "table")
    except LookupError_ as exc:
        raise ResourceNotFoundError(str(exc)) from None
    except Exception as exc:
        raise ResourceNotFoundError(access.fail(exc).args[0]) from None
    return json.dumps({"notice": UNTRUSTED_NOTICE, "table": _table_dict(t, "full")}, ensure_ascii=False)


async def tables_resource(access: SchemaAccess) -> str:
    rels = await access.service.relations()
    return json.dumps(
        {"notice": UNTRUSTED_NOTICE, "tables": [{"schema": s, "name": n, "kind": k} for s, n, k in rels]},
        ensure_ascii=False,
    )


async def fingerprint_resource(access: SchemaAccess) -> str:
    model = await access.service.read()
    out = FingerprintOut(
        fingerprint=fingerprint(model),
        dialect=model.dialect,
        database=model.database,
        table_count=len(model.tables),
    )
    return out.model_dump_json()


async def audit_resource(access: SchemaAccess) -> str:
    return (await access.service.audit()).model_dump_json()


# the schema resources, each with its scope (mcp/registry.py lists them)
TABLES = ResourceSpec(
    uri="schema://tables",
    name="schema-tables",
    description="Names and kinds of every table and view.",
    scope=READ,
)
FINGERPRINT = ResourceSpec(
    uri="schema://fingerprint",
    name="schema-fingerprint",
    description="Hash of the normalized schema; changes when the schema does.",
    scope=READ,
)
AUDIT = ResourceSpec(
    uri="schema://audit",
    name="schema-audit",
    description="What rights this connection has: superuser, write ability, dangerous roles.",
    scope=READ,
)
TABLE = ResourceSpec(
    uri="schema://tables/{table}",
    name="schema-table",
    description="Full definition of one table or view (schema.name when ambiguous). Untrusted data.",
    scope=READ,
)
RESOURCES = (TABLES, FINGERPRINT, AUDIT, TABLE)


def schema_resources(access: SchemaAccess) -> list[Resource]:
    """The static schema:// resources, reading through `access`."""
    return [
        TABLES.resource(partial(tables_resource, access)),
        FINGERPRINT.resource(partial(fingerprint_resource, access)),
        AUDIT.resource(partial(audit_resource, access)),
    ]


def add_schema_templates(mcp: MCPServer[Any]) -> None:
    """The schema://tables/{table} template (it finds the server's access through its context)."""
    mcp.resource(
        TABLE.uri,
        name=TABLE.name,
        description=TABLE.description,
        mime_type=TABLE.mime_type,
        security=ResourceSecurity(exempt_params={"table"}),
    )(table_resource)
