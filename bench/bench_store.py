"""Store-level claim+complete throughput against the peer queue on the same backend, in one run.

- Matrix: N in-process claimers (default 64) loop `claim(limit=1)` + `complete` with no work until the
  run is done; items/s over the whole drain.
- Peer, same number of jobs, same database, same process, right after:
  - postgres: PgQueuer (psycopg driver, no-op entrypoint, its recommended batching: several
    QueueManagers × batch_size 10, drain mode);
  - sqlite: litequeue 0.9 (`pop` + `done`) from the same number of threads, each with its own connection
    (opened before the clock starts) with a 60 s busy timeout (`LiteQueue(path, timeout=60)`, which it
    hands to sqlite3.connect); WAL and synchronous=NORMAL as litequeue sets them. A call that still meets
    "database is locked" is retried and the retries printed.

    python bench/bench_store.py --backend postgres [--items 20000] [--claimers 64] [--database-url URL] [--cost]
    python bench/bench_store.py --backend sqlite [--items 20000] [--claimers 64]

For PostgreSQL a fresh database is created on the server of --database-url and dropped afterwards.
--cost (PostgreSQL, server on this host) also prints what the matrix drain cost per item: CPU of this
process, CPU of the database's backends (from /proc), and the group-commit batches — steadier than items/s
on a machine shared with other work.

--policy (either backend): the claim policy's cost. The same drain (same items, claimers, packages) is run
with the policy active and without it, alternating in --rounds pairs (plain, policy, then policy, plain, …)
so the machine's load falls on both alike; each drain in a fresh database. With policy: a 3-stage DAG over
the packages (the second third of the packages `after` every first-stage package, each third-stage item
`after` two random second-stage items by "package/item" ref), item priority 1 on --prioritized (10 %) of
the items, one lock key on --locked (10 %) of the items drawn from a pool of --lock-keys keys (default: a
twentieth as many as locked items, so about 20 items share each key and claims meet held keys), and every
package capped at --cap generating items. Prints each drain, the ratio policy ÷ plain per pair and its median (goal
≥ 0.8), how often a claim came back empty for each reason (blocked / locked / capped show where the
policy held claimers back; a claim that skips a held key and takes the next item is not empty), and the
peer, drained once per pair, beside both. An in-process sanity check counts claims that broke an
ordering, a lock or a cap as the bench saw them (must be 0).

    python bench/bench_store.py --backend sqlite --policy [--items 20000] [--rounds 2] [--cap 32]
    python bench/bench_store.py --backend postgres --policy [--database-url URL] [--cost]

--review-usage (either backend): the cost of review gates and usage reports. Beside the plain drain, two:
review+usage, the same drain with review required on the run (RunPolicy review="required") and every
`complete` carrying a Usage with all six fields, so the items land in_review (the figure: claim+complete
with usage and review on, goal >= 0.85 of plain); and the full cycle, the same with each completed item
then approved through the store's `review` (three store calls per item against two). Same rounds, order
alternating (plain first, then last) and fresh databases as --policy. Prints each drain and both ratios
÷ plain per round, and their medians.

    python bench/bench_store.py --backend sqlite --review-usage [--items 20000] [--rounds 2]
    python bench/bench_store.py --backend postgres --review-usage [--database-url URL] [--cost]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_mcp.models import RunPolicy, Usage
from matrix_mcp.rules import new_token, package_candidates, ref_candidates
from matrix_mcp.store.params import ClaimRequest, NewItem, NewPackage, Prerequisite, Report, ReviewVerdict
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

    def __init__(self, url: str, label: str = "") -> None:
        self.url = url
        self.label = label
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
            f"{self.label}matrix cost per item: client {client / done * 1e6:.0f} us CPU, server {server / done * 1e6:.0f} us"
            f" CPU; {batches} batches, {sum(self.sizes) / max(1, batches):.1f} requests each"
        )


def machine_line(script: str) -> str:
    """What a figure needs beside it: when, which commit, how busy the machine was."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (+ local changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{script}  {when}  commit {commit}  cpus {os.cpu_count()}  {load_line()}"


def load_line() -> str:
    return "load average " + "/".join(f"{v:.1f}" for v in os.getloadavg()) + " (1/5/15 min)"


def new_item(
    package: str, name: str, *, after: Sequence[str] = (), priority: int = 0, locks: Sequence[str] = ()
) -> NewItem:
    """An item as the store takes it, its `after` references ("package/item", "item", "package/*")
    resolved as the engine's plan_run resolves references the plan itself has: to the first candidate (the
    benches plan at the store, untimed, and name no package or item with a "/" in it)."""
    if not after and not priority and not locks:
        return NewItem(name)
    field = f"{package}/{name}.after"
    prereqs = tuple(
        Prerequisite(candidates=ref_candidates(ref, package, field)[:1], field=field, text=ref)
        for ref in after
    )
    return NewItem(name, after=prereqs, priority=priority, locks=tuple(locks))


def new_package(
    name: str, items: Sequence[NewItem], *, after: Sequence[str] = (), max_concurrent: int | None = None
) -> NewPackage:
    """A package as the store takes it (see new_item)."""
    field = f"{name}.after"
    prereqs = tuple(
        Prerequisite(candidates=package_candidates(ref, field), field=field, text=ref) for ref in after
    )
    return NewPackage(name, None, items, after=prereqs, max_concurrent=max_concurrent)


@dataclass
class Shape:
    """One drain's plan, and what the in-process sanity check needs to know of it."""

    packages: list[NewPackage]
    policy: RunPolicy
    item_after: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    package_after: dict[str, list[str]] = field(default_factory=dict)
    locks: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    cap: int | None = None
    description: str = "no policy"
    kind: str = "plain"
    usage: Usage | None = None  # carried by every complete
    approve: bool = False  # each completed item approved through store.review (review required)


def plain_shape(items: int, packages: int) -> Shape:
    per = items // packages
    plan = [NewPackage(f"p{i}", None, [NewItem(f"i{j}") for j in range(per)]) for i in range(packages)]
    return Shape(plan, RunPolicy())


def policy_shape(
    items: int,
    packages: int,
    locked: float,
    cap: int | None,
    lock_keys: int | None = None,
    prioritized: float = 0.1,
    seed: int = 7,
) -> Shape:
    """The same packages and items as plain_shape, with the claim policy active (see the module doc)."""
    if packages < 3:
        raise SystemExit("--policy needs --packages >= 3 (a 3-stage DAG)")
    rnd = random.Random(seed)
    per = items // packages
    third = packages // 3
    stage1 = [f"p{i}" for i in range(third)]
    stage2 = [f"p{i}" for i in range(third, 2 * third)]
    stage3 = [f"p{i}" for i in range(2 * third, packages)]
    keys = [(f"p{i}", f"i{j}") for i in range(packages) for j in range(per)]
    n_locked = round(len(keys) * locked)
    pool = [f"file:src/mod{k}.py" for k in range(lock_keys or max(1, n_locked // 20))]
    locks = {key: [rnd.choice(pool)] for key in rnd.sample(keys, n_locked)}
    first = set(rnd.sample(keys, round(len(keys) * prioritized)))
    item_after: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for pkg in stage3:
        for j in range(per):
            refs: set[tuple[str, str]] = set()
            while len(refs) < min(2, len(stage2) * per):
                refs.add((rnd.choice(stage2), f"i{rnd.randrange(per)}"))
            item_after[(pkg, f"i{j}")] = sorted(refs)
    package_after = {pkg: list(stage1) for pkg in stage2}
    plan = [
        new_package(
            name,
            [
                new_item(
                    name,
                    f"i{j}",
                    after=[f"{a}/{b}" for a, b in item_after.get((name, f"i{j}"), ())],
                    priority=1 if (name, f"i{j}") in first else 0,
                    locks=locks.get((name, f"i{j}"), []),
                )
                for j in range(per)
            ],
            after=package_after.get(name, []),
            max_concurrent=cap,
        )
        for name in stage1 + stage2 + stage3
    ]
    edges = sum(len(v) for v in item_after.values()) + len(stage2) * per * len(stage1)
    description = (
        f"3 stages of {len(stage1)}/{len(stage2)}/{len(stage3)} packages ({per} items each); stage 2 `after`"
        f" every stage-1 package, each stage-3 item `after` 2 stage-2 items ({edges} stored edges);"
        f" priority 1 on {len(first)} items; 1 lock on {n_locked} items from {len(pool)} keys;"
        f" max_concurrent {cap} per package"
    )
    return Shape(plan, RunPolicy(), item_after, package_after, locks, cap, description, "policy")


# what an agent's report carries: every field set
BENCH_USAGE = Usage(
    input_tokens=12_345,
    output_tokens=2_345,
    cache_read_tokens=45_678,
    cache_creation_tokens=1_234,
    model="claude-sonnet-4-5",
    cost_usd=0.0421,
)


def review_usage_shape(items: int, packages: int, *, approve: bool) -> Shape:
    """The same packages and items as plain_shape, review required on the run, usage on every complete:
    the items land in_review (the figure's drain), or with `approve` each is then approved through
    store.review by the claimer that completed it (the full cycle)."""
    shape = plain_shape(items, packages)
    if approve:
        return Shape(
            shape.packages,
            RunPolicy(review="required"),
            description="review required, usage with all six fields on every complete, each item then"
            " approved through store.review (3 store calls per item)",
            kind="full cycle",
            usage=BENCH_USAGE,
            approve=True,
        )
    return Shape(
        shape.packages,
        RunPolicy(review="required"),
        description="review required, usage with all six fields on every complete; the items land"
        " in_review (2 store calls per item, as plain)",
        kind="review+usage",
        usage=BENCH_USAGE,
    )


@dataclass
class Sanity:
    """What the bench itself saw: a claim of an item whose prerequisites it had not seen completed, of a
    key another claim it had not yet seen completed holds, or beyond a package's cap. Completion is noted
    just before the complete call, so a store that ignored the policy is caught; the exact contract is the
    model test's (tests/store/test_policy_model.py)."""

    shape: Shape
    done: set[tuple[str, str]] = field(default_factory=set)
    done_in: Counter[str] = field(default_factory=Counter)
    size: dict[str, int] = field(default_factory=dict)
    holders: dict[str, tuple[str, str]] = field(default_factory=dict)
    generating: Counter[str] = field(default_factory=Counter)
    broken: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.size = {p.name: len(p.items) for p in self.shape.packages}

    def claimed(self, package: str, item: str) -> None:
        key = (package, item)
        if any(p not in self.done for p in self.shape.item_after.get(key, ())) or any(
            self.done_in[p] < self.size[p] for p in self.shape.package_after.get(package, ())
        ):
            self.broken["order"] += 1
        for k in self.shape.locks.get(key, ()):
            if k in self.holders:
                self.broken["lock"] += 1
            self.holders[k] = key
        self.generating[package] += 1
        if self.shape.cap is not None and self.generating[package] > self.shape.cap:
            self.broken["cap"] += 1

    def completing(self, package: str, item: str) -> None:
        key = (package, item)
        self.done.add(key)
        self.done_in[package] += 1
        for k in self.shape.locks.get(key, ()):
            if self.holders.get(k) == key:
                del self.holders[k]
        self.generating[package] -= 1


@dataclass
class Drain:
    items_per_s: float
    empty: Counter[str]
    broken: Counter[str]
    cpu_per_item: float  # this process's CPU (every thread: on SQLite the database's work too)


async def matrix_drain(
    store: Store, items: int, claimers: int, packages: int = 10, cost: Cost | None = None
) -> float:
    return (await shaped_drain(store, plain_shape(items, packages), claimers, cost)).items_per_s


async def shaped_drain(store: Store, shape: Shape, claimers: int, cost: Cost | None = None) -> Drain:
    """N claimers loop claim(limit=1) + complete with no work until the run is done (with shape.approve: + an
    approval of each item, by the claimer that completed it)."""
    plan = shape.packages
    result = await store.plan(name="bench", goal=None, policy=shape.policy, packages=plan, now=time.time())
    run_id = result.run.id
    done = 0
    empty: Counter[str] = Counter()
    sanity = Sanity(shape)
    report_ = Report(usage=shape.usage)
    reviewed = shape.approve
    approve = ReviewVerdict(decision="approve", backoff=lambda _n: 0.0)

    async def claimer(n: int) -> None:
        nonlocal done
        request = ClaimRequest(run_id=run_id, worker=f"w{n}", limit=1, token_factory=new_token)
        while True:
            batch = await store.claim(request, now=time.time())
            if not batch.claims:
                if batch.reason in ("done", "empty") or (batch.reason == "in_review" and not reviewed):
                    return  # (without approvals, items left in_review are as far as the drain goes)
                empty[str(batch.reason)] += 1
                await asyncio.sleep(0.001)
                continue
            for c in batch.claims:
                sanity.claimed(c.package, c.item)
            for c in batch.claims:
                sanity.completing(c.package, c.item)
                await store.complete(c.outcome_id, lease_token=c.lease_token, report=report_, now=time.time())
                if reviewed:
                    await store.review(c.outcome_id, verdict=approve, now=time.time())
                done += 1

    if cost is not None:
        await cost.start(store)
    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(claimer(n) for n in range(claimers)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if cost is not None:
        print(await cost.stop(done))
    total = sum(len(p.items) for p in plan)
    assert done == total, (done, total)
    report = await store.recount()
    assert report.consistent, report.mismatches
    return Drain(done / elapsed, empty, sanity.broken, cpu / done)


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


# litequeue as its README sets it up (WAL, synchronous NORMAL: its defaults), each connection with the busy
# timeout its constructor passes on to sqlite3.connect (`timeout`, seconds), as our store's connections wait
# 60 s for the write lock
LITEQUEUE_TIMEOUT = 60.0


def litequeue_drain(path: Path, items: int, threads: int) -> float:
    """`threads` threads, each with its own LiteQueue (opened before the clock starts, as our store is opened
    before its drain), pop + done until the queue is empty. A call that still fails with "database is
    locked" is retried and counted (printed), never dropped: a failed run measured nothing."""
    from litequeue import LiteQueue

    q = LiteQueue(str(path), timeout=LITEQUEUE_TIMEOUT)
    for i in range(items):
        q.put(str(i))
    q.close()
    counts = [0] * threads
    retried = [0] * threads
    queues = [LiteQueue(str(path), timeout=LITEQUEUE_TIMEOUT) for _ in range(threads)]

    def locked(k: int, exc: sqlite3.OperationalError) -> None:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise exc
        retried[k] += 1

    def worker(k: int) -> None:
        wq = queues[k]
        while True:
            try:
                msg = wq.pop()  # litequeue 0.9: pop() claims the next message (newer releases call it get())
            except sqlite3.OperationalError as exc:  # rolled back by pop: nothing was claimed
                locked(k, exc)
                continue
            if msg is None:
                break
            while True:
                try:
                    wq.done(msg.message_id)
                    break
                except sqlite3.OperationalError as exc:  # one UPDATE in autocommit: nothing was written
                    locked(k, exc)
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
    if sum(retried):
        print(f"litequeue: {sum(retried)} calls retried after 'database is locked'")
    return items / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--claimers", type=int, default=64)
    ap.add_argument("--packages", type=int, default=10, help="packages the items are spread over")
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL server (a fresh database is created)"
    )
    ap.add_argument(
        "--pgq-workers", type=int, default=5, help="PgQueuer QueueManagers (its published setup: 5)"
    )
    ap.add_argument("--pgq-batch", type=int, default=10, help="PgQueuer batch_size (its default: 10)")
    ap.add_argument(
        "--cost",
        action="store_true",
        help="print the matrix drain's CPU per item (PostgreSQL; with --policy: each drain's)",
    )
    ap.add_argument("--policy", action="store_true", help="the drain with the claim policy beside without")
    ap.add_argument(
        "--review-usage",
        action="store_true",
        help="the drain with review required and usage on every complete beside the plain drain",
    )
    ap.add_argument(
        "--rounds", type=int, default=2, help="--policy / --review-usage: pairs of drains (order alternates)"
    )
    ap.add_argument("--locked", type=float, default=0.1, help="--policy: share of items with a lock key")
    ap.add_argument(
        "--cap",
        type=int,
        default=None,
        help="--policy: max_concurrent per package (default: claimers / 2; 0: none)",
    )
    ap.add_argument(
        "--prioritized", type=float, default=0.1, help="--policy: share of items with priority 1 (others 0)"
    )
    ap.add_argument(
        "--lock-keys",
        type=int,
        default=None,
        help="--policy: the pool of lock keys (default: locked items / 20)",
    )
    args = ap.parse_args()
    if args.policy:
        await policy_main(args)
        return
    if args.review_usage:
        await review_usage_main(args)
        return
    results: dict[str, Any] = {}
    if args.backend == "postgres":
        from matrix_mcp.store.postgres import PostgresStore

        async with fresh_pg_database(args.database_url) as url:
            store = await PostgresStore.open(url)
            try:
                cost = Cost(url) if args.cost else None
                results["matrix"] = await matrix_drain(
                    store, args.items, args.claimers, args.packages, cost=cost
                )
            finally:
                await store.close()
            results["peer"] = await pgqueuer_drain(url, args.items, args.pgq_workers, args.pgq_batch)
        peer = f"PgQueuer ({args.pgq_workers} workers x batch {args.pgq_batch}, psycopg)"
    else:
        from matrix_mcp.store.sqlite import SQLiteStore

        with tempfile.TemporaryDirectory() as tmp:
            sstore = await SQLiteStore.open(Path(tmp) / "matrix.db")
            try:
                results["matrix"] = await matrix_drain(sstore, args.items, args.claimers, args.packages)
            finally:
                await sstore.close()
            results["peer"] = await asyncio.to_thread(
                litequeue_drain, Path(tmp) / "litequeue.db", args.items, args.claimers
            )
        peer = f"litequeue ({args.claimers} threads, pop+done)"
    ratio = results["matrix"] / results["peer"]
    print(f"backend={args.backend} items={args.items} claimers={args.claimers}")
    print(f"matrix  claim+complete: {results['matrix']:10.0f} items/s")
    print(f"{peer}: {results['peer']:10.0f} items/s")
    print(f"ratio matrix/peer: {ratio:.2f}x")


async def drain_fresh(args: argparse.Namespace, shape: Shape) -> Drain:
    """One drain of `shape` in a fresh database."""
    if args.backend == "postgres":
        from matrix_mcp.store.postgres import PostgresStore

        async with fresh_pg_database(args.database_url) as url:
            store = await PostgresStore.open(url)
            try:
                cost = Cost(url, label=f"{shape.kind} ") if args.cost else None
                return await shaped_drain(store, shape, args.claimers, cost)
            finally:
                await store.close()
    from matrix_mcp.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        sstore = await SQLiteStore.open(Path(tmp) / "matrix.db")
        try:
            return await shaped_drain(sstore, shape, args.claimers)
        finally:
            await sstore.close()


async def peer_fresh(args: argparse.Namespace, items: int) -> float:
    if args.backend == "postgres":
        async with fresh_pg_database(args.database_url) as url:
            return await pgqueuer_drain(url, items, args.pgq_workers, args.pgq_batch)
    with tempfile.TemporaryDirectory() as tmp:
        return await asyncio.to_thread(litequeue_drain, Path(tmp) / "litequeue.db", items, args.claimers)


def reasons(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


async def policy_main(args: argparse.Namespace) -> None:
    cap = (args.cap or None) if args.cap is not None else max(1, args.claimers // 2)
    plain = plain_shape(args.items, args.packages)
    policy = policy_shape(args.items, args.packages, args.locked, cap, args.lock_keys, args.prioritized)
    items = sum(len(p.items) for p in plain.packages)
    if args.backend == "postgres":
        peer_name, goal_peer = f"PgQueuer ({args.pgq_workers} workers x batch {args.pgq_batch})", 1.5
    else:
        peer_name, goal_peer = f"litequeue ({args.claimers} threads, pop+done)", 5.0
    print(machine_line("bench_store.py --policy"))
    print(
        f"backend={args.backend} items={items} claimers={args.claimers} packages={args.packages}"
        f" rounds={args.rounds}; each drain in a fresh database"
    )
    print(f"policy drain: {policy.description}")
    print("plain drain: the same packages and items, no after/priority/locks/max_concurrent")
    plain_r: list[float] = []
    policy_r: list[float] = []
    peer_r: list[float] = []
    cpu_r: list[float] = []
    broken: Counter[str] = Counter()
    for r in range(args.rounds):
        order = ["plain", "policy"] if r % 2 == 0 else ["policy", "plain"]
        got: dict[str, Drain] = {}
        for kind in order:
            got[kind] = await drain_fresh(args, plain if kind == "plain" else policy)
            broken += got[kind].broken
        peer = await peer_fresh(args, items)
        plain_r.append(got["plain"].items_per_s)
        policy_r.append(got["policy"].items_per_s)
        peer_r.append(peer)
        cpu_r.append(got["policy"].cpu_per_item / got["plain"].cpu_per_item)
        print(
            f"round {r + 1} ({' then '.join(order)}): plain {got['plain'].items_per_s:8.0f} items/s"
            f" ({got['plain'].cpu_per_item * 1e6:.0f} us CPU/item)"
            f" | policy {got['policy'].items_per_s:8.0f} items/s ({got['policy'].cpu_per_item * 1e6:.0f} us)"
            f" (empty claims: {reasons(got['policy'].empty)}; plain: {reasons(got['plain'].empty)})"
            f" | {peer_name} {peer:8.0f} items/s | policy/plain {policy_r[-1] / plain_r[-1]:.2f}x  {load_line()}"
        )
    ratios = [b / a for a, b in zip(plain_r, policy_r, strict=True)]
    print(
        f"median items/s: plain {statistics.median(plain_r):.0f}, policy {statistics.median(policy_r):.0f},"
        f" {peer_name} {statistics.median(peer_r):.0f}"
    )
    print(
        f"ratio policy/plain: {' '.join(f'{x:.2f}' for x in ratios)} -> median {statistics.median(ratios):.2f}x"
        " (goal >= 0.8)"
    )
    print(
        f"CPU per item of this process, policy/plain: {' '.join(f'{x:.2f}' for x in cpu_r)} -> median"
        f" {statistics.median(cpu_r):.2f}x (steadier than items/s on a shared machine;"
        f" {'client side only' if args.backend == 'postgres' else 'the database work included'})"
    )
    for kind, res in (("plain", plain_r), ("policy", policy_r)):
        pr = [a / b for a, b in zip(res, peer_r, strict=True)]
        print(
            f"ratio {kind}/peer: {' '.join(f'{x:.2f}' for x in pr)} -> median {statistics.median(pr):.2f}x"
            f" (goal >= {goal_peer}x against {peer_name})"
        )
    print(
        f"sanity (as the bench saw it): {broken['order']} claims before their prerequisites completed,"
        f" {broken['lock']} of a held lock, {broken['cap']} beyond a cap"
    )
    print(load_line() + " at the end")


async def review_usage_main(args: argparse.Namespace) -> None:
    plain = plain_shape(args.items, args.packages)
    shapes = {
        "plain": plain,
        "review+usage": review_usage_shape(args.items, args.packages, approve=False),
        "full cycle": review_usage_shape(args.items, args.packages, approve=True),
    }
    items = sum(len(p.items) for p in plain.packages)
    print(machine_line("bench_store.py --review-usage"))
    print(
        f"backend={args.backend} items={items} claimers={args.claimers} packages={args.packages}"
        f" rounds={args.rounds}; each drain in a fresh database"
    )
    for kind in ("review+usage", "full cycle"):
        print(f"{kind} drain: {shapes[kind].description}")
    print("plain drain: the same packages and items, no review, no usage")
    rate: dict[str, list[float]] = {kind: [] for kind in shapes}
    cpu: dict[str, list[float]] = {kind: [] for kind in shapes}
    for r in range(args.rounds):
        order = list(shapes) if r % 2 == 0 else list(reversed(shapes))
        got: dict[str, Drain] = {}
        for kind in order:
            got[kind] = await drain_fresh(args, shapes[kind])
        for kind, d in got.items():
            rate[kind].append(d.items_per_s)
            cpu[kind].append(d.cpu_per_item)
        a, b, c = got["plain"], got["review+usage"], got["full cycle"]
        print(
            f"round {r + 1} ({' then '.join(order)}): plain {a.items_per_s:7.0f} items/s"
            f" ({a.cpu_per_item * 1e6:.0f} us CPU/item) | review+usage {b.items_per_s:7.0f}"
            f" ({b.cpu_per_item * 1e6:.0f} us) | full cycle {c.items_per_s:7.0f} ({c.cpu_per_item * 1e6:.0f} us)"
            f" | review+usage/plain {b.items_per_s / a.items_per_s:.2f}x,"
            f" full cycle/plain {c.items_per_s / a.items_per_s:.2f}x  {load_line()}"
        )
    print("median items/s: " + ", ".join(f"{kind} {statistics.median(rate[kind]):.0f}" for kind in shapes))
    where = "client side only" if args.backend == "postgres" else "the database work included"
    for kind, goal in (
        ("review+usage", " (the figure; goal >= 0.85)"),
        ("full cycle", " (+ an approval each)"),
    ):
        ratios = [b / a for a, b in zip(rate["plain"], rate[kind], strict=True)]
        cpu_r = [b / a for a, b in zip(cpu["plain"], cpu[kind], strict=True)]
        print(
            f"ratio {kind}/plain: {' '.join(f'{x:.2f}' for x in ratios)} -> median"
            f" {statistics.median(ratios):.2f}x{goal}; CPU per item of this process:"
            f" {' '.join(f'{x:.2f}' for x in cpu_r)} -> median {statistics.median(cpu_r):.2f}x ({where})"
        )
    print(load_line() + " at the end")


if __name__ == "__main__":
    asyncio.run(main())
