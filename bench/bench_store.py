"""Store-level claim+complete throughput against the peer queue on the same backend, in one run.

- Matrix: N in-process claimers (default 64) loop `claim(limit=1)` + `complete` with no work until the
  run is done; items/s over the whole drain.
- Peer, same number of jobs, same database, same process, right after:
  - postgres: PgQueuer (psycopg driver, no-op entrypoint, its recommended batching: several
    QueueManagers × batch_size 10, drain mode);
  - sqlite: litequeue (`get` + `done`) from the same number of threads, each with its own connection.

    python bench/bench_store.py --backend postgres [--items 20000] [--claimers 64] [--database-url URL] [--cost]
    python bench/bench_store.py --backend sqlite [--items 20000] [--claimers 64]

For PostgreSQL a fresh database is created on the server of --database-url and dropped afterwards.
--cost (PostgreSQL, server on this host) also prints what the matrix drain cost per item: CPU of this
process, CPU of the database's backends (from /proc), and the group-commit batches — steadier than items/s
on a machine shared with other work.
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

from matrix_mcp.models import RunPolicy
from matrix_mcp.rules import new_token
from matrix_mcp.store.params import ClaimRequest, NewItem, NewPackage, Report
from matrix_mcp.store.protocol import Store

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


class Cost:
    """CPU per item of the matrix drain: this process, and the bench database's server backends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sizes: list[int] = []

    async def _backends(self) -> float:
        import os

        import psycopg

        dbname = urlsplit(self.url).path.lstrip("/")
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)
            )
            pids = [r[0] for r in await cur.fetchall()]
        ticks = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    async def start(self, store: Any) -> None:
        store.group_commit.observe(self.sizes.append)
        self.server0 = await self._backends()
        self.client0 = time.process_time()

    async def stop(self, done: int) -> str:
        client = time.process_time() - self.client0
        server = await self._backends() - self.server0
        batches = len(self.sizes)
        return (
            f"matrix cost per item: client {client / done * 1e6:.0f} us CPU, server {server / done * 1e6:.0f} us"
            f" CPU; {batches} batches, {sum(self.sizes) / max(1, batches):.1f} requests each"
        )


async def matrix_drain(
    store: Store, items: int, claimers: int, packages: int = 10, cost: Cost | None = None
) -> float:
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

    if cost is not None:
        await cost.start(store)
    t0 = time.perf_counter()
    await asyncio.gather(*(claimer(n) for n in range(claimers)))
    elapsed = time.perf_counter() - t0
    if cost is not None:
        print(await cost.stop(done))
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
    ap.add_argument("--cost", action="store_true", help="print the matrix drain's CPU per item (PostgreSQL)")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    if args.backend == "postgres":
        from matrix_mcp.store.postgres import PostgresStore

        async with fresh_pg_database(args.database_url) as url:
            store = await PostgresStore.open(url)
            try:
                cost = Cost(url) if args.cost else None
                results["matrix"] = await matrix_drain(store, args.items, args.claimers, cost=cost)
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
