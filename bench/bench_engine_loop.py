"""Engine claim + complete in process (no MCP, no stdio): what the store and engine cost per item.

One engine, one worker, `claim_items` + `complete_item` with 4 KiB of content and without, interleaved in
rounds; prints the median ms per item of each. Run it from two checkouts back to back to compare code.

    python bench/bench_engine_loop.py [--items 2000] [--rounds 4] [--backend sqlite|postgres]

`--tracing [--pairs 4] [--variant …]`: tracing off against one or more ways of having it on, in rounds. Each
round runs the loop once per side, each in a fresh process (a process has one tracer provider), back to
back, the order rotating from round to round so that the machine's load falls on every side alike. Off:
no OTEL_* variable (the spans are the OpenTelemetry API's no-ops). On: OTEL_EXPORTER_OTLP_ENDPOINT
pointing at a local OTLP/HTTP receiver (tests/otlp_receiver.py, in this process), i.e. the real
BatchSpanProcessor + OTLP/HTTP protobuf exporter, plus the variant's own variables. A variant is
`NAME[@TREE][:VAR=VALUE,…]`: TREE is another checkout (e.g. main's) whose code that side runs. Without
--variant: `default` (the shipped default sampler) and `always-on` (OTEL_TRACES_SAMPLER=parentbased_always_on,
every span kept). Prints every round, the on/off ratio of each variant per round and the median, the CPU
ratio, the load average, and the spans the receiver got per variant.

    python bench/bench_engine_loop.py --tracing --backend sqlite --items 500 --rounds 3 --pairs 4
    python bench/bench_engine_loop.py --tracing --variant main@/work/main --variant default
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
DEFAULT_VARIANTS = ["default", "always-on:OTEL_TRACES_SAMPLER=parentbased_always_on"]


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


class Side:
    """One side of a round: tracing off, or on with `env` added, running `tree`'s code."""

    def __init__(self, spec: str | None) -> None:
        self.env: dict[str, str] = {}
        self.tree = Path(__file__).resolve().parent.parent
        if spec is None:
            self.name, self.on = "off", False
            return
        self.on = True
        head, _, variables = spec.partition(":")
        self.name, _, tree = head.partition("@")
        if tree:
            self.tree = Path(tree).resolve()
        for pair in filter(None, variables.split(",")):
            key, sep, value = pair.partition("=")
            if not sep:
                sys.exit(f"--variant {spec}: {pair!r} is not VAR=VALUE")
            self.env[key] = value
        self.env["OTEL_SERVICE_NAME"] = f"bench-{self.name}"


def run_side(args: argparse.Namespace, tmp: str, side: Side, endpoint: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if side.on:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env.update(side.env)
    env["PYTHONPATH"] = str(side.tree)
    with database(args.backend, tmp, args.database_url) as url:
        argv = [sys.executable, str(side.tree / "bench" / "bench_engine_loop.py"), "--child"]
        argv += ["--database-url", url, "--artifacts", str(Path(tmp) / uuid.uuid4().hex[:8])]
        argv += ["--items", str(args.items), "--rounds", str(args.rounds)]
        done = subprocess.run(argv, env=env, cwd=side.tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench child ({side.name}) failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def pairs(args: argparse.Namespace) -> None:
    from tests.otlp_receiver import OTLPReceiver

    variants = [Side(v) for v in args.variant or DEFAULT_VARIANTS]
    sides = [Side(None), *variants]
    ratios: dict[tuple[str, str], list[float]] = {(v.name, kind): [] for v in variants for kind in KINDS}
    cpu_ratios: dict[tuple[str, str], list[float]] = {(v.name, kind): [] for v in variants for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp, OTLPReceiver(decode_now=False) as receiver:
        print(
            f"{args.backend}: claim+complete in process, {args.items} items x {args.rounds} rounds per kind,"
            f" median ms/item per side; tracing on = OTLP/HTTP to a receiver on 127.0.0.1; variants: "
            + "; ".join(
                f"{v.name} ({v.tree}{' ' if v.env else ''}{' '.join(f'{k}={x}' for k, x in v.env.items() if k != 'OTEL_SERVICE_NAME')})"
                for v in variants
            )
            + f"; load average {load()}",
            flush=True,
        )
        for n in range(args.pairs):
            shift = n % len(sides)
            order = sides[shift:] + sides[:shift]
            got = {side.name: run_side(args, tmp, side, receiver.endpoint) for side in order}
            off = got["off"]
            cells = []
            for kind in KINDS:
                line = [f"{kind}: off {off[kind]:.3f} (CPU {off[f'cpu {kind}']:.3f})"]
                for v in variants:
                    on = got[v.name]
                    ratio, cpu_ratio = on[kind] / off[kind], on[f"cpu {kind}"] / off[f"cpu {kind}"]
                    ratios[(v.name, kind)].append(ratio)
                    cpu_ratios[(v.name, kind)].append(cpu_ratio)
                    line.append(
                        f"{v.name} {on[kind]:.3f} ({ratio:.3f}x; CPU {on[f'cpu {kind}']:.3f}, {cpu_ratio:.3f}x)"
                    )
                cells.append(", ".join(line))
            print(
                f"round {n + 1} ({' then '.join(s.name for s in order)}; load {load()}): " + "; ".join(cells),
                flush=True,
            )
        received = receiver.spans()
    per_loop = 2 * (2 * args.rounds * args.items + WARM_UP) + 1  # claims, completes, the plan
    for v in variants:
        for kind in KINDS:
            values = ", ".join(f"{r:.3f}" for r in ratios[(v.name, kind)])
            cpu_values = ", ".join(f"{r:.3f}" for r in cpu_ratios[(v.name, kind)])
            print(
                f"{v.name}, {kind}: on/off median {statistics.median(ratios[(v.name, kind)]):.3f}x ({values});"
                f" CPU median {statistics.median(cpu_ratios[(v.name, kind)]):.3f}x ({cpu_values})"
            )
        kept = sum(1 for s in received if s.service == f"bench-{v.name}")
        print(
            f"{v.name}: spans received {kept} of {args.pairs * per_loop} made ({kept / (args.pairs * per_loop):.1%})"
        )
    print(f"load average at the end {load()}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000, help="items per round and kind")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL: where to create the bench database"
    )
    ap.add_argument("--tracing", action="store_true", help="tracing off vs on, in rounds of processes")
    ap.add_argument("--pairs", type=int, default=4, help="rounds (each runs every side once)")
    ap.add_argument(
        "--variant",
        action="append",
        metavar="NAME[@TREE][:VAR=VALUE,...]",
        help="a tracing-on side (repeatable); default: `default` and `always-on`",
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
