"""The HookStore (see hooks.py) on the SQLite store: its group-commit writer and snapshot readers."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matrix_mcp import rules
from matrix_mcp.store import hooks as H
from matrix_mcp.store import rows as R
from matrix_mcp.store.hooks import DeliveryPage, DeliveryRow, OutcomeFacts, SubscriptionRow

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
    row = c.execute("SELECT * FROM hook_subscriptions WHERE id = ?", (subscription_id,)).fetchone()
    if row is None:
        raise rules.unknown_webhook(subscription_id)
    return H.subscription_from(row)


def _holds(c: sqlite3.Connection, subscription_id: str, owner: str) -> bool:
    return (
        c.execute(
            "SELECT 1 FROM hook_subscriptions WHERE id = ? AND lease_owner = ?", (subscription_id, owner)
        ).fetchone()
        is not None
    )


class SQLiteHooks:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_subscription(self, row: SubscriptionRow, *, now: float) -> SubscriptionRow:
        def op(c: sqlite3.Connection) -> SubscriptionRow:
            cursor = int(c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
            c.execute(
                "INSERT INTO hook_subscriptions (id, kind, target, description, events, run_name, config,"
                " credentials, active, cursor, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*H.subscription_values(row), cursor, now, now),
            )
            return _subscription(c, row.id)

        return await self._db.write(op)

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow:
        return await self._db.read(lambda c: _subscription(c, subscription_id))

    async def list_subscriptions(self, *, active_only: bool = False) -> list[SubscriptionRow]:
        query = (
            "SELECT * FROM hook_subscriptions"
            + (" WHERE active" if active_only else "")
            + " ORDER BY created_at, id"
        )
        return await self._db.read(lambda c: [H.subscription_from(r) for r in c.execute(query)])

    async def any_active(self) -> bool:
        return await self._db.read(
            lambda c: (
                c.execute("SELECT 1 FROM hook_subscriptions WHERE active LIMIT 1").fetchone() is not None
            )
        )

    async def update_subscription(
        self, subscription_id: str, *, change: H.SubscriptionChange, now: float
    ) -> SubscriptionRow:
        cols = H.change_columns(change)
        assert set(cols) <= _CHANGEABLE

        def op(c: sqlite3.Connection) -> SubscriptionRow:
            _subscription(c, subscription_id)
            if cols:
                c.execute(
                    "UPDATE hook_subscriptions SET "
                    + ", ".join(f"{name} = ?" for name in cols)
                    + ", updated_at = ? WHERE id = ?",
                    [*cols.values(), now, subscription_id],
                )
            return _subscription(c, subscription_id)

        return await self._db.write(op)

    async def remove_subscription(self, subscription_id: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            if c.execute("DELETE FROM hook_subscriptions WHERE id = ?", (subscription_id,)).rowcount == 0:
                raise rules.unknown_webhook(subscription_id)

        await self._db.write(op)

    async def lease(
        self, subscription_id: str, *, owner: str, now: float, ttl: float
    ) -> SubscriptionRow | None:
        def op(c: sqlite3.Connection) -> SubscriptionRow | None:
            taken = c.execute(
                "UPDATE hook_subscriptions SET lease_owner = ?, lease_expires_at = ? WHERE id = ? AND active"
                " AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires_at <= ?)",
                (owner, now + ttl, subscription_id, owner, now),
            ).rowcount
            return _subscription(c, subscription_id) if taken else None

        return await self._db.write(op)

    async def release(self, subscription_id: str, *, owner: str) -> None:
        await self._db.write(
            lambda c: c.execute(
                "UPDATE hook_subscriptions SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND lease_owner = ?",
                (subscription_id, owner),
            )
        )

    async def materialize(self, subscription_id: str, *, move: H.CursorMove, now: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            moved = c.execute(
                "UPDATE hook_subscriptions SET cursor = ? WHERE id = ? AND lease_owner = ? AND cursor = ?",
                (move.cursor_to, subscription_id, move.owner, move.cursor_from),
            ).rowcount
            if not moved:
                return False
            c.executemany(
                "INSERT OR IGNORE INTO hook_deliveries (id, subscription_id, seq, event_type, run_name, body,"
                " status, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                [(*H.delivery_values(subscription_id, d), now, now, now) for d in move.deliveries],
            )
            return True

        return await self._db.write(op)

    async def add_delivery(self, subscription_id: str, *, delivery: H.NewDelivery, now: float) -> DeliveryRow:
        def op(c: sqlite3.Connection) -> DeliveryRow:
            _subscription(c, subscription_id)
            c.execute(
                "INSERT INTO hook_deliveries (id, subscription_id, seq, event_type, run_name, body, status,"
                " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (*H.delivery_values(subscription_id, delivery), now, now, now),
            )
            return _delivery(c, delivery.id)

        return await self._db.write(op)

    async def due_deliveries(self, subscription_id: str, *, now: float, limit: int) -> list[DeliveryRow]:
        return await self._db.read(
            lambda c: [
                H.delivery_from(r)
                for r in c.execute(
                    "SELECT * FROM hook_deliveries WHERE subscription_id = ? AND status = 'pending'"
                    " AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?",
                    (subscription_id, now, limit),
                )
            ]
        )

    async def next_due(self, subscription_id: str) -> float | None:
        def op(c: sqlite3.Connection) -> float | None:
            row = c.execute(
                "SELECT MIN(next_attempt_at) FROM hook_deliveries WHERE subscription_id = ? AND status = 'pending'",
                (subscription_id,),
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._db.read(op)

    async def record(self, subscription_id: str, *, record: H.RoundRecord, now: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            if not _holds(c, subscription_id, record.owner):
                return False
            c.executemany(
                "UPDATE hook_deliveries SET status = ?1, attempts = ?2, next_attempt_at = ?3, last_status_code = ?4,"
                " last_error = ?5, updated_at = ?6, delivered_at = CASE WHEN ?1 = 'succeeded' THEN ?6 ELSE"
                " delivered_at END WHERE id = ?7 AND subscription_id = ?8",
                [(*H.result_values(r), subscription_id) for r in record.results],
            )
            c.execute(
                "UPDATE hook_subscriptions SET failures = ?, failing_since = ?, circuit_open_until = ?,"
                " last_success_at = ?, active = active AND ?, disabled_reason = COALESCE(?, disabled_reason),"
                " updated_at = ? WHERE id = ?",
                (*H.endpoint_values(record.state), now, subscription_id),
            )
            if record.logs:
                c.executemany(
                    "INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status, details,"
                    " created_at) VALUES ((SELECT id FROM runs WHERE name = ?), NULL, ?, ?, ?, ?, ?)",
                    [H.log_values(g) for g in record.logs],
                )
                for ev in H.log_events(record.logs):
                    c.execute(
                        "INSERT INTO events (run_id, outcome_id, kind, data, created_at) VALUES (NULL, NULL,"
                        " ?, ?, ?)",
                        (ev.kind, ev.payload(), now),
                    )
            return True

        return await self._db.write(op)

    async def get_delivery(self, delivery_id: str) -> DeliveryRow:
        return await self._db.read(lambda c: _delivery(c, delivery_id))

    async def list_deliveries(self, query: H.DeliveryQuery) -> DeliveryPage:
        after = R.decode_cursor(query.cursor, kind=R.DELIVERY_CURSOR)
        pinned = H.delivery_filter(query.subscription_id, query.status)
        limit = query.limit

        def op(c: sqlite3.Connection) -> DeliveryPage:
            rows = c.execute(
                "SELECT * FROM hook_deliveries WHERE "
                + " AND ".join(["n > ?", *(f"{column} = ?" for column, _ in pinned)])
                + " ORDER BY n LIMIT ?",
                [after, *(value for _, value in pinned), limit + 1],
            ).fetchall()
            return H.delivery_page(rows, limit)

        return await self._db.read(op)

    async def redeliver(self, target: H.Redelivery, *, now: float) -> int:
        subscription_id, delivery_id, since = target.subscription_id, target.delivery_id, target.since

        def op(c: sqlite3.Connection) -> int:
            query = (
                "UPDATE hook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ?"
                " WHERE "
            )
            if delivery_id is not None:
                n = c.execute(query + "id = ?", (now, now, delivery_id)).rowcount
                if not n:
                    raise rules.unknown_delivery(delivery_id)
                return int(n)
            assert subscription_id is not None
            _subscription(c, subscription_id)
            return int(
                c.execute(
                    query + "subscription_id = ? AND created_at >= ?",
                    (now, now, subscription_id, since or 0.0),
                ).rowcount
            )

        return await self._db.write(op)

    async def outcome_facts(self, outcome_ids: Sequence[str]) -> dict[str, OutcomeFacts]:
        ids = list(dict.fromkeys(outcome_ids))

        def op(c: sqlite3.Connection) -> dict[str, OutcomeFacts]:
            found: dict[str, OutcomeFacts] = {}
            for i in range(0, len(ids), H.FACTS_CHUNK):
                chunk = ids[i : i + H.FACTS_CHUNK]
                marks = ", ".join("?" for _ in chunk)  # placeholders only; the ids are bound
                rows = c.execute(
                    "SELECT o.id, o.item, o.attempts, o.metrics, o.error_message, p.name AS package_name"
                    " FROM outcomes o JOIN packages p ON p.id = o.package_id WHERE o.id IN (" + marks + ")",
                    chunk,
                ).fetchall()
                found.update(H.facts_from(r) for r in rows)
            return found

        return {} if not ids else await self._db.read(op)

    async def get_link(self, subscription_id: str, *, ref: str) -> str | None:
        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT value FROM hook_links WHERE subscription_id = ? AND ref = ?", (subscription_id, ref)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._db.read(op)

    async def set_link(self, subscription_id: str, *, ref: str, value: str) -> None:
        await self._db.write(
            lambda c: c.execute(
                "INSERT INTO hook_links (subscription_id, ref, value) VALUES (?, ?, ?)"
                " ON CONFLICT (subscription_id, ref) DO UPDATE SET value = excluded.value",
                (subscription_id, ref, value),
            )
        )

    async def all_credentials(self) -> list[tuple[str, str]]:
        return await self._db.read(
            lambda c: [
                (r[0], r[1]) for r in c.execute("SELECT id, credentials FROM hook_subscriptions ORDER BY id")
            ]
        )

    async def set_credentials(self, pairs: Sequence[tuple[str, str]], *, now: float) -> None:
        await self._db.write(
            lambda c: c.executemany(
                "UPDATE hook_subscriptions SET credentials = ?, updated_at = ? WHERE id = ?",
                [(cred, now, sid) for sid, cred in pairs],
            )
        )


def _delivery(c: sqlite3.Connection, delivery_id: str) -> DeliveryRow:
    row: Any = c.execute("SELECT * FROM hook_deliveries WHERE id = ?", (delivery_id,)).fetchone()
    if row is None:
        raise rules.unknown_delivery(delivery_id)
    return H.delivery_from(row)
