"""matrix-mcp whose claim and complete make one durable write each, for the floors of bench_stdio.py.

The server is the real one (same tools, schemas, argument handling and results, as in
noop_engine_server.py); `claim_items` and `complete_item` skip the engine and instead make exactly one
durable write each on a one-table queue of their own, then answer a real claim and a real outcome captured
at start-up:

- claim: `UPDATE … SET status = 'leased' WHERE n = (the first pending row) RETURNING n`
- complete: `UPDATE … SET status = 'done' WHERE n = … AND token = … RETURNING n`

each a single statement in autocommit, on the cheapest path the driver has: SQLite on a connection of its
own, run on the event loop (WAL, synchronous=NORMAL, as the store); PostgreSQL on one connection
(synchronous_commit on, as the store). No attempt history, events, counters, metrics or fairness: less
than the contract allows. Its per-item time over the echo floor is therefore the lowest any implementation
that persists each claim and each completion can reach with this SDK on this machine.

With --contract (SQLite): the same single statement per call, but on the store's own tables and a run
planned at start-up, with what the issue's contract requires in the same transaction done by SQLite
itself in TEMP triggers: the package's summary counters, the outcome_metrics rows and the event log
entry. Everything else the store also keeps (attempt history, per-minute series, duration histogram),
the lease sweep, the store's group-commit plumbing and the engine are left out. A generous lower bound
for a correct store: its ratio is what the contract alone costs here.

    python bench/floor_server.py --database-url sqlite:///… | postgresql://… --artifacts-dir … [--contract]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.mcp.server import create_server
from matrix_mcp.models import ClaimResult, Outcome, PackageSpec
from matrix_mcp.rules import new_token
from matrix_mcp.store.rows import dumps

sys.path.insert(0, str(Path(__file__).resolve().parent))

from noop_engine_server import start

ROWS = 20_000


class SQLiteQueue:
    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 5000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("DROP TABLE IF EXISTS bench_floor")
        self.conn.execute(
            "CREATE TABLE bench_floor (n INTEGER PRIMARY KEY, status TEXT NOT NULL, token TEXT, at REAL)"
        )
        self.conn.execute("CREATE INDEX bench_floor_pending ON bench_floor (n) WHERE status = 'pending'")
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO bench_floor (status) VALUES (?)", [("pending",)] * ROWS)
        self.conn.execute("COMMIT")
        self.held: dict[str, int] = {}

    async def claim(self, token: str) -> None:
        row = self.conn.execute(
            "UPDATE bench_floor SET status = 'leased', token = ?, at = ? WHERE n ="
            " (SELECT n FROM bench_floor WHERE status = 'pending' ORDER BY n LIMIT 1) RETURNING n",
            (token, time.time()),
        ).fetchone()
        self.held[token] = int(row[0])

    async def complete(self, token: str, metrics: dict[str, Any]) -> None:
        row = self.conn.execute(
            "UPDATE bench_floor SET status = 'done', at = ? WHERE n = ? AND token = ? RETURNING n",
            (time.time(), self.held.pop(token), token),
        ).fetchone()
        assert row is not None


_CONTRACT_TRIGGERS = [
    """
CREATE TEMP TRIGGER floor_claimed AFTER UPDATE OF status ON outcomes
WHEN OLD.status = 'pending' AND NEW.status = 'generating'
BEGIN
    INSERT INTO events (run_id, outcome_id, kind, data, created_at)
    VALUES (NEW.run_id, NEW.id, 'claimed', json_object('attempt', NEW.attempts, 'item', NEW.item,
            'package', (SELECT name FROM packages WHERE id = NEW.package_id), 'worker', NEW.worker),
            NEW.updated_at);
    UPDATE packages SET pending = pending - 1, generating = generating + 1, last_claim = last_insert_rowid()
    WHERE id = NEW.package_id;
END""",
    """
CREATE TEMP TRIGGER floor_completed AFTER UPDATE OF status ON outcomes
WHEN OLD.status = 'generating' AND NEW.status = 'complete'
BEGIN
    UPDATE packages SET generating = generating - 1, complete = complete + 1,
        duration_sum = duration_sum + COALESCE(NEW.duration_seconds, 0.0),
        duration_n = duration_n + (NEW.duration_seconds IS NOT NULL),
        lines_sum = lines_sum + CASE WHEN json_type(NEW.metrics, '$.lines_generated') IN ('integer', 'real')
                                     THEN json_extract(NEW.metrics, '$.lines_generated') ELSE 0.0 END,
        quality_sum = quality_sum + CASE WHEN json_type(NEW.metrics, '$.quality_score') IN ('integer', 'real')
                                         THEN json_extract(NEW.metrics, '$.quality_score') ELSE 0.0 END,
        quality_n = quality_n + CASE WHEN json_type(NEW.metrics, '$.quality_score') IN ('integer', 'real')
                                     THEN 1 ELSE 0 END
    WHERE id = NEW.package_id;
    INSERT INTO outcome_metrics (outcome_id, name, value)
    SELECT NEW.id, key, value FROM json_each(NEW.metrics) WHERE type IN ('integer', 'real');
    INSERT INTO events (run_id, outcome_id, kind, data, created_at)
    VALUES (NEW.run_id, NEW.id, 'completed', json_object('duration', NEW.duration_seconds, 'item', NEW.item,
            'package', (SELECT name FROM packages WHERE id = NEW.package_id)), NEW.updated_at);
END""",
]


class SQLiteContractQueue:
    """One statement per call on the store's own tables; the contract's bookkeeping in TEMP triggers."""

    def __init__(self, path: str, run_id: str, lease_seconds: float) -> None:
        self.run_id = run_id
        self.lease_seconds = lease_seconds
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 5000")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        for trigger in _CONTRACT_TRIGGERS:
            self.conn.execute(trigger)
        self.held: dict[str, tuple[str, str]] = {}

    async def claim(self, token: str) -> None:
        now = time.time()
        real = new_token()
        row = self.conn.execute(
            "UPDATE outcomes SET status = 'generating', attempts = attempts + 1, worker = 'bench',"
            " lease_token = :token, lease_expires_at = :expires, started_at = :now, updated_at = :now"
            " WHERE n = (SELECT (SELECT o.n FROM outcomes o WHERE o.package_id = p.id AND o.status = 'pending'"
            " AND o.available_at <= :now ORDER BY o.available_at, o.position LIMIT 1) AS pick"
            " FROM packages p WHERE p.run_id = :run AND p.pending > 0 AND pick IS NOT NULL"
            " ORDER BY p.last_claim, p.position LIMIT 1)"
            " AND (SELECT state FROM runs WHERE id = :run) = 'active' RETURNING id",
            {"token": real, "expires": now + self.lease_seconds, "now": now, "run": self.run_id},
        ).fetchone()
        self.held[token] = (row[0], real)

    async def complete(self, token: str, metrics: dict[str, Any]) -> None:
        outcome_id, real = self.held.pop(token)
        now = time.time()
        row = self.conn.execute(
            "UPDATE outcomes SET status = 'complete', completed_at = :now, duration_seconds ="
            " CASE WHEN started_at IS NULL THEN NULL ELSE max(0.0, :now - started_at) END, updated_at = :now,"
            " lease_expires_at = NULL, error_message = NULL, metrics = :metrics"
            " WHERE id = :id AND lease_token = :token AND status = 'generating' RETURNING *",
            {"now": now, "metrics": dumps(metrics), "id": outcome_id, "token": real},
        ).fetchone()
        assert row is not None


class PostgresQueue:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None
        self.table = f"bench_floor_{os.getpid()}"
        self.held: dict[str, int] = {}

    async def _open(self) -> Any:
        import psycopg
        from psycopg import sql

        if self.conn is None:
            self.conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            t = sql.Identifier(self.table)
            await self.conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (n bigint PRIMARY KEY, status text NOT NULL, token text, at float8)"
                ).format(t)
            )
            await self.conn.execute(sql.SQL("CREATE INDEX ON {} (n) WHERE status = 'pending'").format(t))
            await self.conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, 'pending' FROM generate_series(1, %s) g").format(t), (ROWS,)
            )
            self.claim_sql = sql.SQL(
                "UPDATE {t} SET status = 'leased', token = %s, at = %s WHERE n ="
                " (SELECT n FROM {t} WHERE status = 'pending' ORDER BY n LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " RETURNING n"
            ).format(t=t)
            self.complete_sql = sql.SQL(
                "UPDATE {t} SET status = 'done', at = %s WHERE n = %s AND token = %s RETURNING n"
            ).format(t=t)
            self.drop_sql = sql.SQL("DROP TABLE IF EXISTS {}").format(t)
        return self.conn

    async def claim(self, token: str) -> None:
        conn = await self._open()
        cur = await conn.execute(self.claim_sql, (token, time.time()))
        self.held[token] = int((await cur.fetchone())[0])

    async def complete(self, token: str, metrics: dict[str, Any]) -> None:
        conn = await self._open()
        cur = await conn.execute(self.complete_sql, (time.time(), self.held.pop(token), token))
        assert await cur.fetchone() is not None

    def drop(self) -> None:
        if self.conn is None:
            return
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(self.drop_sql)


async def plan(settings: Settings) -> tuple[str, float]:
    """A run of the store's own, 10 packages x 1,000 items, for --contract to drain."""
    engine = await Engine.open(settings)
    try:
        packages = [PackageSpec(name=f"p{i}", items=[f"i{j}" for j in range(1000)]) for i in range(10)]
        result = await engine.plan_run(f"contract-floor-{time.time_ns()}", packages=packages)
        info = await engine.run_info(result.run.id)
        return info.id, info.policy.lease_seconds
    finally:
        await engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contract", action="store_true", help="SQLite: the contract's bookkeeping, in triggers")
    args, settings, claim, done = start(ap)
    url = args.database_url
    queue: SQLiteQueue | SQLiteContractQueue | PostgresQueue
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if args.contract:
            run_id, lease_seconds = anyio.run(plan, settings)
            queue = SQLiteContractQueue(str(path), run_id, lease_seconds)
        else:
            queue = SQLiteQueue(str(path.with_suffix(".floor.db")))
    elif args.contract:
        ap.error("--contract is measured on SQLite only")
    else:
        queue = PostgresQueue(url)

    async def claim_items(self: Engine, *a: Any, **k: Any) -> ClaimResult:
        await queue.claim(claim.items[0].lease_token)
        return claim

    async def complete_item(
        self: Engine,
        outcome_id: str,
        lease_token: str,
        content: Any = None,
        outcome_path: Any = None,
        metrics: dict[str, Any] | None = None,
        *a: Any,
        **k: Any,
    ) -> Outcome:
        await queue.complete(lease_token, metrics or {})
        return done

    Engine.claim_items = claim_items  # type: ignore[method-assign]
    Engine.complete_item = complete_item  # type: ignore[method-assign]
    try:
        create_server(settings).run()
    finally:
        if isinstance(queue, PostgresQueue):
            queue.drop()


if __name__ == "__main__":
    main()
