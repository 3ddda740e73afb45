"""The PostgreSQL store's API keys (only their hashes are stored) and the board sessions ended by sign-out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from matrix_mcp import rules
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import (
    ApiKey,
)
from matrix_mcp.store.postgres.batch import (
    Conn,
    Tx,
    fetch_all,
    fetch_one,
)

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def create_api_key(
    db: Database, name: str, *, key_hash: str, scopes: Sequence[str], now: float
) -> ApiKey:
    async def op(tx: Tx) -> ApiKey:
        row = await tx.one(
            "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (name) DO NOTHING RETURNING name",
            (name, key_hash, R.dumps(list(scopes)), now),
        )
        if row is None:
            raise rules.key_exists(name)
        tx.wrote = True
        return ApiKey(name=name, scopes=tuple(scopes), created_at=now)

    return await db.write(op, atomic=True)


async def list_api_keys(db: Database) -> list[ApiKey]:
    async def op(c: Conn) -> list[ApiKey]:
        return [R.api_key_from(r) for r in await fetch_all(c, "SELECT * FROM api_keys ORDER BY name")]

    return await db.read(op)


async def revoke_api_key(db: Database, name: str, *, now: float) -> ApiKey:
    async def op(tx: Tx) -> ApiKey:
        row = await tx.one(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE name = %s RETURNING *",
            (now, name),
        )
        if row is None:
            raise rules.unknown_key(name)
        tx.wrote = True
        return R.api_key_from(row)

    return await db.write(op, atomic=True)


async def api_key_by_hash(db: Database, key_hash: str) -> ApiKey | None:
    async def op(c: Conn) -> ApiKey | None:
        row = await fetch_one(c, "SELECT * FROM api_keys WHERE key_hash = %s", (key_hash,))
        return None if row is None else R.api_key_from(row)

    return await db.read(op)


async def touch_api_key(db: Database, name: str, *, now: float) -> None:
    async def op(c: Conn) -> None:
        await c.execute(
            "UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, 0), %s) WHERE name = %s",
            (now, name),
        )

    # autocommit, outside the group commit: a use stamp must not wait behind (or slow) the work loop
    await db.read(op)


async def revoke_session(db: Database, session_id: str, *, expires_at: float, now: float) -> None:
    async def op(c: Conn) -> None:
        await c.execute("DELETE FROM revoked_sessions WHERE expires_at < %s", (now,))
        await c.execute(
            "INSERT INTO revoked_sessions (session_id, expires_at) VALUES (%s, %s)"
            " ON CONFLICT (session_id) DO NOTHING",
            (session_id, expires_at),
        )

    # autocommit, outside the group commit (as a key's use stamp): each statement stands alone
    await db.read(op)


async def session_revoked(db: Database, session_id: str) -> bool:
    async def op(c: Conn) -> bool:
        row = await fetch_one(c, "SELECT 1 FROM revoked_sessions WHERE session_id = %s", (session_id,))
        return row is not None

    return await db.read(op)
