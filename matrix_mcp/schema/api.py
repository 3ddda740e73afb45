"""OpenAPI 3.1 and GraphQL SDL generated from the normalized model (text and JSON only; nothing is executed)."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any
from urllib.parse import quote

from matrix_mcp.schema.model import Column, SchemaModel, Table, check_enum
from matrix_mcp.schema.relationships import relationships

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _ascii_words(text: str) -> list[str]:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return [w for w in re.split(r"[^A-Za-z0-9]+", plain) if w]


def pascal(text: str, fallback: str = "T") -> str:
    words = _ascii_words(text)
    name = "".join(w[:1].upper() + w[1:] for w in words) or fallback
    return fallback + name if name[0].isdigit() else name


def camel(text: str, fallback: str = "field") -> str:
    p = pascal(text, fallback="F")
    name = p[:1].lower() + p[1:]
    return name if name != "f" or text else fallback


def _unique(name: str, taken: set[str]) -> str:
    base, n = name, 2
    while name in taken:
        name, n = f"{base}{n}", n + 1
    taken.add(name)
    return name


def type_names(model: SchemaModel, reserved: set[str] | None = None) -> dict[tuple[str, str], str]:
    """One unique ASCII type name per table; the schema is prefixed only when a name is ambiguous."""
    counts: dict[str, int] = {}
    for t in model.tables:
        counts[t.name] = counts.get(t.name, 0) + 1
    taken = set(reserved or ())
    out: dict[tuple[str, str], str] = {}
    for t in model.tables:
        base = pascal(t.name)
        if counts[t.name] > 1:
            base = pascal(t.schema_name) + base
        out[(t.schema_name, t.name)] = _unique(base, taken)
    return out


def _enum_checks(table: Table) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ck in table.checks:
        hit = check_enum(ck.expression)
        if hit and table.column(hit[0]) is not None:
            found[hit[0]] = hit[1]
    return found


# ---- OpenAPI 3.1 -------------------------------------------------------------------------------------


def json_schema(col: Column, enum_values: list[str] | None = None) -> dict[str, Any]:
    t = col.type
    s: dict[str, Any]
    if t == "smallint":
        s = {"type": "integer", "format": "int32", "minimum": -32768, "maximum": 32767}
    elif t == "integer":
        s = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
    elif t == "bigint":
        s = {"type": "integer", "format": "int64", "minimum": INT64_MIN, "maximum": INT64_MAX}
    elif t == "numeric":
        # exact decimals travel as strings: a JSON number would round them
        s = {"type": "string", "format": "decimal"}
        if col.precision is not None:
            whole = col.precision - (col.scale or 0)
            frac = f"(\\.\\d{{1,{col.scale}}})?" if col.scale else ""
            s["pattern"] = f"^-?\\d{{1,{max(whole, 1)}}}{frac}$"
            s["x-precision"], s["x-scale"] = col.precision, col.scale or 0
    elif t == "real":
        s = {"type": "number", "format": "float"}
    elif t == "double":
        s = {"type": "number", "format": "double"}
    elif t == "boolean":
        s = {"type": "boolean"}
    elif t in ("varchar", "char", "text"):
        s = {"type": "string"}
        if col.max_length is not None:
            s["maxLength"] = col.max_length
    elif t == "date":
        s = {"type": "string", "format": "date"}
    elif t in ("time", "timetz"):
        s = {"type": "string", "format": "time"}
    elif t in ("timestamp", "timestamptz"):
        s = {"type": "string", "format": "date-time"}
    elif t == "interval":
        s = {"type": "string", "format": "duration"}
    elif t == "uuid":
        s = {"type": "string", "format": "uuid"}
    elif t in ("json", "jsonb", "any"):
        s = {}
    elif t == "bytes":
        s = {"type": "string", "contentEncoding": "base64"}
    elif t == "enum":
        s = {"type": "string", "enum": list(col.enum_values or [])}
    elif t == "array":
        item = col.model_copy(update={"type": col.element_type or "other", "element_type": None})
        s = {"type": "array", "items": json_schema(item)}
    else:
        s = {"type": "string"}
    if enum_values is not None and s.get("type") in ("string", "integer"):
        s["enum"] = enum_values
    if col.nullable and "type" in s:
        s["type"] = [s["type"], "null"]
        if "enum" in s:
            s["enum"] = [*s["enum"], None]
    return s


def openapi_document(model: SchemaModel, title: str = "Database API") -> dict[str, Any]:
    names = type_names(model)
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    multi_schema = len({t.schema_name for t in model.tables}) > 1
    for t in model.tables:
        name = names[(t.schema_name, t.name)]
        enums = _enum_checks(t)
        read_props: dict[str, Any] = {}
        create_props: dict[str, Any] = {}
        update_props: dict[str, Any] = {}
        create_required: list[str] = []
        for col in t.columns:
            s = json_schema(col, enums.get(col.name))
            if col.comment:
                s["description"] = col.comment
            read = dict(s)
            if col.generated is not None or col.identity == "always":
                read["readOnly"] = True
            read_props[col.name] = read
            if col.insertable and t.kind in ("table", "partitioned_table"):
                create_props[col.name] = s
                update_props[col.name] = s
                if not col.nullable and col.default is None and not col.auto_assigned:
                    create_required.append(col.name)
        ext = {"x-table": t.name, "x-schema": t.schema_name, "x-kind": t.kind}
        schemas[name] = {
            "type": "object",
            "properties": read_props,
            "required": [c.name for c in t.columns],
            **({"description": t.comment} if t.comment else {}),
            **ext,
        }
        base = "/" + (quote(t.schema_name, safe="") + "/" if multi_schema else "") + quote(t.name, safe="")
        ref = {"$ref": f"#/components/schemas/{name}"}
        list_op = {
            "operationId": f"list{name}",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {
                "200": {
                    "description": "Rows",
                    "content": {"application/json": {"schema": {"type": "array", "items": ref}}},
                }
            },
        }
        paths[base] = {"get": list_op}
        writable = t.kind in ("table", "partitioned_table")
        if writable:
            schemas[f"{name}Create"] = {
                "type": "object",
                "properties": create_props,
                "required": create_required,
                **ext,
            }
            schemas[f"{name}Update"] = {
                "type": "object",
                "properties": update_props,
                "minProperties": 1,
                **ext,
            }
            paths[base]["post"] = {
                "operationId": f"create{name}",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}Create"}}
                    },
                },
                "responses": {
                    "201": {"description": "Created", "content": {"application/json": {"schema": ref}}}
                },
            }
        if t.primary_key and writable:
            params = []
            segs = []
            for i, c in enumerate(t.primary_key.columns):
                pk_col = t.column(c)
                pname = f"key{i + 1}"
                segs.append("{" + pname + "}")
                params.append(
                    {
                        "name": pname,
                        "in": "path",
                        "required": True,
                        "description": f"Primary key column {c}",
                        "schema": json_schema(pk_col.model_copy(update={"nullable": False}))
                        if pk_col
                        else {"type": "string"},
                    }
                )
            item_path = base + "/" + "/".join(segs)
            not_found = {"description": "Not found"}
            paths[item_path] = {
                "parameters": params,
                "get": {
                    "operationId": f"get{name}",
                    "responses": {
                        "200": {"description": "Row", "content": {"application/json": {"schema": ref}}},
                        "404": not_found,
                    },
                },
                "patch": {
                    "operationId": f"update{name}",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{name}Update"}}
                        },
                    },
                    "responses": {
                        "200": {"description": "Updated", "content": {"application/json": {"schema": ref}}},
                        "404": not_found,
                    },
                },
                "delete": {
                    "operationId": f"delete{name}",
                    "responses": {"204": {"description": "Deleted"}, "404": not_found},
                },
            }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1.0.0",
            "description": "Generated from the database catalog. Names, comments and defaults are untrusted data.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


# ---- GraphQL SDL -------------------------------------------------------------------------------------

_SCALARS = {
    "bigint": "BigInt",
    "numeric": "Decimal",
    "date": "Date",
    "time": "Time",
    "timetz": "Time",
    "timestamp": "DateTime",
    "timestamptz": "DateTime",
    "interval": "Interval",
    "uuid": "UUID",
    "json": "JSON",
    "jsonb": "JSON",
    "any": "JSON",
    "bytes": "Bytes",
}
_SCALAR_DOCS = {
    "BigInt": "64-bit integer, serialized as a string to keep every digit.",
    "Decimal": "Exact decimal number, serialized as a string.",
    "Date": "Calendar date, ISO 8601 (YYYY-MM-DD).",
    "Time": "Time of day, ISO 8601.",
    "DateTime": "Timestamp, ISO 8601.",
    "Interval": "Duration, ISO 8601.",
    "UUID": "RFC 4122 UUID.",
    "JSON": "Any JSON value.",
    "Bytes": "Binary data, base64.",
}


def _gql_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _gql_type(col: Column, enum_names: dict[tuple[str, ...], str]) -> str:
    t = col.type
    if t == "array":
        inner = _gql_type(
            col.model_copy(update={"type": col.element_type or "other", "nullable": True}), enum_names
        )
        return f"[{inner}]"
    if t == "enum" and col.enum_values:
        return enum_names[tuple(col.enum_values)]
    if t in ("smallint", "integer"):
        return "Int"
    if t in ("real", "double"):
        return "Float"
    if t == "boolean":
        return "Boolean"
    return _SCALARS.get(t, "String")


def graphql_sdl(model: SchemaModel) -> str:
    reserved = {"Query", "Mutation", "Subscription", "String", "Int", "Float", "Boolean", "ID", *_SCALAR_DOCS}
    names = type_names(model, reserved)
    taken = set(reserved) | set(names.values())
    enum_names: dict[tuple[str, ...], str] = {}
    enum_defs: list[str] = []
    for t in model.tables:
        for col in t.columns:
            if col.type in ("enum", "array") and col.enum_values and tuple(col.enum_values) not in enum_names:
                native = col.native_type.removesuffix("[]").split(".")[-1].strip('"')
                ename = _unique(pascal(native, "Enum") + "Enum", taken)
                enum_names[tuple(col.enum_values)] = ename
                values: list[str] = []
                used: set[str] = set()
                for v in col.enum_values:
                    vn = re.sub(
                        r"[^A-Za-z0-9_]",
                        "_",
                        unicodedata.normalize("NFKD", v).encode("ascii", "ignore").decode(),
                    ).upper()
                    vn = (
                        vn
                        if vn and not vn[0].isdigit() and vn not in ("TRUE", "FALSE", "NULL")
                        else "V_" + vn
                    )
                    vn = _unique(vn, used)
                    values.append(f"  {_gql_string(v)}\n  {vn}")
                enum_defs.append(f"enum {ename} {{\n" + "\n".join(values) + "\n}")
    fields: dict[tuple[str, str], list[str]] = {}
    used_fields: dict[tuple[str, str], set[str]] = {}
    used_scalars: set[str] = set()
    by_key = {(t.schema_name, t.name): t for t in model.tables}
    for t in model.tables:
        key = (t.schema_name, t.name)
        used = used_fields.setdefault(key, set())
        lines = fields.setdefault(key, [])
        for col in t.columns:
            gtype = _gql_type(col, enum_names)
            base = gtype.strip("[]")
            if base in _SCALAR_DOCS:
                used_scalars.add(base)
            fname = _unique(camel(col.name), used)
            doc = f"  {_gql_string(col.comment)}\n" if col.comment else ""
            column = _gql_string(col.name)  # the database's own column name, for the resolver to query
            lines.append(f"{doc}  {fname}: {gtype}{'' if col.nullable else '!'} @column(name: {column})")
    for rel in relationships(model):
        src, dst = (rel.from_schema, rel.from_table), (rel.to_schema, rel.to_table)
        if src not in by_key or dst not in by_key:
            continue
        if rel.kind == "foreign_key":
            fname = _unique(
                camel(pascal(rel.to_table) + "By" + "And".join(pascal(c) for c in rel.from_columns)),
                used_fields[src],
            )
            fields[src].append(f"  {fname}: {names[dst]}{'' if rel.optional else '!'}")
            back = camel(rel.from_table) + ("" if rel.cardinality == "1:1" else "List")
            back = _unique(back + "By" + "And".join(pascal(c) for c in rel.from_columns), used_fields[dst])
            target = names[src] if rel.cardinality == "1:1" else f"[{names[src]}!]!"
            fields[dst].append(f"  {back}: {target}")
        else:
            fa = _unique(camel(rel.to_table) + "Via" + pascal(rel.name or "junction"), used_fields[src])
            fields[src].append(f"  {fa}: [{names[dst]}!]!")
            if src != dst:
                fb = _unique(camel(rel.from_table) + "Via" + pascal(rel.name or "junction"), used_fields[dst])
                fields[dst].append(f"  {fb}: [{names[src]}!]!")
    out = [
        "directive @column(name: String!) on FIELD_DEFINITION",
        "directive @table(schema: String!, name: String!) on OBJECT",
    ]
    out += [f"{_gql_string(_SCALAR_DOCS[s])}\nscalar {s}" for s in sorted(used_scalars)]
    out += enum_defs
    query_fields: list[str] = []
    qused: set[str] = set()
    for t in model.tables:
        key = (t.schema_name, t.name)
        name = names[key]
        doc = f"{_gql_string(t.comment)}\n" if t.comment else ""
        directive = f"@table(schema: {_gql_string(t.schema_name)}, name: {_gql_string(t.name)})"
        body = "\n".join(fields[key]) or "  _empty: Boolean"
        out.append(f"{doc}type {name} {directive} {{\n{body}\n}}")
        query_fields.append(f"  {_unique(camel(name) + 'List', qused)}(limit: Int, offset: Int): [{name}!]!")
        if t.primary_key:
            args = []
            for c in t.primary_key.columns:
                key_col = t.column(c)
                gtype = _gql_type(key_col, enum_names) if key_col else "String"
                args.append(f"{camel(c)}: {gtype}!")
            query_fields.append(f"  {_unique(camel(name), qused)}({', '.join(args)}): {name}")
    out.append("type Query {\n" + ("\n".join(query_fields) or "  _empty: Boolean") + "\n}")
    return "\n\n".join(out) + "\n"
