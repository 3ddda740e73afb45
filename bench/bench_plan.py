"""Planning a run with dependencies: `plan_run` of 10,000 items with 20,000 edges beside the same items
without edges, through the engine (validation, cycle check and the store's plan transaction), in one run.

Three plans of the same 100 packages × 100 items (--packages × --items-per-package), each a new run in
one database, in rotating order for --reps rounds so the machine's load falls on every kind alike:
- `none`: no edges (today's plan);
- `items`: --edges `after` references between items (ItemSpec.after), each to an earlier item (so no
  cycle): half a bare "item" of the same package where there is one, the rest "package/item" anywhere;
- `packages`: PackageSpec.after, each package after the two before it, i.e. one stored edge per item
  and package it waits for (about 2 × items; 19,700 at the default size).
Prints each plan's wall time, the share of it inside `store.plan` (the rest is the engine: models, names,
references, the cycle check), the median of each kind and the ratio to `none`. Goal: `items` ≤ 1 s on
SQLite and PostgreSQL.

    python bench/bench_plan.py --backend sqlite [--reps 3] [--edges 20000]
    python bench/bench_plan.py --backend postgres [--database-url URL] [--profile]

--profile: after the timed rounds, one more `items` plan under cProfile; prints the top functions by
cumulative and by own time (where the time goes when the goal is missed).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_store import DEFAULT_PG, fresh_pg_database, load_line, machine_line
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import ItemSpec, PackageSpec

KINDS = ("none", "items", "packages")


def grid(
    packages: int, per: int, kind: str, edges: int, seed: int = 11
) -> tuple[list[PackageSpec], int, int]:
    """The plan of one kind, the number of edges it stores and of items it leaves blocked."""
    rnd = random.Random(seed)
    after: dict[int, set[str]] = {}
    stored = 0
    if kind == "items":
        n = packages * per
        if edges > n * (n - 1) // 2:
            raise SystemExit(f"--edges {edges}: more than a DAG of {n} items can hold")
        pairs: set[tuple[int, int]] = set()
        while len(pairs) < edges:
            b = rnd.randrange(1, n)
            pb, jb = divmod(b, per)
            a = pb * per + rnd.randrange(jb) if jb and rnd.random() < 0.5 else rnd.randrange(b)
            pairs.add((a, b))
        for a, b in pairs:
            pa, ja = divmod(a, per)
            pb = b // per
            after.setdefault(b, set()).add(f"i{ja:03d}" if pa == pb else f"p{pa:03d}/i{ja:03d}")
        stored = len(pairs)
    plan = []
    for p in range(packages):
        package_after = [f"p{q:03d}" for q in range(max(0, p - 2), p)] if kind == "packages" else []
        stored += len(package_after) * per
        items: list[str | ItemSpec] = [
            ItemSpec(name=f"i{j:03d}", after=sorted(after[p * per + j]))
            if p * per + j in after
            else f"i{j:03d}"
            for j in range(per)
        ]
        plan.append(PackageSpec(name=f"p{p:03d}", items=items, after=package_after))
    blocked = len(after) if kind == "items" else (packages - 1) * per if kind == "packages" else 0
    return plan, stored, blocked


async def measure(engine: Engine, args: argparse.Namespace) -> None:
    plans = {kind: grid(args.packages, args.items_per_package, kind, args.edges) for kind in KINDS}
    store_s: list[float] = []
    original = engine.store.plan

    async def timed_plan(**kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original(**kw)
        finally:
            store_s.append(time.perf_counter() - t0)

    engine.store.plan = timed_plan  # type: ignore[method-assign]
    await engine.plan_run(
        "warm-up", packages=[PackageSpec(name="w", items=["a", ItemSpec(name="b", after=["a"])])]
    )
    items = args.packages * args.items_per_package
    print(
        f"sizes: {items} items ({args.packages} packages x {args.items_per_package});"
        + "; ".join(f" {kind}: {plans[kind][1]} stored edges" for kind in KINDS)
    )
    wall: dict[str, list[float]] = {kind: [] for kind in KINDS}
    inner: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in range(args.reps):
        order = KINDS[r % 3 :] + KINDS[: r % 3]
        line = []
        for kind in order:
            store_s.clear()
            t0 = time.perf_counter()
            result = await engine.plan_run(f"plan-{kind}-{r}", packages=plans[kind][0])
            wall[kind].append(time.perf_counter() - t0)
            inner[kind].append(sum(store_s))
            assert result.added_items == items, result
            assert result.run.counts.blocked == plans[kind][2], (kind, result.run.counts)
            line.append(f"{kind} {wall[kind][-1] * 1000:6.0f} ms (store {inner[kind][-1] * 1000:.0f})")
        print(f"round {r + 1}: " + " | ".join(line) + f"  {load_line()}")
    base = statistics.median(wall["none"])
    for kind in KINDS:
        med = statistics.median(wall[kind])
        goal = " (goal <= 1000 ms)" if kind == "items" else ""
        print(
            f"median {kind:<8}: {med * 1000:6.0f} ms{goal}, of it in store.plan"
            f" {statistics.median(inner[kind]) * 1000:.0f} ms; {med / base:.2f}x the plan without edges"
        )
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        await engine.plan_run("plan-profiled", packages=plans["items"][0])
        prof.disable()
        for key in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats(key).print_stats(25)
            print(f"cProfile of one `items` plan, top 25 by {key}:\n{out.getvalue()}")


async def with_engine(args: argparse.Namespace, body: Callable[[Engine], Awaitable[None]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "postgres":
            async with fresh_pg_database(args.database_url) as url:
                engine = await Engine.open(Settings(database_url=url, artifacts_dir=Path(tmp) / "a"))
                try:
                    await body(engine)
                finally:
                    await engine.close()
        else:
            db = Path(tmp) / "matrix.db"
            engine = await Engine.open(
                Settings(database_url=f"sqlite:///{db}", artifacts_dir=Path(tmp) / "a")
            )
            try:
                await body(engine)
            finally:
                await engine.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--packages", type=int, default=100)
    ap.add_argument("--items-per-package", type=int, default=100)
    ap.add_argument("--edges", type=int, default=20000, help="item references of the `items` plan")
    ap.add_argument("--reps", type=int, default=3, help="rounds (each plans every kind once)")
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL server (a fresh database is created)"
    )
    ap.add_argument("--profile", action="store_true", help="cProfile one more `items` plan")
    args = ap.parse_args()
    print(machine_line("bench_plan.py"))
    print(f"backend={args.backend} reps={args.reps}; every plan a new run in one fresh database")
    await with_engine(args, lambda engine: measure(engine, args))
    print(load_line() + " at the end")


if __name__ == "__main__":
    asyncio.run(main())
