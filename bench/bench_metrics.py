"""A /metrics scrape after a plan of many packages: its time, its size, and what it costs a /healthz
request sent while it runs (the event loop it shares).

The store is planned directly (one engine call), then a server (`matrix-mcp serve --transport
streamable-http`, as bench_http starts it) is scraped: 5 warm-up scrapes, then 50, each with a /healthz
sent 1 ms into it.

    python bench/bench_metrics.py [--packages 20000] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import anyio
import httpx2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_http import drop_database, load, pg_database, servers

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec


async def plan(url: str, artifacts: str, packages: int) -> None:
    engine = await Engine.open(Settings(database_url=url, artifacts_dir=artifacts))
    try:
        specs = [PackageSpec(name=f"package-{i:05d}", items=["a"]) for i in range(packages)]
        await engine.plan_run("big", packages=specs)
    finally:
        await engine.close()


async def scrape(label: str, url: str, artifacts: str, packages: int) -> None:
    t0 = time.perf_counter()
    await plan(url, artifacts, packages)
    planned = time.perf_counter() - t0
    with servers(url, artifacts, 1) as [(base, _)]:
        times: list[float] = []
        stalls: list[float] = []
        async with httpx2.AsyncClient(timeout=30) as http:
            for _ in range(5):
                r = await http.get(f"{base}/metrics")
            for _ in range(50):
                beside: list[float] = []

                async def health(into: list[float] = beside) -> None:
                    await anyio.sleep(0.001)
                    h0 = time.perf_counter()
                    await http.get(f"{base}/healthz")
                    into.append(time.perf_counter() - h0)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(health)
                    s0 = time.perf_counter()
                    r = await http.get(f"{base}/metrics")
                    times.append(time.perf_counter() - s0)
                stalls.extend(beside)
    times.sort()
    stalls.sort()
    print(
        f"   {label:<10} {packages} packages (planned in {planned:.1f} s): scrape p50"
        f" {statistics.median(times) * 1000:.1f} ms, p95 {times[47] * 1000:.1f} ms, {len(r.content)} bytes,"
        f" {r.text.count(chr(10))} lines (goal ≤ 20 ms); /healthz during it p50"
        f" {statistics.median(stalls) * 1000:.1f} ms, max {stalls[-1] * 1000:.1f} ms; load average {load()}"
    )


async def main(args: argparse.Namespace) -> None:
    print(f"/metrics after a plan of {args.packages} packages (50 scrapes); load average {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        await scrape("sqlite", f"sqlite:///{tmp}/m.db", f"{tmp}/a", args.packages)
        if args.postgres != "off":
            name, url = pg_database(args.postgres)
            try:
                await scrape("postgresql", url, f"{tmp}/pa", args.packages)
            finally:
                drop_database(args.postgres, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=20_000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MATRIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL URL, or off",
    )
    anyio.run(main, parser.parse_args())
