"""The HookStore (see hooks.py) on the PostgreSQL store: short transactions of their own on its pool,
retried on transient errors like every other call (each write here is safe to repeat: a materialize
checks the cursor, a record the lease, inserts skip ids already present)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

from matrix_mcp import rules
from matrix_mcp.pagination import DELIVERY_CURSOR, keyset_args
from matrix_mcp.store import hooks as H
from matrix_mcp.store.hooks import DeliveryPage, DeliveryRow, OutcomeFacts, SubscriptionRow
from matrix_mcp.store.postgres import sql
from matrix_mcp.store.postgres.migrations import EVENTS_LOCK, NOTIFY_CHANNEL

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.batch import Conn
    from matrix_mcp.store.postgres.connection import Database

T = TypeVar("T")


def _arrays(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows of values as one list per column (the arrays an `unnest` reads)."""
    table = list(rows)
    return [list(column) for column in zip(*table, strict=True)] if table else []


async def _by_id(c: Conn, query: LiteralString, key: str, missing: Callable[[str], Exception]) -> Any:
    row = await (await c.execute(query, (key,))).fetchone()
    if row is None:
        raise missing(key)
    return row


async def _subscription(c: Conn, subscription_id: str) -> SubscriptionRow:
    query = sql.HOOKS_SUBSCRIPTION_BY_ID
    return H.subscription_from(await _by_id(c, query, subscription_id, rules.unknown_webhook))


async def _delivery(c: Conn, delivery_id: str) -> DeliveryRow:
    query = sql.HOOKS_DELIVERY_BY_ID
    return H.delivery_from(await _by_id(c, query, delivery_id, rules.unknown_delivery))


class PostgresHooks:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def _tx(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        async def attempt() -> T:
            async with self._db.pool.connection() as conn, conn.transaction():
                return await fn(conn)

        return await self._db.with_retry(attempt)

    async def _rd(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        return await self._db.read(fn)

    async def add_subscription(self, row: SubscriptionRow, *, now: float) -> SubscriptionRow:
        async def op(c: Conn) -> SubscriptionRow:
            await c.execute(
                sql.HOOKS_INSERT_SUBSCRIPTION,
                (*H.subscription_values(row), now, now),
            )
            return await _subscription(c, row.id)

        return await self._tx(op)

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow:
        return await self._rd(lambda c: _subscription(c, subscription_id))

    async def list_subscriptions(self, *, active_only: bool = False) -> list[SubscriptionRow]:
        async def op(c: Conn) -> list[SubscriptionRow]:
            cur = await c.execute(sql.HOOKS_ACTIVE_SUBSCRIPTIONS if active_only else sql.HOOKS_SUBSCRIPTIONS)
            return [H.subscription_from(r) for r in await cur.fetchall()]

        return await self._rd(op)

    async def any_active(self) -> bool:
        async def op(c: Conn) -> bool:
            cur = await c.execute(sql.HOOKS_ANY_ACTIVE)
            return await cur.fetchone() is not None

        return await self._rd(op)

    async def update_subscription(
        self, subscription_id: str, *, change: H.SubscriptionChange, now: float
    ) -> SubscriptionRow:
        cols = H.change_columns(change)

        async def op(c: Conn) -> SubscriptionRow:
            await _subscription(c, subscription_id)
            if cols:
                await c.execute(
                    sql.hooks_update_subscription(tuple(cols)), [*cols.values(), now, subscription_id]
                )
            return await _subscription(c, subscription_id)

        return await self._tx(op)

    async def remove_subscription(self, subscription_id: str) -> None:
        async def op(c: Conn) -> None:
            cur = await c.execute(sql.HOOKS_REMOVE_SUBSCRIPTION, (subscription_id,))
            if cur.rowcount == 0:
                raise rules.unknown_webhook(subscription_id)

        await self._tx(op)

    async def lease(
        self, subscription_id: str, *, owner: str, now: float, ttl: float
    ) -> SubscriptionRow | None:
        async def op(c: Conn) -> SubscriptionRow | None:
            cur = await c.execute(
                sql.HOOKS_LEASE,
                (owner, now + ttl, subscription_id, owner, now),
            )
            row = await cur.fetchone()
            return None if row is None else H.subscription_from(row)

        return await self._tx(op)

    async def release(self, subscription_id: str, *, owner: str) -> None:
        async def op(c: Conn) -> None:
            await c.execute(
                sql.HOOKS_RELEASE,
                (subscription_id, owner),
            )

        await self._tx(op)

    async def materialize(self, subscription_id: str, *, move: H.CursorMove, now: float) -> bool:
        async def op(c: Conn) -> bool:
            cur = await c.execute(
                sql.HOOKS_MOVE_CURSOR,
                (move.cursor_to, subscription_id, move.owner, move.cursor_from),
            )
            if cur.rowcount == 0:
                return False
            if move.deliveries:
                await c.execute(
                    sql.HOOKS_INSERT_DELIVERIES,
                    (now, now, now, *_arrays(H.delivery_values(subscription_id, d) for d in move.deliveries)),
                )
            return True

        return await self._tx(op)

    async def add_delivery(self, subscription_id: str, *, delivery: H.NewDelivery, now: float) -> DeliveryRow:
        async def op(c: Conn) -> DeliveryRow:
            await _subscription(c, subscription_id)
            await c.execute(
                sql.HOOKS_INSERT_DELIVERY,
                (*H.delivery_values(subscription_id, delivery), now, now, now),
            )
            return await _delivery(c, delivery.id)

        return await self._tx(op)

    async def due_deliveries(self, subscription_id: str, *, now: float, limit: int) -> list[DeliveryRow]:
        async def op(c: Conn) -> list[DeliveryRow]:
            cur = await c.execute(
                sql.HOOKS_DUE_DELIVERIES,
                (subscription_id, now, limit),
            )
            return [H.delivery_from(r) for r in await cur.fetchall()]

        return await self._rd(op)

    async def next_due(self, subscription_id: str) -> float | None:
        async def op(c: Conn) -> float | None:
            cur = await c.execute(
                sql.HOOKS_NEXT_DUE,
                (subscription_id,),
            )
            row = await cur.fetchone()
            return None if row is None or row["t"] is None else float(row["t"])

        return await self._rd(op)

    async def record(self, subscription_id: str, *, record: H.RoundRecord, now: float) -> bool:
        async def op(c: Conn) -> bool:
            cur = await c.execute(
                sql.HOOKS_RECORD_ENDPOINT,
                (*H.endpoint_values(record.state), now, subscription_id, record.owner),
            )
            if cur.rowcount == 0:
                return False
            if record.results:
                await c.execute(
                    sql.HOOKS_RECORD_RESULTS,
                    (*_arrays(H.result_values(r) for r in record.results), subscription_id),
                )
            if record.logs:
                await c.execute(
                    sql.HOOKS_INSERT_CALL_LOGS,
                    _arrays(H.log_values(g) for g in record.logs),
                )
                # events get their sequence numbers in commit order (see store/postgres/batch.py)
                await c.execute(sql.XACT_LOCK, (EVENTS_LOCK,))
                for ev in H.log_events(record.logs):
                    await c.execute(
                        sql.HOOKS_INSERT_SYSTEM_EVENT,
                        (ev.kind, ev.payload(), now),
                    )
                await c.execute(sql.NOTIFY, (NOTIFY_CHANNEL,))
            return True

        return await self._tx(op)

    async def get_delivery(self, delivery_id: str) -> DeliveryRow:
        return await self._rd(lambda c: _delivery(c, delivery_id))

    async def list_deliveries(self, query: H.DeliveryQuery) -> DeliveryPage:
        pinned = H.delivery_filter(query.subscription_id, query.status)
        columns, args = keyset_args(query.cursor, pinned, query.limit, kind=DELIVERY_CURSOR)

        async def op(c: Conn) -> DeliveryPage:
            cur = await c.execute(sql.hooks_deliveries_page(columns), args)
            return H.delivery_page(await cur.fetchall(), query.limit)

        return await self._rd(op)

    async def redeliver(self, target: H.Redelivery, *, now: float) -> int:
        subscription_id, delivery_id, since = target.subscription_id, target.delivery_id, target.since

        async def op(c: Conn) -> int:
            if delivery_id is not None:
                cur = await c.execute(sql.HOOKS_REDELIVER_ONE, (now, now, delivery_id))
                if not cur.rowcount:
                    raise rules.unknown_delivery(delivery_id)
                return int(cur.rowcount)
            assert subscription_id is not None
            await _subscription(c, subscription_id)
            cur = await c.execute(sql.HOOKS_REDELIVER_SINCE, (now, now, subscription_id, since or 0.0))
            return int(cur.rowcount)

        return await self._tx(op)

    async def outcome_facts(self, outcome_ids: Sequence[str]) -> dict[str, OutcomeFacts]:
        ids = list(dict.fromkeys(outcome_ids))

        async def op(c: Conn) -> dict[str, OutcomeFacts]:
            cur = await c.execute(
                sql.HOOKS_OUTCOME_FACTS,
                (ids,),
            )
            return dict(H.facts_from(r) for r in await cur.fetchall())

        return {} if not ids else await self._rd(op)

    async def get_link(self, subscription_id: str, *, ref: str) -> str | None:
        async def op(c: Conn) -> str | None:
            cur = await c.execute(sql.HOOKS_GET_LINK, (subscription_id, ref))
            row: Any = await cur.fetchone()
            return None if row is None else str(row["value"])

        return await self._rd(op)

    async def set_link(self, subscription_id: str, *, ref: str, value: str) -> None:
        async def op(c: Conn) -> None:
            await c.execute(
                sql.HOOKS_SET_LINK,
                (subscription_id, ref, value),
            )

        await self._tx(op)

    async def all_credentials(self) -> list[tuple[str, str]]:
        async def op(c: Conn) -> list[tuple[str, str]]:
            cur = await c.execute(sql.HOOKS_ALL_CREDENTIALS)
            return [(r["id"], r["credentials"]) for r in await cur.fetchall()]

        return await self._rd(op)

    async def set_credentials(self, pairs: Sequence[tuple[str, str]], *, now: float) -> None:
        async def op(c: Conn) -> None:
            for sid, cred in pairs:
                await c.execute(
                    sql.HOOKS_SET_CREDENTIALS,
                    (cred, now, sid),
                )

        await self._tx(op)
