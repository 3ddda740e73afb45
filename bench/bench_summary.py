"""Planning and summary latency at scale, on either backend.

- `plan_run` of 100 packages × 100 items through the engine (goal ≤ 1 s);
- `package_summary` and `run_status` p50 with 1,000,000 outcomes in the database (goal ≤ 3 ms).
  The outcomes are bulk-inserted straight into the tables (generate_series on PostgreSQL, executemany
  on SQLite) as complete rows (on PostgreSQL with the done narrow-queue rows the store keeps), then
  `rebuild_counters` makes the counters consistent;
- `list_outcomes(status=...)` p50 for complete, failed, pending and generating on the same run, after
  a few items were planned into it and failed or leased through the engine (a handful of failed,
  pending and leased rows among a million complete ones: the listing must not walk the run).

    python bench/bench_summary.py --backend postgres [--outcomes 1000000] [--database-url URL]
    python bench/bench_summary.py --backend sqlite [--outcomes 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_store import DEFAULT_PG, fresh_pg_database
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec

BULK_PACKAGES = 100
SEED_FAILED = 10
SEED_PENDING = 10
SEED_LEASED = 5
LIST_LIMIT = 50


async def bulk_postgres(url: str, run_id: str, outcomes: int) -> None:
    import psycopg

    per = outcomes // BULK_PACKAGES
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        pids = [
            r[0]
            for r in await (
                await c.execute("SELECT id FROM packages WHERE run_id = %s ORDER BY position", (run_id,))
            ).fetchall()
        ]
        for pid in pids:
            await c.execute(
                "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, attempts,"
                " metrics, available_at, created_at, updated_at, started_at, completed_at, duration_seconds)"
                " SELECT gen_random_uuid()::text, %s, %s, 'bulk' || g, 1000 + g, 'complete', 'code', 1,"
                ' \'{"lines_generated":10,"quality_score":0.8}\', 0, 0, 0, 0, 1 + (g %% 50), 1 + (g %% 50)'
                " FROM generate_series(1, %s) g",
                (run_id, pid, per),
            )
        # the narrow queue's rows, as the store leaves them once each item is complete
        await c.execute(
            "INSERT INTO outcome_queue (n, run_id, package_id, position, available_at, claim_seq, final)"
            " SELECT n, run_id, package_id, position, available_at, n, 'complete' FROM outcomes"
            " WHERE run_id = %s ORDER BY n",
            (run_id,),
        )
        await c.execute("UPDATE outcomes o SET claim_seq = n WHERE run_id = %s", (run_id,))
        await c.execute("VACUUM ANALYZE outcomes")
        await c.execute("VACUUM ANALYZE outcome_queue")


def bulk_sqlite(path: Path, run_id: str, outcomes: int) -> None:
    import uuid

    per = outcomes // BULK_PACKAGES
    conn = sqlite3.connect(path)
    pids = [
        r[0] for r in conn.execute("SELECT id FROM packages WHERE run_id = ? ORDER BY position", (run_id,))
    ]
    with conn:
        for pid in pids:
            conn.executemany(
                "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, attempts,"
                " metrics, available_at, created_at, updated_at, started_at, completed_at, duration_seconds)"
                " VALUES (?, ?, ?, ?, ?, 'complete', 'code', 1, '{\"lines_generated\":10,\"quality_score\":0.8}',"
                " 0, 0, 0, 0, ?, ?)",
                [
                    (str(uuid.uuid4()), run_id, pid, f"bulk{g}", 1000 + g, 1 + g % 50, 1 + g % 50)
                    for g in range(per)
                ],
            )
    conn.execute("ANALYZE")
    conn.close()


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def measure(
    engine: Engine, bulk: Callable[[str, int], Awaitable[None]], outcomes: int, reps: int
) -> None:
    grid = [PackageSpec(name=f"p{i:03d}", items=[f"i{j:03d}" for j in range(100)]) for i in range(100)]
    t0 = time.perf_counter()
    await engine.plan_run("plan-100x100", packages=grid)
    plan_s = time.perf_counter() - t0
    print(f"plan_run 100 x 100 items: {plan_s * 1000:.0f} ms")

    big = await engine.plan_run(
        "big", packages=[PackageSpec(name=f"b{i:03d}", items=[]) for i in range(BULK_PACKAGES)]
    )
    t0 = time.perf_counter()
    await bulk(big.run.id, outcomes)
    await engine.store.rebuild_counters(big.run.id)
    print(f"bulk insert of {outcomes} outcomes + rebuild_counters: {time.perf_counter() - t0:.1f} s")
    run = await engine.get_run("big")
    assert run.counts.complete == outcomes // BULK_PACKAGES * BULK_PACKAGES, run.counts
    await seed_failed_leased_and_pending(engine)
    for _ in range(20):  # warm caches and prepared statements
        await engine.package_summary("b050", run="big")
        await engine.run_status("big")
    summary: list[float] = []
    status: list[float] = []
    for i in range(reps):
        t0 = time.perf_counter()
        s = await engine.package_summary(f"b{i % BULK_PACKAGES:03d}", run="big")
        summary.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await engine.run_status("big")
        status.append(time.perf_counter() - t0)
    assert s.completed_items == outcomes // BULK_PACKAGES
    print(f"package_summary p50 with {outcomes} outcomes: {p50_ms(summary):.2f} ms")
    print(f"run_status      p50 with {outcomes} outcomes: {p50_ms(status):.2f} ms")
    expect = {
        "complete": LIST_LIMIT,
        "failed": SEED_FAILED,
        "pending": SEED_PENDING,
        "generating": SEED_LEASED,
    }
    for st, n in expect.items():
        page = await engine.list_outcomes(run="big", status=st, limit=LIST_LIMIT)
        assert len(page.outcomes) == n and all(o.status == st for o in page.outcomes), (st, page)
    list_reps = max(5, reps // 10)  # a walk of the whole run takes long: fewer samples
    for st in expect:
        samples: list[float] = []
        for _ in range(list_reps):
            t0 = time.perf_counter()
            await engine.list_outcomes(run="big", status=st, limit=LIST_LIMIT)
            samples.append(time.perf_counter() - t0)
        print(
            f"list_outcomes status={st:<8} limit={LIST_LIMIT} p50 with {outcomes} outcomes:"
            f" {p50_ms(samples):.2f} ms"
        )


async def seed_failed_leased_and_pending(engine: Engine) -> None:
    """A few items planned into the big run after the bulk rows, claimed and failed for good through the
    engine, a few claimed and left leased, and a few more left pending."""
    names = [f"fail{i}" for i in range(SEED_FAILED + SEED_LEASED)]
    for i, name in enumerate(names):
        await engine.plan_run(
            "big", packages=[PackageSpec(name=f"b{i * 7 % BULK_PACKAGES:03d}", items=[name])]
        )
    claimed = await engine.claim_items("big", worker="bench", limit=SEED_FAILED + SEED_LEASED)
    assert len(claimed.items) == SEED_FAILED + SEED_LEASED, claimed
    for claim in claimed.items[:SEED_FAILED]:
        await engine.fail_item(claim.outcome_id, lease_token=claim.lease_token, error="boom", retryable=False)
    for i in range(SEED_PENDING):
        await engine.plan_run(
            "big", packages=[PackageSpec(name=f"b{i * 11 % BULK_PACKAGES:03d}", items=[f"wait{i}"])]
        )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    ap.add_argument("--outcomes", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL server (a fresh database is created)"
    )
    args = ap.parse_args()
    print(f"backend={args.backend}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "postgres":
            async with fresh_pg_database(args.database_url) as url:
                engine = await Engine.open(Settings(database_url=url, artifacts_dir=Path(tmp) / "a"))
                try:
                    await measure(
                        engine, lambda run_id, n: bulk_postgres(url, run_id, n), args.outcomes, args.reps
                    )
                finally:
                    await engine.close()
        else:
            db = Path(tmp) / "matrix.db"
            engine = await Engine.open(
                Settings(database_url=f"sqlite:///{db}", artifacts_dir=Path(tmp) / "a")
            )
            try:
                await measure(
                    engine,
                    lambda run_id, n: asyncio.to_thread(bulk_sqlite, db, run_id, n),
                    args.outcomes,
                    args.reps,
                )
            finally:
                await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
