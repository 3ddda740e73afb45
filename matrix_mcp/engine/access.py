"""Access: API keys, board sessions, readiness and the outcome gauges — what the HTTP service and the
`keys` command need from the store, as use cases.

`Access` is one of the engine's use-case classes (every `Engine` is an `Access`). A server without an
engine (the database-schema analyser, which keeps its API keys in a Matrix store) opens one with
`open_access`. Keys are given and kept as hashes: hashing a key is the HTTP face's business.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from matrix_mcp.errors import Conflict
from matrix_mcp.models import Status, UsageTotals
from matrix_mcp.store.params import ApiKey
from matrix_mcp.store.protocol import Store


class Access:
    """API keys, board sessions, readiness and the gauges /metrics reads, over `store`."""

    store: Store

    def now(self) -> float:
        """The current time, in seconds since the epoch (the engine's clock, where this is an `Engine`)."""
        return time.time()

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The API key whose SHA-256 is `key_hash` (revoked or not), or None.

        Args:
            key_hash: the hex SHA-256 of the key.
        """
        return await self.store.api_key_by_hash(key_hash)

    async def touch_api_key(self, name: str, *, now: float) -> None:
        """Record a use of the key `name` (callers throttle this: it is not written per request).

        Args:
            name: the key's name.
            now: the time of the use, in seconds since the epoch.
        """
        await self.store.touch_api_key(name, now=now)

    async def has_live_api_keys(self) -> bool:
        """Whether any API key is not revoked (the HTTP service then turns authentication on)."""
        return any(k.revoked_at is None for k in await self.store.list_api_keys())

    async def list_api_keys(self) -> list[ApiKey]:
        """Every API key's record (name, scopes, times; never the key), by name."""
        return await self.store.list_api_keys()

    async def create_api_key(self, name: str, *, key_hash: str, scopes: Sequence[str]) -> ApiKey:
        """Keep a new API key (its hash) under `name` with `scopes`.

        Args:
            name: the key's name.
            key_hash: the hex SHA-256 of the key.
            scopes: the scopes the key grants.

        Raises:
            Conflict: a key of that name exists, revoked or not (field name).
        """
        return await self.store.create_api_key(name, key_hash=key_hash, scopes=scopes, now=self.now())

    async def add_given_api_key(self, name: str, *, key_hash: str, scopes: Sequence[str]) -> ApiKey | None:
        """Keep a key the operator chose under `name`; None when exactly that key is already kept under
        that name (a container's set-up step runs at every start).

        Args:
            name: the key's name.
            key_hash: the hex SHA-256 of the key.
            scopes: the scopes the key grants.

        Raises:
            Conflict: that key is kept under another name (field --key-file), it was revoked (field name),
                or another key has that name (field name).
        """
        existing = await self.store.api_key_by_hash(key_hash)
        if existing is not None:
            if existing.name != name:
                raise Conflict(f"this key is already stored as '{existing.name}'", field="--key-file")
            if existing.revoked_at is not None:
                raise Conflict(f"key '{name}' was revoked: store a new key under a new name", field="name")
            return None
        return await self.create_api_key(name, key_hash=key_hash, scopes=scopes)

    async def revoke_api_key(self, name: str) -> ApiKey:
        """Revoke the key `name` for every replica (revoking twice keeps the first time).

        Args:
            name: the key's name.

        Raises:
            NotFound: no key of that name (field name).
        """
        return await self.store.revoke_api_key(name, now=self.now())

    async def session_revoked(self, session_id: str) -> bool:
        """Whether the board session `session_id` was signed out.

        Args:
            session_id: what identifies the session (a hash of its cookie).
        """
        return await self.store.session_revoked(session_id)

    async def revoke_session(self, session_id: str, *, expires_at: float) -> None:
        """Sign a board session out for every replica until `expires_at` (sessions whose time is past
        are forgotten).

        Args:
            session_id: what identifies the session (a hash of its cookie).
            expires_at: when the session would have expired anyway, in seconds since the epoch.
        """
        await self.store.revoke_session(session_id, expires_at=expires_at, now=self.now())

    async def latest_seq(self) -> int:
        """The sequence number of the latest event (0 before the first): where a follower starts to see
        only what happens from now on. Reading it shows the store reachable and migrated (/readyz)."""
        return await self.store.latest_seq()

    async def active_status_counts(
        self, limit: int
    ) -> tuple[dict[Status, int], dict[str, dict[Status, int]]]:
        """Outcomes by status over all runs, and by status for at most `limit` package names with items
        not yet finished in runs not cancelled (the gauges of /metrics), from the counters.

        Args:
            limit: the most package names to return.
        """
        return await self.store.active_status_counts(limit)

    async def usage_totals(self) -> UsageTotals:
        """What every report over all runs spent (the /metrics token and cost counters), from the packages'
        sums; zeros before any usage (or on a store that does not sum usage yet)."""
        return (await self.store.system_metrics(None, now=self.now())).usage or UsageTotals()

    @property
    def url_for_display(self) -> str:
        """Where the store is, without its password (for messages)."""
        return self.store.url_for_display


class StoreAccess(Access):
    """`Access` over a store of its own, for a server without an engine."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    async def open(cls, url: str) -> StoreAccess:
        """Open the store at `url` (migrating it).

        Raises:
            ValueError: a database URL that is neither sqlite:///… nor postgresql://….
            Unavailable: PostgreSQL cannot be reached.
        """
        from matrix_mcp.store import open_store

        return cls(await open_store(url))

    async def close(self) -> None:
        """Close the store and its connections."""
        await self.store.close()


@asynccontextmanager
async def open_access(url: str) -> AsyncIterator[Access]:
    """`Access` to the store at `url` (migrated when opened), closed when the block ends.

    Raises:
        ValueError: a database URL that is neither sqlite:///… nor postgresql://….
        Unavailable: PostgreSQL cannot be reached.
    """
    access = await StoreAccess.open(url)
    try:
        yield access
    finally:
        await access.close()
