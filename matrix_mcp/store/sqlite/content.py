"""The SQLite store's content: inline bodies kept by hash, their garbage collection, and where complete
outcomes' files should be readable."""

from __future__ import annotations

import sqlite3

from matrix_mcp.store.params import Collected, ContentFile, PathHolder
from matrix_mcp.store.sqlite import sql
from matrix_mcp.store.sqlite.connection import Database

_GC_CHUNK = 5000  # hashes per statement (bound twice: below SQLite's limit of 32,766 parameters)


async def inline_content(db: Database, sha256: str) -> bytes | None:
    def op(c: sqlite3.Connection) -> bytes | None:
        row = c.execute(sql.INLINE_CONTENT_SELECT_CONTENTS, (sha256,)).fetchone()
        return None if row is None else bytes(row[0])

    return await db.read(op)


async def content_hashes(db: Database) -> set[str]:
    return await db.read(lambda c: {r[0] for r in c.execute(sql.CONTENT_HASHES_SELECT_OUTCOMES)})


async def collect_contents(db: Database) -> Collected:
    """Orphans found on a reader; deleted after the same check in a write transaction (the one writer:
    no report is between its content and its outcome there)."""
    candidates: list[str] = await db.read(lambda c: [r[0] for r in c.execute(sql.ORPHAN_CONTENTS)])
    if not candidates:
        return Collected(0, 0)

    def op(c: sqlite3.Connection) -> Collected:
        removed = removed_bytes = 0
        for i in range(0, len(candidates), _GC_CHUNK):
            chunk = candidates[i : i + _GC_CHUNK]
            for (size,) in c.execute(sql.delete_orphan_contents(len(chunk)), [*chunk, *chunk]).fetchall():
                removed += 1
                removed_bytes += int(size)
        return Collected(removed, removed_bytes)

    return await db.write(op)


async def content_files(db: Database, *, since_seq: int, limit: int) -> list[ContentFile]:
    def op(c: sqlite3.Connection) -> list[ContentFile]:
        rows = c.execute(
            sql.CONTENT_FILES_SELECT_EVENTS,
            (since_seq, limit),
        ).fetchall()
        return [ContentFile(int(r[0]), r[1], r[2], r[3]) for r in rows]

    return await db.read(op)


async def path_holder(db: Database, path: str) -> PathHolder | None:
    def op(c: sqlite3.Connection) -> PathHolder | None:
        row = c.execute(sql.PATH_HOLDER, (path,)).fetchone()
        return (
            None if row is None else PathHolder(outcome_id=row[0], run_id=row[1], package=row[2], item=row[3])
        )

    return await db.read(op)
