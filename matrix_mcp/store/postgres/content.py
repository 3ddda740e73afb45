"""The PostgreSQL store's content: inline bodies kept by hash, their garbage collection, and where
complete outcomes' files should be readable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matrix_mcp.store.params import Collected, ContentFile, PathHolder
from matrix_mcp.store.postgres import sql
from matrix_mcp.store.postgres.batch import Conn, fetch_all, fetch_one

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def inline_content(db: Database, sha256: str) -> bytes | None:
    async def op(c: Conn) -> bytes | None:
        row = await fetch_one(c, sql.INLINE_CONTENT_SELECT_CONTENTS, (sha256,))
        return None if row is None else bytes(row["body"])

    return await db.read(op)


async def content_hashes(db: Database) -> set[str]:
    async def op(c: Conn) -> set[str]:
        rows = await fetch_all(c, sql.CONTENT_HASHES_SELECT_OUTCOMES)
        return {r["content_sha256"] for r in rows}

    return await db.read(op)


async def collect_contents(db: Database) -> Collected:
    """Orphans found by one autocommit read; deleted after the same check under a SHARE ROW EXCLUSIVE
    lock on `contents`. Every report that writes content holds ROW EXCLUSIVE on the table from its
    INSERT to its commit, so the lock waits for reports in flight (their outcomes are then visible to
    the check) and holds new ones back for the one DELETE, only when there is an orphan to delete."""

    async def find(c: Conn) -> list[str]:
        rows = await fetch_all(
            c,
            sql.COLLECT_CONTENTS_SELECT_CONTENTS,
        )
        return [r["sha256"] for r in rows]

    candidates = await db.read(find)
    if not candidates:
        return Collected(0, 0)

    async def attempt() -> Collected:
        async with db.pool.connection() as conn, conn.transaction():
            # behind a long transaction: give up soon (retried, then Unavailable) rather than hold reports back
            await conn.execute(sql.LOCK_TIMEOUT_2S)
            await conn.execute(sql.LOCK_CONTENTS)
            rows = await fetch_all(
                conn,
                sql.COLLECT_CONTENTS_DELETE_CONTENTS,
                {"c": candidates},
            )
        return Collected(len(rows), sum(int(r["size"]) for r in rows))

    return await db.with_retry(attempt)


async def content_files(db: Database, *, since_seq: int, limit: int) -> list[ContentFile]:
    async def op(c: Conn) -> list[ContentFile]:
        rows = await fetch_all(
            c,
            sql.CONTENT_FILES_SELECT_EVENTS,
            (since_seq, limit),
        )
        return [ContentFile(int(r["seq"]), r["id"], r["outcome_path"], r["content_sha256"]) for r in rows]

    return await db.read(op)


async def path_holder(db: Database, path: str) -> PathHolder | None:
    async def op(c: Conn) -> PathHolder | None:
        row = await fetch_one(c, sql.PATH_HOLDER, (path,))
        if row is None:
            return None
        return PathHolder(outcome_id=row["id"], run_id=row["run_id"], package=row["name"], item=row["item"])

    return await db.read(op)
