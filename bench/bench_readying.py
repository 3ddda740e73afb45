"""The cost of readying dependents: a completion's time against the run's size, at 1k … 1M items.

For each size, a fresh database and one run of that many items, planned once through the store (in plans
of at most 100,000 items each, extending the run) and not timed:
- package `src`: --completions sources `s<k>`, each with --dependents dependents, interleaved with as many
  lone items `z<k>` that nothing waits for (the same completion without readying);
- packages `d0` … `d<D-1>`: item `<k>` of each `after` "src/s<k>" (so completing s<k> readies D items,
  one in each of D packages: D waiting counts, D blocked → pending, D `ready` events, counters);
- the rest filler, in packages of 10,000: each filler item `after` one earlier item of its package (a
  binary tree), so the run holds about as many stored edges as items and nearly all of it is blocked.
Then the items of `src` are claimed one at a time and only each `complete` is timed (claims are not; the
first few, lone items, are completed untimed to warm up).
Prints, per size, the median and p90 time of a completion with D dependents and without, the readying
cost per dependent ((with − without) / D), and each median's ratio to the smallest size: flat (≈ 1.0
from 1k to 1M) means the cost follows the dependents, not the run. After the completions the bench checks
that every dependent is pending and the filler still blocked.

    python bench/bench_readying.py --backend sqlite [--sizes 1000,10000,100000,1000000] [--dependents 10]
    python bench/bench_readying.py --backend postgres [--database-url URL] [--completions 50]

The 1M plan takes minutes (it is the setup, printed, not the figure); smoke runs: --sizes 1000,10000.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_store import DEFAULT_PG, fresh_pg_database, load_line, machine_line, new_item, new_package
from matrix_mcp.models import RunPolicy
from matrix_mcp.rules import new_token
from matrix_mcp.store.params import ClaimRequest, NewPackage, Report
from matrix_mcp.store.protocol import Store

FILLER_PACKAGE = 10_000
PLAN_CHUNK = 100_000
WARM_UP = 5  # lone items completed first, untimed (caches, the checkpointer after a big plan)


@dataclass
class Layout:
    packages: list[NewPackage]
    edges: int
    filler: int
    filler_roots: int


def layout(size: int, sources: int, dependents: int) -> Layout:
    head = WARM_UP + 2 * sources + sources * dependents
    if size < head:
        raise SystemExit(f"size {size} is smaller than the measured items ({head}); lower --completions")
    src = [new_item("src", f"w{k}") for k in range(WARM_UP)]
    src += [new_item("src", name) for k in range(sources) for name in (f"s{k}", f"z{k}")]
    packages = [new_package("src", src)]
    packages += [
        new_package(f"d{d}", [new_item(f"d{d}", f"{k}", after=[f"src/s{k}"]) for k in range(sources)])
        for d in range(dependents)
    ]
    filler = size - head
    edges = sources * dependents
    roots = 0
    for c, start in enumerate(range(0, filler, FILLER_PACKAGE)):
        n = min(FILLER_PACKAGE, filler - start)
        items = [new_item(f"f{c}", f"i{j}", after=[f"f{c}/i{(j - 1) // 2}"] if j else []) for j in range(n)]
        packages.append(new_package(f"f{c}", items))
        edges += n - 1
        roots += 1
    return Layout(packages, edges, filler, roots)


@asynccontextmanager
async def fresh_store(args: argparse.Namespace) -> AsyncIterator[Store]:
    if args.backend == "postgres":
        from matrix_mcp.store.postgres import PostgresStore

        async with fresh_pg_database(args.database_url) as url:
            # a plan of 100,000 items with edges is one transaction: longer than the default deadline
            store = await PostgresStore.open(url, deadline=600)
            try:
                yield store
            finally:
                await store.close()
    else:
        from matrix_mcp.store.sqlite import SQLiteStore

        with tempfile.TemporaryDirectory() as tmp:
            sstore = await SQLiteStore.open(Path(tmp) / "matrix.db")
            try:
                yield sstore
            finally:
                await sstore.close()


@dataclass
class Sized:
    size: int
    edges: int
    plan_s: float
    with_deps: list[float]
    without: list[float]


async def one_size(args: argparse.Namespace, size: int) -> Sized:
    shape = layout(size, args.completions, args.dependents)
    async with fresh_store(args) as store:
        t0 = time.perf_counter()
        run_id = ""
        chunk: list[NewPackage] = []
        count = 0

        async def flush() -> None:
            nonlocal run_id, chunk, count
            result = await store.plan(
                name="ready", goal=None, policy=RunPolicy(), packages=chunk, now=time.time()
            )
            run_id = result.run.id
            chunk, count = [], 0

        for package in shape.packages:
            if count + len(package.items) > PLAN_CHUNK and chunk:
                await flush()
            chunk.append(package)
            count += len(package.items)
        await flush()
        plan_s = time.perf_counter() - t0
        with_deps: list[float] = []
        without: list[float] = []
        request = ClaimRequest(run_id=run_id, worker="w", limit=1, package="src", token_factory=new_token)
        for i in range(WARM_UP + 2 * args.completions):
            batch = await store.claim(request, now=time.time())
            (claim,) = batch.claims
            if i < WARM_UP:
                await store.complete(
                    claim.outcome_id, lease_token=claim.lease_token, report=Report(), now=time.time()
                )
                continue
            t0 = time.perf_counter()
            await store.complete(
                claim.outcome_id, lease_token=claim.lease_token, report=Report(), now=time.time()
            )
            elapsed = time.perf_counter() - t0
            (with_deps if claim.item.startswith("s") else without).append(elapsed)
        run = await store.get_run(run_id)
        counts = run.counts
        expect_pending = shape.filler_roots + args.completions * args.dependents
        assert counts.complete == WARM_UP + 2 * args.completions, counts
        assert counts.pending == expect_pending, (counts, expect_pending)
        assert counts.blocked == shape.filler - shape.filler_roots, counts
    return Sized(size, shape.edges, plan_s, with_deps, without)


def us(x: float) -> str:
    return f"{x * 1e6:8.0f} us"


def p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument(
        "--sizes", default="1000,10000,100000,1000000", help="run sizes in items, comma-separated"
    )
    ap.add_argument("--dependents", type=int, default=10, help="dependents of each measured source item")
    ap.add_argument(
        "--completions", type=int, default=50, help="measured completions of each kind (with and without)"
    )
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL server (a fresh database per size)"
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(machine_line("bench_readying.py"))
    print(
        f"backend={args.backend} sizes={sizes} dependents={args.dependents} completions={args.completions}"
        " of each kind per size; only `complete` is timed; a fresh database per size"
    )
    results: list[Sized] = []
    for size in sizes:
        r = await one_size(args, size)
        results.append(r)
        print(
            f"size {size:>8} items, {r.edges:>8} edges (plan {r.plan_s:.1f} s, not timed):"
            f" complete with {args.dependents} dependents median {us(statistics.median(r.with_deps))}"
            f" p90 {us(p90(r.with_deps))}; without median {us(statistics.median(r.without))}"
            f" p90 {us(p90(r.without))}  {load_line()}"
        )
    base = results[0]
    bw, bo = statistics.median(base.with_deps), statistics.median(base.without)
    print(
        f"\n{'items':>9} | {'with ' + str(args.dependents) + ' deps':>12} | {'ratio':>6} | {'without':>10} |"
        f" {'ratio':>6} | per dependent"
    )
    for r in results:
        w, o = statistics.median(r.with_deps), statistics.median(r.without)
        print(
            f"{r.size:>9} | {us(w):>12} | {w / bw:6.2f} | {us(o):>10} | {o / bo:6.2f} |"
            f" {(w - o) / args.dependents * 1e6:7.1f} us"
        )
    print(
        f"ratios are to the {base.size}-item run; flat (about 1.0) = cost follows the dependents, not the run"
    )
    print(load_line() + " at the end")


if __name__ == "__main__":
    asyncio.run(main())
