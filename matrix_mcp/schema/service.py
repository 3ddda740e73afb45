"""One lazily opened, read-only reader per database URL, shared by the schema tools and resources."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio

from matrix_mcp.config import is_postgres_url, redact_url, sqlite_path
from matrix_mcp.schema.model import ConnectionAudit, RelationKind, SchemaModel, Table

if TYPE_CHECKING:
    pass


class Reader(Protocol):
    dialect: str

    async def list_relations(self, schema_name: str | None = None) -> list[tuple[str, str, RelationKind]]: ...

    async def read(
        self, schema_names: list[str] | None = None, tables: list[tuple[str, str]] | None = None
    ) -> SchemaModel: ...

    async def audit(self) -> ConnectionAudit: ...

    async def close(self) -> None: ...


class LookupError_(ValueError):
    """A name that does not resolve in the catalog; the message names the field."""


def open_reader(url: str) -> Reader:
    if is_postgres_url(url):
        from matrix_mcp.schema.postgres_reader import PostgresReader

        return PostgresReader(url)
    path = sqlite_path(url)
    if path is None:
        raise ValueError(
            f"unsupported database URL {redact_url(url)!r}: use sqlite:///path or postgresql://…"
        )
    from matrix_mcp.schema.sqlite_reader import SQLiteReader

    return SQLiteReader(path)


class SchemaService:
    def __init__(self, url_provider: Callable[[], str]) -> None:
        self._url_provider = url_provider
        self._url: str | None = None
        self._reader: Reader | None = None
        self._lock = anyio.Lock()

    @property
    def url(self) -> str:
        return redact_url(self._url or self._url_provider())

    async def reader(self) -> Reader:
        url = self._url_provider()
        if self._reader is None or url != self._url:
            if self._reader is not None:
                await self._reader.close()
            self._reader = open_reader(url)
            self._url = url
        return self._reader

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def relations(self, schema_name: str | None = None) -> list[tuple[str, str, RelationKind]]:
        async with self._lock:
            return await (await self.reader()).list_relations(schema_name)

    async def read(
        self, schema_names: list[str] | None = None, tables: list[tuple[str, str]] | None = None
    ) -> SchemaModel:
        async with self._lock:
            return await (await self.reader()).read(schema_names, tables)

    async def audit(self) -> ConnectionAudit:
        async with self._lock:
            return await (await self.reader()).audit()

    async def resolve(self, name: str, schema_name: str | None, field: str) -> tuple[str, str]:
        """(schema, table) for a user-given name, found only by catalog lookup."""
        rels = await self.relations(schema_name)
        hits = [(s, n) for s, n, _ in rels if n == name]
        if not hits and schema_name is None and "." in name:
            s, _, n = name.partition(".")
            hits = [(rs, rn) for rs, rn, _ in rels if rs == s and rn == n]
        if not hits:
            where = f" in schema {schema_name!r}" if schema_name else ""
            raise LookupError_(f"{field}: no table or view named {name!r}{where}")
        if len(hits) > 1:
            schemas = ", ".join(sorted(s for s, _ in hits))
            raise LookupError_(f"{field}: {name!r} exists in schemas {schemas}; pass schema_name")
        return hits[0]

    async def table(
        self, name: str, schema_name: str | None, field: str = "table_name"
    ) -> tuple[Table, SchemaModel]:
        key = await self.resolve(name, schema_name, field)
        model = await self.read(None, [key])
        if not model.tables:
            raise LookupError_(f"{field}: {name!r} disappeared while reading")
        table = model.tables[0]
        if table.partition_of:
            parents = [(s, n) for s, n, _ in await self.relations() if f"{s}.{n}" == table.partition_of]
            if parents:
                model = await self.read(None, [key, parents[0]])
                table = next(t for t in model.tables if (t.schema_name, t.name) == key)
        return table, model
