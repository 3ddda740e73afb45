"""Store-level claim+complete throughput against the peer queue on the same backend, in one run.

- Matrix: N in-process claimers (default 64) loop `claim(limit=1)` + `complete` with no work until the
  run is done; items/s over the whole drain.
- Peer, same number of jobs, same database, same process, right after:
  - postgres: PgQueuer (psycopg driver, no-op entrypoint, its recommended batching: several
    QueueManagers × batch_size 10, drain mode);
  - sqlite: litequeue (`get` + `done`) from the same number of threads, each with its own connection.

    python bench/bench_store.py --backend postgres [--items 20000] [--claimers 64] [--database-url URL]
    python bench/bench_store.py --backend sqlite [--items 20000] [--claimers 64]

For PostgreSQL a fresh database is created on the server of --database-url and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_mcp.engine import new_token
from matrix_mcp.models import RunPolicy
from matrix_mcp.store.base import ClaimRequest, NewItem, NewPackage, Report, Store

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@asynccontextmanager
async def fresh_pg_database(server_url: str) -> AsyncIterator[str]:
    import psycopg
    from psycopg import sql

    name = "matrix_bench_" + uuid.uuid4().hex[:10]
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(server_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    finally:
        async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def matrix_drain(store: Store, items: int, claimers: int, packages: int = 10) -> float:
    per = items // packages
    plan = [NewPackage(f"p{i}", None, [NewItem(f"i{j}") for j in range(per)]) for i in range(packages)]
    result = await store.plan(name="bench", goal=None, policy=RunPolicy(), packages=plan, now=time.time())
    run_id = result.run.id
    done = 0

    async def claimer(n: int) -> None:
        nonlocal done
        request = ClaimRequest(run_id=run_id, worker=f"w{n}", limit=1, token_factory=new_token)
        while True:
            batch = await store.claim(request, now=time.time())
            if not batch.claims:
                if batch.reason in ("done", "empty"):
                    return
                await asyncio.sleep(0.001)
                continue
            for c in batch.claims:
                await store.complete(
                    c.outcome_id, lease_token=c.lease_token, report=Report(), now=time.time()
                )
                done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(claimer(n) for n in range(claimers)))
    elapsed = time.perf_counter() - t0
    assert done == per * packages, (done, per * packages)
    report = await store.recount()
    assert report.consistent, report.mismatches
    return done / elapsed


async def pgqueuer_drain(url: str, items: int, workers: int, batch_size: int) -> float:
    import psycopg
    from pgqueuer import PsycopgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode
    from pgqueuer.models import Job

    setup = await psycopg.AsyncConnection.connect(url, autocommit=True)
    queries = Queries(PsycopgDriver(setup))
    await queries.install()
    for start in range(0, items, 5000):
        n = min(5000, items - start)
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
    done = 0

    async def worker() -> None:
        nonlocal done
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        driver = PsycopgDriver(conn)
        qm = QueueManager(Queries(driver))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal done
            done += 1

        from datetime import timedelta

        await qm.run(
            mode=QueueExecutionMode.drain, batch_size=batch_size, dequeue_timeout=timedelta(seconds=0.05)
        )
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - t0
    await setup.close()
    assert done == items, (done, items)
    return items / elapsed


def litequeue_drain(path: Path, items: int, threads: int) -> float:
    from litequeue import LiteQueue

    q = LiteQueue(str(path))
    for i in range(items):
        q.put(str(i))
    q.close()
    counts = [0] * threads

    def worker(k: int) -> None:
        wq = LiteQueue(str(path), timeout=60)
        while True:
            msg = wq.pop()  # litequeue 0.9: pop() claims the next message (newer releases call it get())
            if msg is None:
                break
            wq.done(msg.message_id)
            counts[k] += 1
        wq.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    assert sum(counts) == items, (sum(counts), items)
    return items / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--claimers", type=int, default=64)
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL server (a fresh database is created)"
    )
    ap.add_argument(
        "--pgq-workers", type=int, default=5, help="PgQueuer QueueManagers (its published setup: 5)"
    )
    ap.add_argument("--pgq-batch", type=int, default=10, help="PgQueuer batch_size (its default: 10)")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    if args.backend == "postgres":
        from matrix_mcp.store.postgres import PostgresStore

        async with fresh_pg_database(args.database_url) as url:
            store = await PostgresStore.open(url)
            try:
                results["matrix"] = await matrix_drain(store, args.items, args.claimers)
            finally:
                await store.close()
            results["peer"] = await pgqueuer_drain(url, args.items, args.pgq_workers, args.pgq_batch)
        peer = f"PgQueuer ({args.pgq_workers} workers x batch {args.pgq_batch}, psycopg)"
    else:
        from matrix_mcp.store.sqlite import SQLiteStore

        with tempfile.TemporaryDirectory() as tmp:
            sstore = await SQLiteStore.open(Path(tmp) / "matrix.db")
            try:
                results["matrix"] = await matrix_drain(sstore, args.items, args.claimers)
            finally:
                await sstore.close()
            results["peer"] = await asyncio.to_thread(
                litequeue_drain, Path(tmp) / "litequeue.db", args.items, args.claimers
            )
        peer = f"litequeue ({args.claimers} threads, get+done)"
    ratio = results["matrix"] / results["peer"]
    print(f"backend={args.backend} items={args.items} claimers={args.claimers}")
    print(f"matrix  claim+complete: {results['matrix']:10.0f} items/s")
    print(f"{peer}: {results['peer']:10.0f} items/s")
    print(f"ratio matrix/peer: {ratio:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
