"""The PostgreSQL store's API keys (only their hashes are stored) and the board sessions ended by sign-out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from matrix_mcp import rules
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import ApiKey
from matrix_mcp.store.postgres import sql
from matrix_mcp.store.postgres.batch import Conn, Tx, fetch_all, fetch_one

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def create_api_key(
    db: Database, name: str, *, key_hash: str, scopes: Sequence[str], now: float
) -> ApiKey:
    async def op(tx: Tx) -> ApiKey:
        row = await tx.one(
            sql.CREATE_API_KEY_INSERT_API_KEYS,
            (name, key_hash, R.dumps(list(scopes)), now),
        )
        if row is None:
            raise rules.key_exists(name)
        tx.wrote = True
        return ApiKey(name=name, scopes=tuple(scopes), created_at=now)

    return await db.write(op, atomic=True)


async def list_api_keys(db: Database) -> list[ApiKey]:
    async def op(c: Conn) -> list[ApiKey]:
        return [R.api_key_from(r) for r in await fetch_all(c, sql.LIST_API_KEYS_SELECT_API_KEYS)]

    return await db.read(op)


async def revoke_api_key(db: Database, name: str, *, now: float) -> ApiKey:
    async def op(tx: Tx) -> ApiKey:
        row = await tx.one(
            sql.REVOKE_API_KEY_UPDATE_API_KEYS,
            (now, name),
        )
        if row is None:
            raise rules.unknown_key(name)
        tx.wrote = True
        return R.api_key_from(row)

    return await db.write(op, atomic=True)


async def api_key_by_hash(db: Database, key_hash: str) -> ApiKey | None:
    async def op(c: Conn) -> ApiKey | None:
        row = await fetch_one(c, sql.API_KEY_BY_HASH_SELECT_API_KEYS, (key_hash,))
        return None if row is None else R.api_key_from(row)

    return await db.read(op)


async def touch_api_key(db: Database, name: str, *, now: float) -> None:
    async def op(c: Conn) -> None:
        await c.execute(
            sql.TOUCH_API_KEY_UPDATE_API_KEYS,
            (now, name),
        )

    # autocommit, outside the group commit: a use stamp must not wait behind (or slow) the work loop
    await db.read(op)


async def revoke_session(db: Database, session_id: str, *, expires_at: float, now: float) -> None:
    async def op(c: Conn) -> None:
        await c.execute(sql.REVOKE_SESSION_DELETE_REVOKED_SESSIONS, (now,))
        await c.execute(
            sql.REVOKE_SESSION_INSERT_REVOKED_SESSIONS,
            (session_id, expires_at),
        )

    # autocommit, outside the group commit (as a key's use stamp): each statement stands alone
    await db.read(op)


async def session_revoked(db: Database, session_id: str) -> bool:
    async def op(c: Conn) -> bool:
        row = await fetch_one(c, sql.SESSION_REVOKED_SELECT_REVOKED_SESSIONS, (session_id,))
        return row is not None

    return await db.read(op)
