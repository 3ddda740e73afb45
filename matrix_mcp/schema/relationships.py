"""Relationships with cardinality, derived from foreign keys and junction tables."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from matrix_mcp.schema.model import SchemaModel, Table


class Relationship(BaseModel):
    kind: Literal["foreign_key", "many_to_many"]
    name: str | None = Field(
        default=None, description="Foreign key constraint name (junction table for M:N)."
    )
    from_schema: str
    from_table: str
    from_columns: list[str]
    to_schema: str
    to_table: str
    to_columns: list[str]
    on_update: str | None = None
    on_delete: str | None = None
    deferrable: bool = False
    cardinality: Literal["1:1", "1:N", "M:N"] = Field(
        description="1:1 or 1:N (one to_table row, N from_table rows) for a foreign key; M:N through a junction."
    )
    optional: bool = Field(description="The referencing columns may be null.")
    self_referencing: bool = False
    via_table: str | None = Field(default=None, description="M:N: the junction table.")
    via_from_columns: list[str] | None = None
    via_to_columns: list[str] | None = None


def _unique_sets(t: Table) -> list[set[str]]:
    sets = [set(t.primary_key.columns)] if t.primary_key else []
    sets += [set(k.columns) for k in t.unique_keys]
    sets += [
        {c for c in i.columns if c} for i in t.indexes if i.unique and not i.partial and not i.expression
    ]
    return sets


def relationships(model: SchemaModel) -> list[Relationship]:
    out: list[Relationship] = []
    for t in model.tables:
        uniques = _unique_sets(t)
        fks = [fk for fk in t.foreign_keys if not fk.inherited]
        for fk in fks:
            cols = set(fk.columns)
            one_to_one = any(u and u <= cols for u in uniques)
            out.append(
                Relationship(
                    kind="foreign_key",
                    name=fk.name,
                    from_schema=t.schema_name,
                    from_table=t.name,
                    from_columns=fk.columns,
                    to_schema=fk.to_schema,
                    to_table=fk.to_table,
                    to_columns=fk.to_columns,
                    on_update=fk.on_update,
                    on_delete=fk.on_delete,
                    deferrable=fk.deferrable,
                    cardinality="1:1" if one_to_one else "1:N",
                    optional=any((c := t.column(n)) is not None and c.nullable for n in fk.columns),
                    self_referencing=(fk.to_schema, fk.to_table) == (t.schema_name, t.name),
                )
            )
        # a junction: two foreign keys whose columns together form the primary key (or a unique key)
        if len(fks) == 2 and t.kind in ("table", "partitioned_table"):
            a, b = fks
            both = set(a.columns) | set(b.columns)
            if not set(a.columns) & set(b.columns) and any(u == both for u in uniques):
                out.append(
                    Relationship(
                        kind="many_to_many",
                        name=t.name,
                        from_schema=a.to_schema,
                        from_table=a.to_table,
                        from_columns=a.to_columns,
                        to_schema=b.to_schema,
                        to_table=b.to_table,
                        to_columns=b.to_columns,
                        cardinality="M:N",
                        optional=False,
                        self_referencing=(a.to_schema, a.to_table) == (b.to_schema, b.to_table),
                        via_table=f"{t.schema_name}.{t.name}" if model.dialect == "postgresql" else t.name,
                        via_from_columns=a.columns,
                        via_to_columns=b.columns,
                    )
                )
    return out


def involving(rels: list[Relationship], table: Table, dialect: str) -> list[Relationship]:
    via = f"{table.schema_name}.{table.name}" if dialect == "postgresql" else table.name
    key = (table.schema_name, table.name)
    return [
        r
        for r in rels
        if (r.from_schema, r.from_table) == key or (r.to_schema, r.to_table) == key or r.via_table == via
    ]
