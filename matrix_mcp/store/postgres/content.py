"""The PostgreSQL store's content: inline bodies kept by hash, their garbage collection, and where
complete outcomes' files should be readable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matrix_mcp.store.params import (
    Collected,
    ContentFile,
)
from matrix_mcp.store.postgres.batch import (
    Conn,
    fetch_all,
    fetch_one,
)

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def inline_content(db: Database, sha256: str) -> bytes | None:
    async def op(c: Conn) -> bytes | None:
        row = await fetch_one(c, "SELECT body FROM contents WHERE sha256 = %s", (sha256,))
        return None if row is None else bytes(row["body"])

    return await db.read(op)


async def content_hashes(db: Database) -> set[str]:
    async def op(c: Conn) -> set[str]:
        rows = await fetch_all(
            c, "SELECT DISTINCT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"
        )
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
            "SELECT c.sha256 FROM contents c"
            " WHERE NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.content_sha256 = c.sha256)",
        )
        return [r["sha256"] for r in rows]

    candidates = await db.read(find)
    if not candidates:
        return Collected(0, 0)

    async def attempt() -> Collected:
        async with db.pool.connection() as conn, conn.transaction():
            # behind a long transaction: give up soon (retried, then Unavailable) rather than hold reports back
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            await conn.execute("LOCK TABLE contents IN SHARE ROW EXCLUSIVE MODE")
            rows = await fetch_all(
                conn,
                "DELETE FROM contents WHERE sha256 = ANY(%(c)s) AND sha256 NOT IN"
                " (SELECT content_sha256 FROM outcomes WHERE content_sha256 = ANY(%(c)s))"
                " RETURNING octet_length(body) AS size",
                {"c": candidates},
            )
        return Collected(len(rows), sum(int(r["size"]) for r in rows))

    return await db.with_retry(attempt)


async def content_files(db: Database, *, since_seq: int, limit: int) -> list[ContentFile]:
    async def op(c: Conn) -> list[ContentFile]:
        rows = await fetch_all(
            c,
            "SELECT e.seq, o.id, o.outcome_path, o.content_sha256 FROM events e JOIN outcomes o ON o.id = e.outcome_id"
            " WHERE e.seq > %s AND e.kind = 'completed' AND o.status = 'complete'"
            " AND o.content_sha256 IS NOT NULL AND o.outcome_path IS NOT NULL ORDER BY e.seq LIMIT %s",
            (since_seq, limit),
        )
        return [ContentFile(int(r["seq"]), r["id"], r["outcome_path"], r["content_sha256"]) for r in rows]

    return await db.read(op)
