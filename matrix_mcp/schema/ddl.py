"""DDL generated from the normalized model. The text is output for the user: this module never executes it.

Applied in dependency order to an empty database, the generated statements reproduce the same model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from matrix_mcp.schema.model import ForeignKey, SchemaModel, Table


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def qualified(table: Table, dialect: str) -> str:
    if dialect == "sqlite":
        return quote_ident(table.name)
    return f"{quote_ident(table.schema_name)}.{quote_ident(table.name)}"


@dataclass
class TableDDL:
    ddl: str
    prerequisites: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)


def _fk_clause(fk: ForeignKey, dialect: str) -> str:
    cols = ", ".join(quote_ident(c) for c in fk.columns)
    ref = (
        quote_ident(fk.to_table)
        if dialect == "sqlite"
        else f"{quote_ident(fk.to_schema)}.{quote_ident(fk.to_table)}"
    )
    to = ", ".join(quote_ident(c) for c in fk.to_columns)
    text = f"FOREIGN KEY ({cols}) REFERENCES {ref} ({to})"
    if fk.match == "FULL":
        text += " MATCH FULL"
    if fk.on_update != "NO ACTION":
        text += f" ON UPDATE {fk.on_update}"
    if fk.on_delete != "NO ACTION":
        text += f" ON DELETE {fk.on_delete}"
    if fk.deferrable:
        text += " DEFERRABLE INITIALLY DEFERRED" if fk.initially_deferred else " DEFERRABLE"
    return text


def _named(name: str | None) -> str:
    return f"CONSTRAINT {quote_ident(name)} " if name else ""


def _autoindex_order(table: Table) -> dict[tuple[str, ...], int]:
    order: dict[tuple[str, ...], int] = {}
    for idx in table.indexes:
        m = re.search(r"_(\d+)$", idx.name)
        if idx.constraint and m:
            order[tuple(c or "" for c in idx.columns)] = int(m.group(1))
    return order


def sqlite_table_ddl(table: Table, include_indexes: bool = True) -> TableDDL:
    name = quote_ident(table.name)
    if table.kind != "table":
        return TableDDL(ddl=(table.source_sql or table.view_definition or "").rstrip(";") + ";")
    lines: list[str] = []
    inline_pk = False
    for col in table.columns:
        parts = [quote_ident(col.name)]
        if col.native_type:
            parts.append(col.native_type)
        if col.identity in ("rowid", "autoincrement"):
            inline_pk = True
            parts.append(_named(table.primary_key.name if table.primary_key else None) + "PRIMARY KEY")
            if col.identity == "autoincrement":
                parts.append("AUTOINCREMENT")
        elif not col.nullable:
            parts.append("NOT NULL")
        if col.default is not None:
            parts.append(f"DEFAULT {col.default}")
        if col.generated is not None:
            parts.append(
                f"GENERATED ALWAYS AS ({col.generated}) {(col.generated_storage or 'virtual').upper()}"
            )
        lines.append(" ".join(parts))
    keyed: list[tuple[int, str]] = []
    order = _autoindex_order(table)
    if table.primary_key and not inline_pk:
        cols = ", ".join(quote_ident(c) for c in table.primary_key.columns)
        keyed.append(
            (
                order.get(tuple(table.primary_key.columns), 0),
                f"{_named(table.primary_key.name)}PRIMARY KEY ({cols})",
            )
        )
    for uk in table.unique_keys:
        cols = ", ".join(quote_ident(c) for c in uk.columns)
        keyed.append((order.get(tuple(uk.columns), 10**6), f"{_named(uk.name)}UNIQUE ({cols})"))
    lines.extend(text for _, text in sorted(keyed, key=lambda kv: kv[0]))
    lines.extend(f"{_named(ck.name)}CHECK ({ck.expression})" for ck in table.checks)
    lines.extend(_named(fk.name) + _fk_clause(fk, "sqlite") for fk in table.foreign_keys)
    body = ",\n    ".join(lines)
    options = ", ".join(table.options)
    stmts = [f"CREATE TABLE {name} (\n    {body}\n){(' ' + options) if options else ''};"]
    if include_indexes:
        stmts.extend(
            ix.definition.rstrip(";") + ";" for ix in table.indexes if ix.definition and not ix.constraint
        )
    deps = sorted({fk.to_table for fk in table.foreign_keys if fk.to_table != table.name})
    return TableDDL(ddl="\n".join(stmts), depends_on=deps)


def pg_table_ddl(table: Table, model: SchemaModel, include_indexes: bool = True) -> TableDDL:
    name = qualified(table, "postgresql")
    prereq = (
        [f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.schema_name)};"]
        if table.schema_name != "public"
        else []
    )
    enum_names = {c.native_type.removesuffix("[]") for c in table.columns if c.enum_values is not None}
    for enum in model.enums:
        spelled = {
            enum.name,
            f"{enum.schema_name}.{enum.name}",
            f"{quote_ident(enum.schema_name)}.{quote_ident(enum.name)}",
        }
        if spelled & enum_names:
            values = ", ".join(quote_literal(v) for v in enum.values)
            if enum.schema_name != "public":
                prereq.append(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(enum.schema_name)};")
            prereq.append(
                f"CREATE TYPE {quote_ident(enum.schema_name)}.{quote_ident(enum.name)} AS ENUM ({values});"
            )
    stmts: list[str] = []
    deps: set[str] = set()
    if table.kind in ("view", "materialized_view"):
        kw = "MATERIALIZED VIEW" if table.kind == "materialized_view" else "VIEW"
        tail = "\nWITH NO DATA" if table.kind == "materialized_view" else ""
        stmts.append(f"CREATE {kw} {name} AS\n{table.view_definition}{tail};")
    elif table.partition_of:
        parent = next((t for t in model.tables if t.qualified == table.partition_of), None)
        parent_name = qualified(parent, "postgresql") if parent else table.partition_of
        deps.add(table.partition_of)
        text = f"CREATE TABLE {name} PARTITION OF {parent_name}\n    {table.partition_bound}"
        local = [f"{_named(ck.name)}{ck.definition}" for ck in table.checks if not ck.inherited]
        local += [
            f"{_named(fk.name)}{fk.definition or _fk_clause(fk, 'postgresql')}"
            for fk in table.foreign_keys
            if not fk.inherited
        ]
        if local:
            text = (
                f"CREATE TABLE {name} PARTITION OF {parent_name} (\n    "
                + ",\n    ".join(local)
                + f"\n)\n    {table.partition_bound}"
            )
        if table.partition_key:
            text += f"\nPARTITION BY {table.partition_key}"
        stmts.append(text + ";")
    else:
        lines: list[str] = []
        for col in table.columns:
            parts = [quote_ident(col.name)]
            if col.serial and col.native_type in ("smallint", "integer", "bigint"):
                parts.append(
                    {"smallint": "smallserial", "integer": "serial", "bigint": "bigserial"}[col.native_type]
                )
            else:
                parts.append(col.native_type)
                if col.identity:
                    parts.append(f"GENERATED {col.identity.upper()} AS IDENTITY")
                elif col.generated is not None:
                    parts.append(f"GENERATED ALWAYS AS ({col.generated}) STORED")
                elif col.default is not None:
                    parts.append(f"DEFAULT {col.default}")
            if not col.nullable:
                parts.append("NOT NULL")
            lines.append(" ".join(parts))
        if table.primary_key and not table.primary_key.inherited:
            cols = ", ".join(quote_ident(c) for c in table.primary_key.columns)
            lines.append(f"{_named(table.primary_key.name)}PRIMARY KEY ({cols})")
        for uk in table.unique_keys:
            if not uk.inherited:
                cols = ", ".join(quote_ident(c) for c in uk.columns)
                lines.append(f"{_named(uk.name)}UNIQUE ({cols})")
        lines.extend(
            f"{_named(ck.name)}{ck.definition or 'CHECK (' + ck.expression + ')'}"
            for ck in table.checks
            if not ck.inherited
        )
        for fk in table.foreign_keys:
            if not fk.inherited:
                lines.append(_named(fk.name) + _fk_clause(fk, "postgresql"))
                if (fk.to_schema, fk.to_table) != (table.schema_name, table.name):
                    deps.add(f"{fk.to_schema}.{fk.to_table}")
        kw = "FOREIGN TABLE" if table.kind == "foreign_table" else "TABLE"
        text = f"CREATE {kw} {name} (\n    " + ",\n    ".join(lines) + "\n)"
        if table.partition_key:
            text += f" PARTITION BY {table.partition_key}"
        stmts.append(text + ";")
    if include_indexes:
        for ix in table.indexes:
            if ix.definition and not ix.constraint and not ix.inherited:
                stmts.append(ix.definition.replace(" ON ONLY ", " ON ", 1) + ";")
    kind_kw = {
        "view": "VIEW",
        "materialized_view": "MATERIALIZED VIEW",
        "foreign_table": "FOREIGN TABLE",
    }.get(table.kind, "TABLE")
    if table.comment is not None:
        stmts.append(f"COMMENT ON {kind_kw} {name} IS {quote_literal(table.comment)};")
    for col in table.columns:
        if col.comment is not None:
            stmts.append(f"COMMENT ON COLUMN {name}.{quote_ident(col.name)} IS {quote_literal(col.comment)};")
    return TableDDL(ddl="\n".join(stmts), prerequisites=list(dict.fromkeys(prereq)), depends_on=sorted(deps))


def table_ddl(table: Table, model: SchemaModel, include_indexes: bool = True) -> TableDDL:
    if model.dialect == "sqlite":
        return sqlite_table_ddl(table, include_indexes)
    return pg_table_ddl(table, model, include_indexes)


def dependency_order(model: SchemaModel) -> list[Table]:
    """Tables before the tables that reference them, parents before partitions, views last (in catalog order)."""

    def key(t: Table) -> str:
        return t.name if model.dialect == "sqlite" else t.qualified

    tables = {key(t): t for t in model.tables if t.kind not in ("view", "materialized_view")}
    done: list[Table] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(k: str) -> None:
        if k in seen or k in visiting or k not in tables:
            return
        visiting.add(k)
        for dep in table_ddl(tables[k], model, False).depends_on:
            visit(dep)
        visiting.discard(k)
        seen.add(k)
        done.append(tables[k])

    for k in tables:
        visit(k)
    return done + [t for t in model.tables if t.kind in ("view", "materialized_view")]
