"""The HookStore (see hooks.py) on the SQLite store: its group-commit writer and snapshot readers."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matrix_mcp import rules
from matrix_mcp.pagination import DELIVERY_CURSOR, keyset_args
from matrix_mcp.store import hooks as H
from matrix_mcp.store.hooks import DeliveryPage, DeliveryRow, OutcomeFacts, SubscriptionRow
from matrix_mcp.store.sqlite import sql

if TYPE_CHECKING:
    from matrix_mcp.store.sqlite.connection import Database

# column names below come from this closed set only (H.change_columns); values are always bound
_CHANGEABLE = frozenset(
    {
        "events",
        "run_name",
        "target",
        "credentials",
        "description",
        "config",
        "active",
        "failures",
        "failing_since",
        "circuit_open_until",
        "disabled_reason",
    }
)


def _subscription(c: sqlite3.Connection, subscription_id: str) -> SubscriptionRow:
    row = c.execute(sql.HOOKS_SUBSCRIPTION_BY_ID, (subscription_id,)).fetchone()
    if row is None:
        raise rules.unknown_webhook(subscription_id)
    return H.subscription_from(row)


def _holds(c: sqlite3.Connection, subscription_id: str, owner: str) -> bool:
    return c.execute(sql.HOOKS_HOLDS, (subscription_id, owner)).fetchone() is not None


class SQLiteHooks:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_subscription(self, row: SubscriptionRow, *, now: float) -> SubscriptionRow:
        def op(c: sqlite3.Connection) -> SubscriptionRow:
            cursor = int(c.execute(sql.HOOKS_LATEST_SEQ).fetchone()[0])
            c.execute(
                sql.HOOKS_INSERT_SUBSCRIPTION,
                (*H.subscription_values(row), cursor, now, now),
            )
            return _subscription(c, row.id)

        return await self._db.write(op)

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow:
        return await self._db.read(lambda c: _subscription(c, subscription_id))

    async def list_subscriptions(self, *, active_only: bool = False) -> list[SubscriptionRow]:
        query = sql.HOOKS_ACTIVE_SUBSCRIPTIONS if active_only else sql.HOOKS_SUBSCRIPTIONS
        return await self._db.read(lambda c: [H.subscription_from(r) for r in c.execute(query)])

    async def any_active(self) -> bool:
        return await self._db.read(lambda c: c.execute(sql.HOOKS_ANY_ACTIVE).fetchone() is not None)

    async def update_subscription(
        self, subscription_id: str, *, change: H.SubscriptionChange, now: float
    ) -> SubscriptionRow:
        cols = H.change_columns(change)
        assert set(cols) <= _CHANGEABLE

        def op(c: sqlite3.Connection) -> SubscriptionRow:
            _subscription(c, subscription_id)
            if cols:
                c.execute(sql.hooks_update_subscription(tuple(cols)), [*cols.values(), now, subscription_id])
            return _subscription(c, subscription_id)

        return await self._db.write(op)

    async def remove_subscription(self, subscription_id: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            if c.execute(sql.HOOKS_REMOVE_SUBSCRIPTION, (subscription_id,)).rowcount == 0:
                raise rules.unknown_webhook(subscription_id)

        await self._db.write(op)

    async def lease(
        self, subscription_id: str, *, owner: str, now: float, ttl: float
    ) -> SubscriptionRow | None:
        def op(c: sqlite3.Connection) -> SubscriptionRow | None:
            taken = c.execute(
                sql.HOOKS_LEASE,
                (owner, now + ttl, subscription_id, owner, now),
            ).rowcount
            return _subscription(c, subscription_id) if taken else None

        return await self._db.write(op)

    async def release(self, subscription_id: str, *, owner: str) -> None:
        await self._db.write(
            lambda c: c.execute(
                sql.HOOKS_RELEASE,
                (subscription_id, owner),
            )
        )

    async def materialize(self, subscription_id: str, *, move: H.CursorMove, now: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            moved = c.execute(
                sql.HOOKS_MOVE_CURSOR,
                (move.cursor_to, subscription_id, move.owner, move.cursor_from),
            ).rowcount
            if not moved:
                return False
            c.executemany(
                sql.HOOKS_INSERT_DELIVERIES,
                [(*H.delivery_values(subscription_id, d), now, now, now) for d in move.deliveries],
            )
            return True

        return await self._db.write(op)

    async def add_delivery(self, subscription_id: str, *, delivery: H.NewDelivery, now: float) -> DeliveryRow:
        def op(c: sqlite3.Connection) -> DeliveryRow:
            _subscription(c, subscription_id)
            c.execute(
                sql.HOOKS_INSERT_DELIVERY,
                (*H.delivery_values(subscription_id, delivery), now, now, now),
            )
            return _delivery(c, delivery.id)

        return await self._db.write(op)

    async def due_deliveries(self, subscription_id: str, *, now: float, limit: int) -> list[DeliveryRow]:
        return await self._db.read(
            lambda c: [
                H.delivery_from(r)
                for r in c.execute(
                    sql.HOOKS_DUE_DELIVERIES,
                    (subscription_id, now, limit),
                )
            ]
        )

    async def next_due(self, subscription_id: str) -> float | None:
        def op(c: sqlite3.Connection) -> float | None:
            row = c.execute(
                sql.HOOKS_NEXT_DUE,
                (subscription_id,),
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._db.read(op)

    async def record(self, subscription_id: str, *, record: H.RoundRecord, now: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            if not _holds(c, subscription_id, record.owner):
                return False
            c.executemany(
                sql.HOOKS_RECORD_RESULT,
                [(*H.result_values(r), subscription_id) for r in record.results],
            )
            c.execute(
                sql.HOOKS_RECORD_ENDPOINT,
                (*H.endpoint_values(record.state), now, subscription_id),
            )
            if record.logs:
                c.executemany(
                    sql.HOOKS_INSERT_CALL_LOG,
                    [H.log_values(g) for g in record.logs],
                )
                for ev in H.log_events(record.logs):
                    c.execute(
                        sql.HOOKS_INSERT_SYSTEM_EVENT,
                        (ev.kind, ev.payload(), now),
                    )
            return True

        return await self._db.write(op)

    async def get_delivery(self, delivery_id: str) -> DeliveryRow:
        return await self._db.read(lambda c: _delivery(c, delivery_id))

    async def list_deliveries(self, query: H.DeliveryQuery) -> DeliveryPage:
        pinned = H.delivery_filter(query.subscription_id, query.status)
        columns, args = keyset_args(query.cursor, pinned, query.limit, kind=DELIVERY_CURSOR)

        def op(c: sqlite3.Connection) -> DeliveryPage:
            return H.delivery_page(
                c.execute(sql.hooks_deliveries_page(columns), args).fetchall(), query.limit
            )

        return await self._db.read(op)

    async def redeliver(self, target: H.Redelivery, *, now: float) -> int:
        subscription_id, delivery_id, since = target.subscription_id, target.delivery_id, target.since

        def op(c: sqlite3.Connection) -> int:
            if delivery_id is not None:
                n = c.execute(sql.HOOKS_REDELIVER_ONE, (now, now, delivery_id)).rowcount
                if not n:
                    raise rules.unknown_delivery(delivery_id)
                return int(n)
            assert subscription_id is not None
            _subscription(c, subscription_id)
            return int(
                c.execute(sql.HOOKS_REDELIVER_SINCE, (now, now, subscription_id, since or 0.0)).rowcount
            )

        return await self._db.write(op)

    async def outcome_facts(self, outcome_ids: Sequence[str]) -> dict[str, OutcomeFacts]:
        ids = list(dict.fromkeys(outcome_ids))

        def op(c: sqlite3.Connection) -> dict[str, OutcomeFacts]:
            found: dict[str, OutcomeFacts] = {}
            for i in range(0, len(ids), H.FACTS_CHUNK):
                chunk = ids[i : i + H.FACTS_CHUNK]
                rows = c.execute(sql.hooks_outcome_facts(len(chunk)), chunk).fetchall()
                found.update(H.facts_from(r) for r in rows)
            return found

        return {} if not ids else await self._db.read(op)

    async def get_link(self, subscription_id: str, *, ref: str) -> str | None:
        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute(sql.HOOKS_GET_LINK, (subscription_id, ref)).fetchone()
            return None if row is None else str(row[0])

        return await self._db.read(op)

    async def set_link(self, subscription_id: str, *, ref: str, value: str) -> None:
        await self._db.write(
            lambda c: c.execute(
                sql.HOOKS_SET_LINK,
                (subscription_id, ref, value),
            )
        )

    async def all_credentials(self) -> list[tuple[str, str]]:
        return await self._db.read(lambda c: [(r[0], r[1]) for r in c.execute(sql.HOOKS_ALL_CREDENTIALS)])

    async def set_credentials(self, pairs: Sequence[tuple[str, str]], *, now: float) -> None:
        await self._db.write(
            lambda c: c.executemany(
                sql.HOOKS_SET_CREDENTIALS,
                [(cred, now, sid) for sid, cred in pairs],
            )
        )


def _delivery(c: sqlite3.Connection, delivery_id: str) -> DeliveryRow:
    row: Any = c.execute(sql.HOOKS_DELIVERY_BY_ID, (delivery_id,)).fetchone()
    if row is None:
        raise rules.unknown_delivery(delivery_id)
    return H.delivery_from(row)
