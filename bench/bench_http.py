"""The team service's costs, measured side by side in one run.

1. per call over HTTP, authenticated with an API key ÷ the same server open (no key or JWT configured):
   `list_runs` through the SDK client, both servers started the same way (`matrix-mcp serve --transport
   streamable-http`, same limits), calls interleaved round by round, medians; both protocol eras.
2. items/s with 2 replicas vs 1 on one PostgreSQL database, 16 concurrent HTTP workers (claim 1 +
   complete, the per-item agent loop), alternating between replicas call by call; with the CPU seconds
   each process used (where the time goes: replicas, the client process, PostgreSQL's backends).
3. a /metrics scrape with 100 packages (PostgreSQL and SQLite), p50 / p95.

    python bench/bench_http.py [--calls 400] [--items 2000] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
import psycopg
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

SCRIPT = shutil.which("matrix-mcp") or "matrix-mcp"
FAST = {"MATRIX_RATE_LIMIT": "1000000/minute", "MATRIX_LOG_LEVEL": "WARNING"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    """The 1-minute load average: other work on this shared machine competes for the same 2 cores."""
    return Path("/proc/loadavg").read_text().split()[0]


def postgres_cpu() -> float:
    """CPU seconds of every postgres process (the cluster is shared: other work shows up too)."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(d.name))
            except OSError:
                continue
    return total


@contextmanager
def servers(
    url: str, artifacts: str, count: int, *extra: str, env: dict[str, str] | None = None
) -> Iterator[list[tuple[str, int]]]:
    ports = [free_port() for _ in range(count)]
    procs = [
        subprocess.Popen(
            [
                SCRIPT,
                "--database-url",
                url,
                "--artifacts-dir",
                artifacts,
                "serve",
                "--transport",
                "streamable-http",
                "--port",
                str(p),
                *extra,
            ],
            env={**os.environ, **FAST, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        for p in ports:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx2.get(f"http://127.0.0.1:{p}/readyz", timeout=2).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("a server did not start")
                time.sleep(0.1)
        yield [(f"http://127.0.0.1:{p}", proc.pid) for p, proc in zip(ports, procs, strict=True)]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)


def client(base: str, token: str | None, mode: str) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return Client(
        streamable_http_client(f"{base}/mcp", http_client=create_mcp_http_client(headers=headers)), mode=mode
    )  # type: ignore[arg-type]


def create_key(url: str, artifacts: str, name: str, *scopes: str) -> str:
    args = [SCRIPT, "--database-url", url, "--artifacts-dir", artifacts, "keys", "create", name]
    for s in scopes:
        args += ["--scope", s]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


async def per_call(calls: int, tmp: str) -> None:
    secured = f"sqlite:///{tmp}/secured.db"
    open_url = f"sqlite:///{tmp}/open.db"
    key = create_key(secured, f"{tmp}/a1", "bench", "read")
    print(f"1. per call over HTTP (list_runs), API key vs open, {calls} calls each, interleaved")
    with (
        servers(secured, f"{tmp}/a1", 1) as [(auth_base, _)],
        servers(open_url, f"{tmp}/a2", 1) as [(open_base, _)],
    ):
        for mode in ("auto", "legacy"):
            async with client(auth_base, key, mode) as a, client(open_base, None, mode) as o:
                ta: list[float] = []
                to: list[float] = []
                for _ in range(20):  # warm up
                    await a.call_tool("list_runs", {})
                    await o.call_tool("list_runs", {})
                for i in range(calls):
                    pair = [(a, ta), (o, to)] if i % 2 else [(o, to), (a, ta)]
                    for c, out in pair:
                        t0 = time.perf_counter()
                        r = await c.call_tool("list_runs", {})
                        out.append(time.perf_counter() - t0)
                        assert not r.is_error
            ma, mo = statistics.median(ta), statistics.median(to)
            print(
                f"   {mode:<6} authenticated p50 {ma * 1000:.2f} ms, open p50 {mo * 1000:.2f} ms,"
                f" ratio {ma / mo:.3f} (goal ≤ 1.05); means {statistics.mean(ta) * 1000:.2f} / {statistics.mean(to) * 1000:.2f} ms"
            )


def pg_database(base_url: str) -> tuple[str, str]:
    name = "bench_http_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    parts = urlsplit(base_url)
    return name, urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def commits(base_url: str, name: str) -> int:
    with psycopg.connect(base_url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


def drop_database(base_url: str, name: str) -> None:
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
        )


async def replicas(pg: str, items: int, tmp: str, workers: int = 16) -> None:
    print(f"2. items/s, {workers} HTTP workers (claim 1 + complete per item), {items} items, PostgreSQL")
    results: dict[int, float] = {}
    for count in (1, 2, 1, 2):
        name, url = pg_database(pg)
        try:
            key = create_key(url, f"{tmp}/r", "w", "work", "plan")
            with servers(url, f"{tmp}/r", count, "--stateless") as bases:
                async with client(bases[0][0], key, "auto") as c:
                    per = 100
                    packages = [
                        {"name": f"p{i}", "items": [f"i{j}" for j in range(per)]} for i in range(items // per)
                    ]
                    await c.call_tool("plan_run", {"name": "b", "packages": packages})
                pids = [pid for _, pid in bases]
                commits0 = commits(pg, name)
                cpu0 = [cpu_seconds(p) for p in pids]
                me0, pg0 = time.process_time(), postgres_cpu()

                async def work(n: int, key: str = key, bases: list[tuple[str, int]] = bases) -> None:
                    async with AsyncExitStack() as stack:
                        cs = [await stack.enter_async_context(client(b, key, "auto")) for b, _ in bases]
                        turn = n
                        while True:
                            got = (
                                await cs[turn % len(cs)].call_tool(
                                    "claim_items", {"run": "b", "worker": f"w{n}"}
                                )
                            ).structured_content or {}
                            turn += 1
                            if not got.get("items"):
                                if got.get("reason") == "done":
                                    return
                                await anyio.sleep(0.01)
                                continue
                            it = got["items"][0]
                            await cs[turn % len(cs)].call_tool(
                                "complete_item",
                                {"outcome_id": it["outcome_id"], "lease_token": it["lease_token"]},
                            )
                            turn += 1

                t0 = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for n in range(workers):
                        tg.start_soon(work, n)
                wall = time.perf_counter() - t0
                used = [cpu_seconds(p) - c0 for p, c0 in zip(pids, cpu0, strict=True)]
                me, pgc = time.process_time() - me0, postgres_cpu() - pg0
                await anyio.sleep(1.5)  # PostgreSQL publishes its statistics within a second
                per_commit = 2 * items / max(1, commits(pg, name) - commits0)
                rate = items / wall
                results.setdefault(count, 0.0)
                results[count] = max(results[count], rate)
                print(
                    f"   {count} replica(s): {rate:7.0f} items/s in {wall:.1f} s; CPU s: replicas "
                    + "+".join(f"{u:.1f}" for u in used)
                    + f", client {me:.1f}, postgres {pgc:.1f} (of {2 * wall:.1f} on 2 cores); load average {load()};"
                    f" {per_commit:.1f} tool calls per database commit"
                )
        finally:
            drop_database(pg, name)
    print(f"   best of two: 2 replicas ÷ 1 = {results[2] / results[1]:.2f}× (goal ≥ 1.3)")


async def scrape(pg: str, tmp: str) -> None:
    print("3. /metrics scrape with 100 packages (50 scrapes)")
    name, url = pg_database(pg)
    try:
        for label, db in (("postgresql", url), ("sqlite", f"sqlite:///{tmp}/m.db")):
            with servers(db, f"{tmp}/m", 1) as [(base, _)]:
                async with client(base, None, "auto") as c:
                    packages = [{"name": f"package-{i:03d}", "items": ["a", "b", "c"]} for i in range(100)]
                    await c.call_tool("plan_run", {"name": "m", "packages": packages})
                    got = await c.call_tool("claim_items", {"run": "m", "worker": "w", "limit": 50})
                    for it in (got.structured_content or {})["items"]:
                        await c.call_tool(
                            "complete_item",
                            {"outcome_id": it["outcome_id"], "lease_token": it["lease_token"]},
                        )
                times: list[float] = []
                floor: list[float] = []
                async with httpx2.AsyncClient() as http:
                    for _ in range(5):
                        await http.get(f"{base}/metrics")
                    for _ in range(50):  # interleaved with /healthz: what any request costs here
                        t0 = time.perf_counter()
                        r = await http.get(f"{base}/metrics")
                        t1 = time.perf_counter()
                        await http.get(f"{base}/healthz")
                        floor.append(time.perf_counter() - t1)
                        times.append(t1 - t0)
                size = len(r.content)
                times.sort()
                print(
                    f"   {label:<10} p50 {statistics.median(times) * 1000:.1f} ms, p95 {times[47] * 1000:.1f} ms"
                    f" ({size} bytes, {r.text.count(chr(10))} lines; goal ≤ 20 ms);"
                    f" /healthz p50 {statistics.median(floor) * 1000:.1f} ms; load average {load()}"
                )
    finally:
        drop_database(pg, name)


async def main(args: argparse.Namespace) -> None:
    print(f"load average at start: {load()} (2 cores, shared with other work)")
    with tempfile.TemporaryDirectory() as tmp:
        await per_call(args.calls, tmp)
        await replicas(args.postgres, args.items, tmp)
        await scrape(args.postgres, tmp)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MATRIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    anyio.run(main, parser.parse_args())
    sys.exit(0)
