"""The HookStore (see hooks.py) on the PostgreSQL store: short transactions of their own on its pool,
retried on transient errors like every other call (each write here is safe to repeat: a materialize
checks the cursor, a record the lease, inserts skip ids already present)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

from psycopg import sql

from matrix_mcp import rules
from matrix_mcp.store import hooks as H
from matrix_mcp.store import rows as R
from matrix_mcp.store.hooks import DeliveryPage, DeliveryRow, OutcomeFacts, SubscriptionRow
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
    query = "SELECT * FROM hook_subscriptions WHERE id = %s"
    return H.subscription_from(await _by_id(c, query, subscription_id, rules.unknown_webhook))


async def _delivery(c: Conn, delivery_id: str) -> DeliveryRow:
    query = "SELECT * FROM hook_deliveries WHERE id = %s"
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
                "INSERT INTO hook_subscriptions (id, kind, target, description, events, run_name, config,"
                " credentials, active, cursor, created_at, updated_at)"
                " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, COALESCE(MAX(seq), 0), %s, %s FROM events",
                (*H.subscription_values(row), now, now),
            )
            return await _subscription(c, row.id)

        return await self._tx(op)

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow:
        return await self._rd(lambda c: _subscription(c, subscription_id))

    async def list_subscriptions(self, *, active_only: bool = False) -> list[SubscriptionRow]:
        async def op(c: Conn) -> list[SubscriptionRow]:
            cur = await c.execute(
                "SELECT * FROM hook_subscriptions"
                + (" WHERE active" if active_only else "")
                + " ORDER BY created_at, id"
            )
            return [H.subscription_from(r) for r in await cur.fetchall()]

        return await self._rd(op)

    async def any_active(self) -> bool:
        async def op(c: Conn) -> bool:
            cur = await c.execute("SELECT 1 FROM hook_subscriptions WHERE active LIMIT 1")
            return await cur.fetchone() is not None

        return await self._rd(op)

    async def update_subscription(
        self, subscription_id: str, *, change: H.SubscriptionChange, now: float
    ) -> SubscriptionRow:
        cols = H.change_columns(change)

        async def op(c: Conn) -> SubscriptionRow:
            await _subscription(c, subscription_id)
            if cols:
                query = sql.SQL("UPDATE hook_subscriptions SET {}, updated_at = %s WHERE id = %s").format(
                    sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(name)) for name in cols)
                )
                await c.execute(query, [*cols.values(), now, subscription_id])
            return await _subscription(c, subscription_id)

        return await self._tx(op)

    async def remove_subscription(self, subscription_id: str) -> None:
        async def op(c: Conn) -> None:
            cur = await c.execute("DELETE FROM hook_subscriptions WHERE id = %s", (subscription_id,))
            if cur.rowcount == 0:
                raise rules.unknown_webhook(subscription_id)

        await self._tx(op)

    async def lease(
        self, subscription_id: str, *, owner: str, now: float, ttl: float
    ) -> SubscriptionRow | None:
        async def op(c: Conn) -> SubscriptionRow | None:
            cur = await c.execute(
                "UPDATE hook_subscriptions SET lease_owner = %s, lease_expires_at = %s WHERE id = %s AND active"
                " AND (lease_owner IS NULL OR lease_owner = %s OR lease_expires_at <= %s) RETURNING *",
                (owner, now + ttl, subscription_id, owner, now),
            )
            row = await cur.fetchone()
            return None if row is None else H.subscription_from(row)

        return await self._tx(op)

    async def release(self, subscription_id: str, *, owner: str) -> None:
        async def op(c: Conn) -> None:
            await c.execute(
                "UPDATE hook_subscriptions SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = %s AND lease_owner = %s",
                (subscription_id, owner),
            )

        await self._tx(op)

    async def materialize(self, subscription_id: str, *, move: H.CursorMove, now: float) -> bool:
        async def op(c: Conn) -> bool:
            cur = await c.execute(
                "UPDATE hook_subscriptions SET cursor = %s WHERE id = %s AND lease_owner = %s AND cursor = %s",
                (move.cursor_to, subscription_id, move.owner, move.cursor_from),
            )
            if cur.rowcount == 0:
                return False
            if move.deliveries:
                await c.execute(
                    "INSERT INTO hook_deliveries (id, subscription_id, seq, event_type, run_name, body, status,"
                    " next_attempt_at, created_at, updated_at)"
                    " SELECT i, sub, s, t, r, b, 'pending', %s, %s, %s FROM unnest(%s::text[], %s::text[],"
                    " %s::int8[], %s::text[], %s::text[], %s::text[]) AS u(i, sub, s, t, r, b)"
                    " ON CONFLICT (id) DO NOTHING",
                    (now, now, now, *_arrays(H.delivery_values(subscription_id, d) for d in move.deliveries)),
                )
            return True

        return await self._tx(op)

    async def add_delivery(self, subscription_id: str, *, delivery: H.NewDelivery, now: float) -> DeliveryRow:
        async def op(c: Conn) -> DeliveryRow:
            await _subscription(c, subscription_id)
            await c.execute(
                "INSERT INTO hook_deliveries (id, subscription_id, seq, event_type, run_name, body, status,"
                " next_attempt_at, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s, %s)",
                (*H.delivery_values(subscription_id, delivery), now, now, now),
            )
            return await _delivery(c, delivery.id)

        return await self._tx(op)

    async def due_deliveries(self, subscription_id: str, *, now: float, limit: int) -> list[DeliveryRow]:
        async def op(c: Conn) -> list[DeliveryRow]:
            cur = await c.execute(
                "SELECT * FROM hook_deliveries WHERE subscription_id = %s AND status = 'pending'"
                " AND next_attempt_at <= %s ORDER BY next_attempt_at, seq LIMIT %s",
                (subscription_id, now, limit),
            )
            return [H.delivery_from(r) for r in await cur.fetchall()]

        return await self._rd(op)

    async def next_due(self, subscription_id: str) -> float | None:
        async def op(c: Conn) -> float | None:
            cur = await c.execute(
                "SELECT MIN(next_attempt_at) AS t FROM hook_deliveries WHERE subscription_id = %s AND status = 'pending'",
                (subscription_id,),
            )
            row = await cur.fetchone()
            return None if row is None or row["t"] is None else float(row["t"])

        return await self._rd(op)

    async def record(self, subscription_id: str, *, record: H.RoundRecord, now: float) -> bool:
        async def op(c: Conn) -> bool:
            cur = await c.execute(
                "UPDATE hook_subscriptions SET failures = %s, failing_since = %s, circuit_open_until = %s,"
                " last_success_at = %s, active = active AND %s, disabled_reason = COALESCE(%s, disabled_reason),"
                " updated_at = %s WHERE id = %s AND lease_owner = %s",
                (*H.endpoint_values(record.state), now, subscription_id, record.owner),
            )
            if cur.rowcount == 0:
                return False
            if record.results:
                await c.execute(
                    "UPDATE hook_deliveries d SET status = u.st, attempts = u.a, next_attempt_at = u.na,"
                    " last_status_code = u.code, last_error = u.err, updated_at = u.t,"
                    " delivered_at = CASE WHEN u.st = 'succeeded' THEN u.t ELSE d.delivered_at END"
                    " FROM unnest(%s::text[], %s::int4[], %s::float8[], %s::int4[], %s::text[], %s::float8[],"
                    " %s::text[]) AS u(st, a, na, code, err, t, i) WHERE d.id = u.i AND d.subscription_id = %s",
                    (*_arrays(H.result_values(r) for r in record.results), subscription_id),
                )
            if record.logs:
                await c.execute(
                    "INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status, details,"
                    " created_at) SELECT (SELECT id FROM runs WHERE name = u.r), NULL, u.t, u.a, u.s, u.d, u.c"
                    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[])"
                    " AS u(r, t, a, s, d, c)",
                    _arrays(H.log_values(g) for g in record.logs),
                )
                # events get their sequence numbers in commit order (see store/postgres/batch.py)
                await c.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
                for ev in H.log_events(record.logs):
                    await c.execute(
                        "INSERT INTO events (run_id, outcome_id, kind, data, created_at)"
                        " VALUES (NULL, NULL, %s, %s, %s)",
                        (ev.kind, ev.payload(), now),
                    )
                await c.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            return True

        return await self._tx(op)

    async def get_delivery(self, delivery_id: str) -> DeliveryRow:
        return await self._rd(lambda c: _delivery(c, delivery_id))

    async def list_deliveries(self, query: H.DeliveryQuery) -> DeliveryPage:
        after = R.decode_cursor(query.cursor, kind=R.DELIVERY_CURSOR)
        pinned = H.delivery_filter(query.subscription_id, query.status)
        limit = query.limit

        async def op(c: Conn) -> DeliveryPage:
            cur = await c.execute(
                "SELECT * FROM hook_deliveries WHERE "
                + " AND ".join(["n > %s", *(f"{column} = %s" for column, _ in pinned)])
                + " ORDER BY n LIMIT %s",
                [after, *(value for _, value in pinned), limit + 1],
            )
            return H.delivery_page(await cur.fetchall(), limit)

        return await self._rd(op)

    async def redeliver(self, target: H.Redelivery, *, now: float) -> int:
        subscription_id, delivery_id, since = target.subscription_id, target.delivery_id, target.since

        async def op(c: Conn) -> int:
            text = (
                "UPDATE hook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = %s,"
                " updated_at = %s WHERE "
            )
            if delivery_id is not None:
                cur = await c.execute(text + "id = %s", (now, now, delivery_id))
                if not cur.rowcount:
                    raise rules.unknown_delivery(delivery_id)
                return int(cur.rowcount)
            assert subscription_id is not None
            await _subscription(c, subscription_id)
            cur = await c.execute(
                text + "subscription_id = %s AND created_at >= %s", (now, now, subscription_id, since or 0.0)
            )
            return int(cur.rowcount)

        return await self._tx(op)

    async def outcome_facts(self, outcome_ids: Sequence[str]) -> dict[str, OutcomeFacts]:
        ids = list(dict.fromkeys(outcome_ids))

        async def op(c: Conn) -> dict[str, OutcomeFacts]:
            cur = await c.execute(
                "SELECT o.id, o.item, o.attempts, o.metrics, o.error_message, p.name AS package_name"
                " FROM outcomes o JOIN packages p ON p.id = o.package_id WHERE o.id = ANY(%s)",
                (ids,),
            )
            return dict(H.facts_from(r) for r in await cur.fetchall())

        return {} if not ids else await self._rd(op)

    async def get_link(self, subscription_id: str, *, ref: str) -> str | None:
        async def op(c: Conn) -> str | None:
            cur = await c.execute(
                "SELECT value FROM hook_links WHERE subscription_id = %s AND ref = %s", (subscription_id, ref)
            )
            row: Any = await cur.fetchone()
            return None if row is None else str(row["value"])

        return await self._rd(op)

    async def set_link(self, subscription_id: str, *, ref: str, value: str) -> None:
        async def op(c: Conn) -> None:
            await c.execute(
                "INSERT INTO hook_links (subscription_id, ref, value) VALUES (%s, %s, %s)"
                " ON CONFLICT (subscription_id, ref) DO UPDATE SET value = EXCLUDED.value",
                (subscription_id, ref, value),
            )

        await self._tx(op)

    async def all_credentials(self) -> list[tuple[str, str]]:
        async def op(c: Conn) -> list[tuple[str, str]]:
            cur = await c.execute("SELECT id, credentials FROM hook_subscriptions ORDER BY id")
            return [(r["id"], r["credentials"]) for r in await cur.fetchall()]

        return await self._rd(op)

    async def set_credentials(self, pairs: Sequence[tuple[str, str]], *, now: float) -> None:
        async def op(c: Conn) -> None:
            for sid, cred in pairs:
                await c.execute(
                    "UPDATE hook_subscriptions SET credentials = %s, updated_at = %s WHERE id = %s",
                    (cred, now, sid),
                )

        await self._tx(op)
