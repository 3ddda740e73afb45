"""Read-only catalog reader for PostgreSQL: five bulk pg_catalog queries per call, never one per table.

The session is opened with `default_transaction_read_only=on` and a statement timeout, every read
runs in a READ ONLY transaction, and every statement is sent with bound parameters over the
extended protocol — a multi-statement string can never run. Names are only ever parameters.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from matrix_mcp.config import redact_text, url_password
from matrix_mcp.schema.model import (
    Check,
    Column,
    ConnectionAudit,
    EnumType,
    ForeignKey,
    Index,
    Key,
    RelationKind,
    SchemaModel,
    Table,
    pg_canonical,
    type_params,
)

_SYSTEM = "n.nspname <> ALL(%(system)s::text[]) AND n.nspname !~ '^pg_(toast|temp)'"
SYSTEM_SCHEMAS = ["pg_catalog", "information_schema"]

_RELATIONS = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind, c.reltuples::float8,
       obj_description(c.oid, 'pg_class'),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid, true) END,
       pn.nspname, pc.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
LEFT JOIN pg_class pc ON pc.oid = i.inhparent
LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_SYSTEM}
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s::text[]))
  AND (%(names)s::text[] IS NULL
       OR (n.nspname, c.relname) IN (SELECT * FROM unnest(%(name_schemas)s::text[], %(names)s::text[])))
ORDER BY n.nspname, c.relname
"""

_COLUMNS = """
SELECT a.attrelid, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid, true) END,
       CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid, true) END,
       a.attgenerated, a.attidentity, col_description(a.attrelid, a.attnum),
       coalesce(bt.typname, t.typname), coalesce(bt.typtype, t.typtype), et.typname, et.typtype,
       CASE WHEN coalesce(bt.typtype, t.typtype) = 'e' THEN coalesce(bt.oid, t.oid) END,
       CASE WHEN et.typtype = 'e' THEN et.oid END,
       EXISTS (SELECT 1 FROM pg_depend dep JOIN pg_class s ON s.oid = dep.objid AND s.relkind = 'S'
               WHERE dep.refclassid = 'pg_class'::regclass AND dep.refobjid = a.attrelid
                 AND dep.refobjsubid = a.attnum AND dep.classid = 'pg_class'::regclass AND dep.deptype = 'a')
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
LEFT JOIN pg_type et ON et.oid = coalesce(bt.typelem, t.typelem) AND coalesce(bt.typcategory, t.typcategory) = 'A'
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%(oids)s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_CONSTRAINTS = """
SELECT con.conrelid, con.conname, con.contype,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o),
       fn.nspname, fc.relname, con.confupdtype, con.confdeltype, con.confmatchtype,
       con.condeferrable, con.condeferred, pg_get_constraintdef(con.oid, true),
       CASE WHEN con.contype = 'c' THEN pg_get_expr(con.conbin, con.conrelid, true) END,
       (NOT con.conislocal OR con.conparentid <> 0)
FROM pg_constraint con
LEFT JOIN pg_class fc ON fc.oid = con.confrelid
LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace
WHERE con.conrelid = ANY(%(oids)s::oid[]) AND con.contype IN ('p', 'u', 'c', 'f', 'x')
ORDER BY con.conrelid, con.conname
"""

_INDEXES = """
SELECT i.indrelid, ic.relname, i.indisunique, i.indisprimary, i.indexprs IS NOT NULL,
       pg_get_expr(i.indpred, i.indrelid, true), am.amname, pg_get_indexdef(i.indexrelid), con.conname,
       EXISTS (SELECT 1 FROM pg_inherits ih WHERE ih.inhrelid = i.indexrelid),
       ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
             WHERE k.o <= i.indnkeyatts ORDER BY k.o)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
     AND con.contype IN ('p', 'u', 'x')
WHERE i.indrelid = ANY(%(oids)s::oid[])
ORDER BY i.indrelid, ic.relname
"""

_ENUMS = """
SELECT t.oid, n.nspname, t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.oid = ANY(%(oids)s::oid[])
GROUP BY t.oid, n.nspname, t.typname
ORDER BY n.nspname, t.typname
"""

_DANGEROUS = [
    "pg_write_all_data",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
    "pg_read_all_data",
]

_AUDIT = f"""
SELECT current_user, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
       current_setting('transaction_read_only'), current_setting('statement_timeout'),
       has_database_privilege(current_database(), 'CREATE'),
       ARRAY(SELECT d.rolname FROM pg_roles d
             WHERE d.rolname = ANY(%(roles)s::text[]) AND pg_has_role(current_user, d.oid, 'MEMBER')),
       (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND {_SYSTEM}
          AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')),
       EXISTS (SELECT 1 FROM pg_namespace n WHERE {_SYSTEM} AND has_schema_privilege(n.oid, 'CREATE'))
FROM pg_roles r WHERE r.rolname = current_user
"""

_KINDS: dict[str, RelationKind] = {
    "r": "table",
    "p": "partitioned_table",
    "v": "view",
    "m": "materialized_view",
    "f": "foreign_table",
}
_FK_ACTIONS: dict[str, Any] = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}
_MATCH: dict[str, Any] = {"s": "SIMPLE", "f": "FULL", "p": "PARTIAL"}


def normalize_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+psycopg)?://", "postgresql://", url)


class PostgresReader:
    dialect = "postgresql"

    def __init__(self, url: str, statement_timeout_ms: int = 15000) -> None:
        self.url = normalize_url(url)
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: psycopg.AsyncConnection[Any] | None = None

    def _redact(self, exc: BaseException) -> str:
        return redact_text(str(exc), secrets=(url_password(self.url) or "",))

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and self._conn.closed:
            self._conn = None
        if self._conn is None:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    options=f"-c default_transaction_read_only=on -c statement_timeout={int(self.statement_timeout_ms)}",
                    application_name="matrix-schema-mcp",
                    connect_timeout=10,
                )
            except psycopg.Error as exc:
                raise ConnectionError(f"cannot connect to PostgreSQL: {self._redact(exc)}") from None
            await conn.set_read_only(True)
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _run(self, queries: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
        """Run the statements in one READ ONLY transaction, each with bound parameters."""
        conn = await self._connection()
        results: list[list[tuple[Any, ...]]] = []
        try:
            async with conn.transaction(), conn.cursor() as cur:
                for sql, params in queries:
                    await cur.execute(sql, params, prepare=True)
                    results.append(list(await cur.fetchall()))
        except psycopg.OperationalError as exc:
            await self.close()
            raise ConnectionError(f"PostgreSQL connection failed: {self._redact(exc)}") from None
        except psycopg.Error as exc:
            raise RuntimeError(f"PostgreSQL error: {self._redact(exc)}") from None
        return results

    def _relation_params(
        self, schema_names: list[str] | None, tables: list[tuple[str, str]] | None
    ) -> dict[str, Any]:
        return {
            "system": SYSTEM_SCHEMAS,
            "schemas": schema_names,
            "names": None if tables is None else [t[1] for t in tables],
            "name_schemas": None if tables is None else [t[0] for t in tables],
        }

    async def list_relations(self, schema_name: str | None = None) -> list[tuple[str, str, RelationKind]]:
        (rows,) = await self._run(
            [(_RELATIONS, self._relation_params(None if schema_name is None else [schema_name], None))]
        )
        return [(r[1], r[2], _KINDS[r[3]]) for r in rows]

    async def database_name(self) -> str:
        conn = await self._connection()
        return conn.info.dbname

    async def read(
        self, schema_names: list[str] | None = None, tables: list[tuple[str, str]] | None = None
    ) -> SchemaModel:
        (rels,) = await self._run([(_RELATIONS, self._relation_params(schema_names, tables))])
        oids = [r[0] for r in rels]
        cols, cons, idxs = await self._run(
            [(_COLUMNS, {"oids": oids}), (_CONSTRAINTS, {"oids": oids}), (_INDEXES, {"oids": oids})]
        )
        enum_oids = sorted({r[14] for r in cols if r[14]} | {r[15] for r in cols if r[15]})
        enums: dict[int, EnumType] = {}
        if enum_oids:
            (erows,) = await self._run([(_ENUMS, {"oids": enum_oids})])
            enums = {r[0]: EnumType(schema_name=r[1], name=r[2], values=list(r[3])) for r in erows}

        by_oid: dict[int, Table] = {}
        tables_out: list[Table] = []
        for oid, nsp, name, kind, reltuples, comment, viewdef, partkey, bound, pnsp, pname in rels:
            t = Table(
                schema_name=nsp,
                name=name,
                kind=_KINDS[kind],
                comment=comment,
                view_definition=viewdef.strip().rstrip(";").strip() if viewdef else None,
                partition_key=partkey,
                partition_bound=bound,
                partition_of=f"{pnsp}.{pname}" if pname else None,
            )
            if kind in ("r", "m", "p") and reltuples is not None and reltuples >= 0:
                t.row_estimate, t.row_estimate_source = int(reltuples), "pg_class.reltuples"
            elif kind in ("r", "m", "p"):
                t.row_estimate_source = "not analyzed"
            by_oid[oid] = t
            tables_out.append(t)

        for r in cols:
            (
                relid,
                attnum,
                attname,
                native,
                notnull,
                default,
                generated,
                attgenerated,
                attidentity,
                comment,
                typname,
                typtype,
                etypname,
                etyptype,
                enum_oid,
                eenum_oid,
                owns_seq,
            ) = r
            canonical = pg_canonical(typname, typtype)
            element = None
            if etypname is not None:
                element = pg_canonical(etypname, etyptype)
                canonical = "array"
            length, scale = (
                type_params(native) if canonical in ("varchar", "char", "numeric") else (None, None)
            )
            enum_type = enums.get(enum_oid or eenum_oid or 0)
            serial = bool(owns_seq and default and default.startswith("nextval("))
            by_oid[relid].columns.append(
                Column(
                    name=attname,
                    position=attnum,
                    native_type=native,
                    type=canonical,
                    max_length=length if canonical in ("varchar", "char") else None,
                    precision=length if canonical == "numeric" else None,
                    scale=scale if canonical == "numeric" else None,
                    element_type=element,
                    enum_values=list(enum_type.values) if enum_type else None,
                    nullable=not notnull,
                    default=default,
                    identity={"a": "always", "d": "by default"}.get(attidentity or ""),
                    serial=serial,
                    generated=generated,
                    generated_storage="stored" if attgenerated == "s" else None,
                    comment=comment,
                )
            )

        for r in cons:
            (
                relid,
                conname,
                contype,
                keys,
                fkeys,
                fnsp,
                frel,
                upd,
                dele,
                match,
                deferrable,
                deferred,
                cdef,
                cexpr,
                inh,
            ) = r
            t = by_oid[relid]
            if contype == "p":
                t.primary_key = Key(name=conname, columns=list(keys), inherited=inh)
            elif contype == "u":
                t.unique_keys.append(Key(name=conname, columns=list(keys), inherited=inh))
            elif contype in ("c", "x"):
                t.checks.append(Check(name=conname, expression=cexpr or cdef, definition=cdef, inherited=inh))
            elif contype == "f":
                t.foreign_keys.append(
                    ForeignKey(
                        name=conname,
                        columns=list(keys),
                        to_schema=fnsp,
                        to_table=frel,
                        to_columns=list(fkeys),
                        on_update=_FK_ACTIONS.get(upd, "NO ACTION"),
                        on_delete=_FK_ACTIONS.get(dele, "NO ACTION"),
                        match=_MATCH.get(match, "SIMPLE"),
                        deferrable=deferrable,
                        initially_deferred=deferred,
                        definition=cdef,
                        inherited=inh,
                    )
                )

        for r in idxs:
            relid, iname, unique, primary, has_exprs, pred, am, idef, conname, inherited, icols = r
            by_oid[relid].indexes.append(
                Index(
                    name=iname,
                    columns=list(icols),
                    unique=unique,
                    primary=primary,
                    partial=pred,
                    expression=bool(has_exprs),
                    method=am,
                    definition=idef,
                    constraint=conname,
                    inherited=inherited,
                )
            )

        schemas = sorted({t.schema_name for t in tables_out} | set(schema_names or []))
        return SchemaModel(
            dialect="postgresql",
            database=await self.database_name(),
            schemas=schemas,
            tables=tables_out,
            enums=sorted(enums.values(), key=lambda e: (e.schema_name, e.name)),
        )

    async def audit(self) -> ConnectionAudit:
        ((row,),) = await self._run([(_AUDIT, {"roles": _DANGEROUS, "system": SYSTEM_SCHEMAS})])
        (
            user,
            sup,
            createrole,
            createdb,
            replication,
            bypassrls,
            ro,
            timeout,
            dbcreate,
            roles,
            writable,
            schcreate,
        ) = row
        dangerous = list(roles)
        for flag, label in (
            (sup, "SUPERUSER"),
            (createrole, "CREATEROLE"),
            (createdb, "CREATEDB"),
            (replication, "REPLICATION"),
            (bypassrls, "BYPASSRLS"),
        ):
            if flag:
                dangerous.append(label)
        can_create = bool(dbcreate or schcreate)
        notes = ["every read runs in a READ ONLY transaction over the extended protocol"]
        if sup:
            notes.append("connected as a superuser: prefer a dedicated read-only role")
        timeout_ms = _timeout_ms(timeout)
        return ConnectionAudit(
            dialect="postgresql",
            user=user,
            superuser=bool(sup),
            session_read_only=ro == "on",
            can_write=bool(sup or writable or can_create),
            dangerous_roles=dangerous,
            writable_tables=int(writable),
            can_create=can_create,
            statement_timeout_ms=timeout_ms,
            notes=notes,
        )


def _timeout_ms(value: str) -> int | None:
    match = re.fullmatch(r"(\d+)\s*(ms|s|min)?", value.strip())
    if not match:
        return None
    n = int(match.group(1))
    return n * {"ms": 1, None: 1, "s": 1000, "min": 60000}[match.group(2)]
