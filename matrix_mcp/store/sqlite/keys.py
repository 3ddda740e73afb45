"""The SQLite store's API keys: only their hashes are stored."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from matrix_mcp import rules
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import ApiKey
from matrix_mcp.store.sqlite import sql
from matrix_mcp.store.sqlite.connection import Database


async def create_api_key(
    db: Database, name: str, *, key_hash: str, scopes: Sequence[str], now: float
) -> ApiKey:
    def op(c: sqlite3.Connection) -> ApiKey:
        if c.execute(sql.CREATE_API_KEY_SELECT_API_KEYS, (name,)).fetchone() is not None:
            raise rules.key_exists(name)
        c.execute(
            sql.CREATE_API_KEY_INSERT_API_KEYS,
            (name, key_hash, R.dumps(list(scopes)), now),
        )
        return ApiKey(name=name, scopes=tuple(scopes), created_at=now)

    return await db.write(op)


async def list_api_keys(db: Database) -> list[ApiKey]:
    return await db.read(lambda c: [R.api_key_from(r) for r in c.execute(sql.LIST_API_KEYS_SELECT_API_KEYS)])


async def revoke_api_key(db: Database, name: str, *, now: float) -> ApiKey:
    def op(c: sqlite3.Connection) -> ApiKey:
        c.execute(sql.REVOKE_API_KEY_UPDATE_API_KEYS, (now, name))
        row = c.execute(sql.REVOKE_API_KEY_SELECT_API_KEYS, (name,)).fetchone()
        if row is None:
            raise rules.unknown_key(name)
        return R.api_key_from(row)

    return await db.write(op)


async def api_key_by_hash(db: Database, key_hash: str) -> ApiKey | None:
    def op(c: sqlite3.Connection) -> ApiKey | None:
        row = c.execute(sql.API_KEY_BY_HASH_SELECT_API_KEYS, (key_hash,)).fetchone()
        return None if row is None else R.api_key_from(row)

    return await db.read(op)


async def touch_api_key(db: Database, name: str, *, now: float) -> None:
    def op(c: sqlite3.Connection) -> None:
        # never backwards (as on PostgreSQL): processes stamp uses with their own clocks
        c.execute(
            sql.TOUCH_API_KEY_UPDATE_API_KEYS,
            (now, name),
        )

    await db.write(op)


# ---- board sessions ended by sign-out -------------------------------------------------------------


async def revoke_session(db: Database, session_id: str, *, expires_at: float, now: float) -> None:
    def op(c: sqlite3.Connection) -> None:
        c.execute(sql.FORGET_REVOKED_SESSIONS, (now,))
        c.execute(sql.REVOKE_SESSION, (session_id, expires_at))

    await db.write(op)


async def session_revoked(db: Database, session_id: str) -> bool:
    return await db.read(lambda c: c.execute(sql.SESSION_REVOKED, (session_id,)).fetchone() is not None)
