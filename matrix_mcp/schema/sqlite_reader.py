"""Read-only catalog reader for SQLite: a handful of table-valued pragma queries for the whole database.

The database is opened with `mode=ro` and `PRAGMA query_only`; every statement is a fixed text with
bound parameters (the table filter travels as a JSON array), so no name is ever spliced into SQL.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

import aiosqlite

from matrix_mcp.schema.model import (
    Check,
    Column,
    ConnectionAudit,
    ForeignKey,
    Index,
    Key,
    RelationKind,
    SchemaModel,
    Table,
    sqlite_canonical,
    type_params,
)
from matrix_mcp.schema.sqlite_parse import parse_create_table, tokenize

SCHEMA = "main"

_RELATIONS = """
SELECT m.type, m.name, m.sql FROM sqlite_master AS m
WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
  AND (?1 IS NULL OR m.name IN (SELECT value FROM json_each(?1)))
ORDER BY m.name
"""
_COLUMNS = """
SELECT m.name, p.cid, p.name, p.type, p."notnull", p.dflt_value, p.pk, p.hidden
FROM sqlite_master AS m, pragma_table_xinfo(m.name) AS p
WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
  AND (?1 IS NULL OR m.name IN (SELECT value FROM json_each(?1)))
ORDER BY m.name, p.cid
"""
_FKS = """
SELECT m.name, f.id, f.seq, f."table", f."from", f."to", f.on_update, f.on_delete, f."match"
FROM sqlite_master AS m, pragma_foreign_key_list(m.name) AS f
WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
  AND (?1 IS NULL OR m.name IN (SELECT value FROM json_each(?1)))
ORDER BY m.name, f.id, f.seq
"""
_INDEXES = """
SELECT m.name, il.seq, il.name, il."unique", il.origin, il.partial, s.sql
FROM sqlite_master AS m, pragma_index_list(m.name) AS il
LEFT JOIN sqlite_master AS s ON s.type = 'index' AND s.name = il.name
WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
  AND (?1 IS NULL OR m.name IN (SELECT value FROM json_each(?1)))
ORDER BY m.name, il.name
"""
_INDEX_COLUMNS = """
SELECT il.name, ix.seqno, ix.cid, ix.name
FROM sqlite_master AS m, pragma_index_list(m.name) AS il, pragma_index_xinfo(il.name) AS ix
WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND ix.key = 1
  AND (?1 IS NULL OR m.name IN (SELECT value FROM json_each(?1)))
ORDER BY il.name, ix.seqno
"""
_HAS_STAT1 = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1"
_STAT1 = """
SELECT tbl, max(CAST(substr(stat, 1, instr(stat || ' ', ' ') - 1) AS INTEGER)) FROM sqlite_stat1
WHERE (?1 IS NULL OR tbl IN (SELECT value FROM json_each(?1))) GROUP BY tbl
"""

_ACTIONS = {"NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"}


def _action(value: str | None) -> Any:
    v = (value or "NO ACTION").upper()
    return v if v in _ACTIONS else "NO ACTION"


def _partial_predicate(sql: str | None) -> str | None:
    if not sql:
        return None
    depth = 0
    for tok in tokenize(sql):
        if tok.kind == "punct" and tok.text == "(":
            depth += 1
        elif tok.kind == "punct" and tok.text == ")":
            depth -= 1
        elif depth == 0 and tok.upper == "WHERE":
            return sql[tok.end :].strip().rstrip(";").strip()
    return None


class SQLiteReader:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None

    async def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            if not self.path.exists():
                raise FileNotFoundError(f"SQLite database not found: {self.path}")
            uri = "file:" + pathname2url(str(self.path.resolve())) + "?mode=ro"
            conn = await aiosqlite.connect(uri, uri=True)
            await conn.execute("PRAGMA query_only = ON")
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _all(self, sql: str, *params: Any) -> list[Any]:
        conn = await self._connection()
        async with conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def list_relations(self, schema_name: str | None = None) -> list[tuple[str, str, RelationKind]]:
        if schema_name not in (None, SCHEMA):
            return []
        rows = await self._all(_RELATIONS, None)
        return [(SCHEMA, r[1], self._kind(r[0], r[2])) for r in rows]

    @staticmethod
    def _kind(type_: str, sql: str | None) -> RelationKind:
        if type_ == "view":
            return "view"
        if sql and re.match(r"\s*CREATE\s+VIRTUAL\s+TABLE", sql, re.IGNORECASE):
            return "virtual_table"
        return "table"

    async def read(
        self, schema_names: list[str] | None = None, tables: list[tuple[str, str]] | None = None
    ) -> SchemaModel:
        if schema_names is not None and SCHEMA not in schema_names:
            return SchemaModel(dialect="sqlite", schemas=[SCHEMA], tables=[])
        names = None if tables is None else json.dumps([n for s, n in tables if s == SCHEMA])
        relations = await self._all(_RELATIONS, names)
        columns = await self._all(_COLUMNS, names)
        fks = await self._all(_FKS, names)
        indexes = await self._all(_INDEXES, names)
        index_cols = await self._all(_INDEX_COLUMNS, names)
        estimates: dict[str, int] = {}
        if (await self._all(_HAS_STAT1, "sqlite_stat1"))[0][0]:
            estimates = {r[0]: int(r[1]) for r in await self._all(_STAT1, names) if r[1] is not None}

        cols_by: dict[str, list[Any]] = defaultdict(list)
        for r in columns:
            cols_by[r[0]].append(r)
        fks_by: dict[str, dict[int, list[Any]]] = defaultdict(lambda: defaultdict(list))
        for r in fks:
            fks_by[r[0]][r[1]].append(r)
        idx_by: dict[str, list[Any]] = defaultdict(list)
        for r in indexes:
            idx_by[r[0]].append(r)
        icols: dict[str, list[str | None]] = defaultdict(list)
        for r in index_cols:
            icols[r[0]].append(r[3] if r[2] != -2 else None)

        out: list[Table] = []
        pk_cache: dict[str, list[str]] = {}
        for r in columns:
            if r[6]:
                pk_cache.setdefault(r[0], [])
        for name, rows in cols_by.items():
            pk_cache[name] = [c[2] for c in sorted((c for c in rows if c[6]), key=lambda c: c[6])]

        for type_, name, sql in relations:
            kind = self._kind(type_, sql)
            parsed = parse_create_table(sql) if kind == "table" and sql else None
            without_rowid = bool(parsed and any("WITHOUT ROWID" in o for o in parsed.options))
            pk_cols = pk_cache.get(name, [])
            cols: list[Column] = []
            for c in cols_by.get(name, []):
                declared = c[3] or ""
                length, scale = type_params(declared)
                canonical = sqlite_canonical(declared)
                gen = parsed.generated.get(c[2]) if parsed else None
                identity = None
                rowid_alias = (
                    kind == "table"
                    and pk_cols == [c[2]]
                    and declared.upper() == "INTEGER"
                    and not without_rowid
                )
                if rowid_alias:
                    identity = "autoincrement" if parsed and c[2] in parsed.autoincrement else "rowid"
                cols.append(
                    Column(
                        name=c[2],
                        position=c[1] + 1,
                        native_type=declared,
                        type=canonical,
                        max_length=length if canonical in ("varchar", "char") else None,
                        precision=length if canonical == "numeric" else None,
                        scale=scale if canonical == "numeric" else None,
                        nullable=not (c[4] or rowid_alias),
                        default=c[5],
                        identity=identity,
                        generated=gen[0] if gen else None,
                        generated_storage=("stored" if c[7] == 3 else "virtual") if gen else None,
                    )
                )
            table = Table(schema_name=SCHEMA, name=name, kind=kind, columns=cols, source_sql=sql)
            if kind == "view" and sql:
                table.view_definition = sql
            if pk_cols and kind == "table":
                table.primary_key = Key(name=parsed.pk_name if parsed else None, columns=pk_cols)
            if parsed:
                table.options = parsed.options
                table.checks = [Check(name=n, expression=e) for n, e in parsed.checks]
            named_uniques = {tuple(cs): n for n, cs in (parsed.unique_names if parsed else [])}
            for ir in sorted(idx_by.get(name, []), key=lambda x: -x[1]):
                _, _, iname, unique, origin, partial, isql = ir
                icolumns = icols.get(iname, [])
                constraint = None
                if origin == "u":
                    cname = named_uniques.get(tuple(c or "" for c in icolumns))
                    table.unique_keys.append(Key(name=cname, columns=[c or "" for c in icolumns]))
                    constraint = cname or "unique"
                elif origin == "pk":
                    constraint = table.primary_key.name if table.primary_key else None
                    constraint = constraint or "primary key"
                table.indexes.append(
                    Index(
                        name=iname,
                        columns=icolumns,
                        unique=bool(unique),
                        primary=origin == "pk",
                        partial=_partial_predicate(isql) if partial else None,
                        expression=any(c is None for c in icolumns),
                        definition=isql,
                        constraint=constraint,
                    )
                )
            table.indexes.sort(key=lambda i: i.name)
            parsed_fks = list(parsed.fks) if parsed else []
            for _fid, frows in sorted(fks_by.get(name, {}).items(), key=lambda kv: -kv[0]):
                first = frows[0]
                from_cols = [f[4] for f in frows]
                to_cols = [f[5] for f in frows]
                if any(t is None for t in to_cols):
                    to_cols = pk_cache.get(first[3], to_cols)
                match = next(
                    (
                        p
                        for p in parsed_fks
                        if p.columns == from_cols and p.to_table.lower() == first[3].lower()
                    ),
                    None,
                )
                if match is not None:
                    parsed_fks.remove(match)
                m = (first[8] or "NONE").upper()
                table.foreign_keys.append(
                    ForeignKey(
                        name=match.name if match else None,
                        columns=from_cols,
                        to_schema=SCHEMA,
                        to_table=first[3],
                        to_columns=[t or "" for t in to_cols],
                        on_update=_action(first[6]),
                        on_delete=_action(first[7]),
                        match="FULL" if m == "FULL" else "PARTIAL" if m == "PARTIAL" else "SIMPLE",
                        deferrable=bool(match and match.deferrable),
                        initially_deferred=bool(match and match.initially_deferred),
                    )
                )
            if name in estimates:
                table.row_estimate, table.row_estimate_source = estimates[name], "sqlite_stat1"
            out.append(table)
        return SchemaModel(dialect="sqlite", database=self.path.name, schemas=[SCHEMA], tables=out)

    async def audit(self) -> ConnectionAudit:
        conn = await self._connection()
        async with conn.execute("PRAGMA query_only") as cur:
            row = await cur.fetchone()
        query_only = bool(row and row[0])
        file_writable = os.access(self.path, os.W_OK)
        notes = ["opened with mode=ro" + (" and query_only" if query_only else "")]
        if file_writable:
            notes.append("the file itself is writable by this process; this server never writes to it")
        return ConnectionAudit(
            dialect="sqlite",
            session_read_only=True,
            can_write=file_writable,
            notes=notes,
        )
