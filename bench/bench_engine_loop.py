"""Engine claim + complete in process (no MCP, no stdio): what the store and engine cost per item.

One engine, one worker, `claim_items` + `complete_item` with 4 KiB of content and without, interleaved in
rounds; prints the median ms per item of each. Run it from two checkouts back to back to compare code.

    python bench/bench_engine_loop.py [--items 2000] [--rounds 4] [--backend sqlite|postgres]

`--tracing [--pairs 4]`: tracing on against off, side by side. Each pair runs the loop twice, each in a
fresh process (a process has one tracer provider), back to back, alternating which goes first: once with
no OTEL_* variable (the spans are the OpenTelemetry API's no-ops) and once with
OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local OTLP/HTTP receiver (tests/otlp_receiver.py, in this
process), i.e. the real BatchSpanProcessor + OTLP/HTTP protobuf exporter. Prints every pair, the on/off
ratio per pair and the median ratio, and checks the receiver got every span.

    python bench/bench_engine_loop.py --tracing --backend sqlite --items 500 --rounds 3 --pairs 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec

CONTENT_4K = ("x" * 63 + "\n") * 64
KINDS = ("4 KiB content", "no content")
DEFAULT_PG = os.environ.get("MATRIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 50


async def loop(
    database_url: str, artifacts: Path, items: int, rounds: int, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """ms per item of each kind, per round (and into `cpu`: the process's CPU ms per item, every thread)."""
    settings = Settings(database_url=database_url, artifacts_dir=artifacts)
    engine = await Engine.open(settings)
    try:
        total = 2 * rounds * items + WARM_UP
        names = [f"i{k}" for k in range(total)]
        await engine.plan_run("bench", packages=[PackageSpec(name="p", items=names)])

        async def one(content: str | None) -> None:
            item = (await engine.claim_items("bench", worker="w")).items[0]
            await engine.complete_item(
                item.outcome_id,
                lease_token=item.lease_token,
                metrics={"lines_generated": 1},
                content=content,
            )

        for _ in range(WARM_UP):
            await one(CONTENT_4K)
        per: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(rounds):
            for kind, content in zip(KINDS, (CONTENT_4K, None), strict=True):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(items):
                    await one(content)
                per[kind].append((time.perf_counter() - t0) / items * 1000)
                if cpu is not None:
                    cpu.setdefault(kind, []).append((time.process_time() - c0) / items * 1000)
        return per
    finally:
        await engine.close()


@contextmanager
def database(backend: str, tmp: str, base_url: str) -> Iterator[str]:
    """A fresh store: a SQLite file, or a PostgreSQL database created for the run and dropped after it."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:8]}.db"
        return
    import psycopg
    from psycopg import sql

    name = "matrix_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield base_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def child(args: argparse.Namespace) -> None:
    """One side of a pair, in its own process: tracing as the environment says, like `matrix-mcp`."""
    from matrix_mcp import tracing

    exporting = tracing.start()
    cpu: dict[str, list[float]] = {}
    per = await loop(args.database_url, Path(args.artifacts), args.items, args.rounds, cpu)
    if exporting is not None:
        exporting.shutdown()  # outside the timed loop: sends what is still queued
    found = {kind: statistics.median(values) for kind, values in per.items()}
    found.update({f"cpu {kind}": statistics.median(values) for kind, values in cpu.items()})
    print(json.dumps(found))


def run_side(args: argparse.Namespace, tmp: str, endpoint: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env.update(dict(v.split("=", 1) for v in args.on_env))
    with database(args.backend, tmp, args.database_url) as url:
        argv = [sys.executable, __file__, "--child", "--database-url", url]
        argv += ["--artifacts", str(Path(tmp) / uuid.uuid4().hex[:8]), "--items", str(args.items)]
        argv += ["--rounds", str(args.rounds)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench child failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def pairs(args: argparse.Namespace) -> None:
    from tests.otlp_receiver import OTLPReceiver

    ratios: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu_ratios: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp, OTLPReceiver(decode_now=False) as receiver:
        extra = f" ({' '.join(args.on_env)})" if args.on_env else ""
        print(
            f"{args.backend}: claim+complete in process, {args.items} items x {args.rounds} rounds per kind,"
            f" median ms/item per side; tracing on = OTLP/HTTP to a receiver on 127.0.0.1{extra}"
        )
        for n in range(args.pairs):
            order = ("off", "on") if n % 2 == 0 else ("on", "off")
            got = {side: run_side(args, tmp, receiver.endpoint if side == "on" else None) for side in order}
            cells = []
            for kind in KINDS:
                ratio = got["on"][kind] / got["off"][kind]
                ratios[kind].append(ratio)
                cpu_ratio = got["on"][f"cpu {kind}"] / got["off"][f"cpu {kind}"]
                cpu_ratios[kind].append(cpu_ratio)
                cells.append(
                    f"{kind}: off {got['off'][kind]:.3f} on {got['on'][kind]:.3f} ({ratio:.3f}x;"
                    f" CPU {got['off'][f'cpu {kind}']:.3f} vs {got['on'][f'cpu {kind}']:.3f}, {cpu_ratio:.3f}x)"
                )
            print(f"pair {n + 1} ({' then '.join(order)}): " + "; ".join(cells), flush=True)
        spans = len(receiver.spans())
    expected = args.pairs * (2 * (2 * args.rounds * args.items + WARM_UP) + 1)  # claims, completes, the plan
    for kind in KINDS:
        values = ", ".join(f"{r:.3f}" for r in ratios[kind])
        print(f"{kind}: on/off median {statistics.median(ratios[kind]):.3f}x (pairs: {values})")
        cpu_values = ", ".join(f"{r:.3f}" for r in cpu_ratios[kind])
        print(f"{kind}: CPU on/off median {statistics.median(cpu_ratios[kind]):.3f}x (pairs: {cpu_values})")
    print(f"spans received: {spans} of {expected}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000, help="items per round and kind")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL: where to create the bench database"
    )
    ap.add_argument("--tracing", action="store_true", help="tracing on vs off, in pairs of processes")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument(
        "--on-env", action="append", default=[], metavar="VAR=VALUE", help="more OTEL_* for the tracing side"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        await child(args)
        return
    if args.tracing:
        pairs(args)
        return
    with tempfile.TemporaryDirectory() as tmp, database(args.backend, tmp, args.database_url) as url:
        per = await loop(url, Path(tmp) / "artifacts", args.items, args.rounds)
    for kind, values in per.items():
        print(
            f"claim+complete in process, {kind}: {statistics.median(values):.3f} ms/item"
            f" (rounds: {', '.join(f'{v:.3f}' for v in values)})"
        )


if __name__ == "__main__":
    anyio.run(main)
