"""Engine claim + complete in process (no MCP, no stdio): what the store and engine cost per item.

One engine, one worker, `claim_items` + `complete_item` with 4 KiB of content and without, interleaved in
rounds; prints the median ms per item of each. Run it from two checkouts back to back to compare code.

    python bench/bench_engine_loop.py [--items 2000] [--rounds 4] [--backend sqlite|postgres]

`--tracing [--rounds 10] [--variant …]`: tracing off against one or more ways of having it on, in lock
step. Every side is its own process (a process has one tracer provider), started once: it opens a store,
plans the run and warms up, then waits. The bench then hands out chunks of `--items` claim+completes, one
side at a time, each kind in turn, the order of the sides rotating from chunk to chunk: the machine's load
falls on every side alike, and a ratio is taken between chunks run seconds apart. Off: no OTEL_* variable
(the spans are the OpenTelemetry API's no-ops). On: OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local
OTLP/HTTP receiver (tests/support/otlp_receiver.py, in this process), i.e. the real BatchSpanProcessor + OTLP/HTTP
protobuf exporter, plus the variant's own variables. A variant is `NAME[@TREE][:VAR=VALUE,…]`: TREE is
another checkout (e.g. main's) whose `matrix_mcp` that side imports. Without --variant: `default` (the
shipped default sampler) and `always-on` (OTEL_TRACES_SAMPLER=parentbased_always_on, every span kept).
Prints every round (wall and CPU ms per item, every thread of the side's process), the on/off ratio of
each variant per round and the medians, the load average, and the spans the receiver got per variant.

    python bench/bench_engine_loop.py --tracing --backend sqlite --items 200 --rounds 10
    python bench/bench_engine_loop.py --tracing --backend postgres --variant main@/path/to/main --variant default
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
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio

# a --tracing side may run another checkout's code (MATRIX_BENCH_TREE); the bench's own helpers come from here
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if os.environ.get("MATRIX_BENCH_TREE"):
    sys.path.insert(0, os.environ["MATRIX_BENCH_TREE"])

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
    """One side, in its own process, tracing as the environment says (like `matrix-mcp`): plans and warms
    up, prints `ready`, then runs a chunk of `--items` of the kind each line of stdin names (its index in
    KINDS) and prints the chunk's wall and CPU ms per item, as JSON, until stdin closes."""
    from matrix_mcp import tracing

    exporting = tracing.start()
    settings = Settings(database_url=args.database_url, artifacts_dir=Path(args.artifacts))
    engine = await Engine.open(settings)
    try:
        names = [f"i{k}" for k in range(args.chunks * args.items + WARM_UP)]
        await engine.plan_run("bench", packages=[PackageSpec(name="p", items=names)])

        async def one(content: str | None) -> None:
            item = (await engine.claim_items("bench", worker="w")).items[0]
            await engine.complete_item(
                item.outcome_id, lease_token=item.lease_token, metrics={"lines_generated": 1}, content=content
            )

        for _ in range(WARM_UP):
            await one(CONTENT_4K)
        print(f"ready {Path(tracing.__file__).parent.parent}", flush=True)  # the tree it runs
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            content = (CONTENT_4K, None)[int(line)]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.items):
                await one(content)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(json.dumps({"ms": wall / args.items * 1000, "cpu": cpu / args.items * 1000}), flush=True)
    finally:
        await engine.close()
        if exporting is not None:
            exporting.shutdown()  # outside the timed chunks: sends what is still queued


class Side:
    """A tracing-off side, or a tracing-on variant with `env` added, running `tree`'s code."""

    def __init__(self, spec: str | None) -> None:
        self.env: dict[str, str] = {}
        self.tree = Path(__file__).resolve().parent.parent
        self.process: subprocess.Popen[str] | None = None
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

    def describe(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.env.items() if k != "OTEL_SERVICE_NAME")
        return f"{self.name} ({self.tree}{' ' + shown if shown else ''})"

    def start(self, args: argparse.Namespace, url: str, artifacts: Path, endpoint: str, chunks: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        if self.on:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
            env.update(self.env)
        env["MATRIX_BENCH_TREE"] = str(self.tree)
        argv = [sys.executable, __file__, "--child", "--database-url", url, "--artifacts", str(artifacts)]
        argv += ["--items", str(args.items), "--chunks", str(chunks)]
        self.process = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._read()

    def _read(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"bench side {self.name} exited {self.process.wait()} (its stderr is above)")
        return line

    def chunk(self, kind: int) -> dict[str, float]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"{kind}\n")
        self.process.stdin.flush()
        result: dict[str, float] = json.loads(self._read())
        return result

    def stop(self) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=120)


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def lock_step(args: argparse.Namespace) -> None:
    from tests.support.otlp_receiver import OTLPReceiver

    variants = [Side(v) for v in args.variant or DEFAULT_VARIANTS]
    sides = [Side(None), *variants]
    per_kind = len(sides)
    ratios: dict[tuple[str, str], list[float]] = {(v.name, k): [] for v in variants for k in KINDS}
    cpu_ratios: dict[tuple[str, str], list[float]] = {(v.name, k): [] for v in variants for k in KINDS}
    with (
        tempfile.TemporaryDirectory() as tmp,
        OTLPReceiver(decode_now=False) as receiver,
        ExitStack() as stack,
    ):
        print(
            f"{args.backend}: claim+complete in process, chunks of {args.items} items, {args.rounds} rounds"
            f" x {len(KINDS)} kinds x {per_kind} sides in lock step; tracing on = OTLP/HTTP to a receiver on"
            f" 127.0.0.1; variants: {'; '.join(v.describe() for v in variants)}; load average {load()}",
            flush=True,
        )
        try:
            for side in sides:
                url = stack.enter_context(database(args.backend, tmp, args.database_url))
                side.start(args, url, Path(tmp) / uuid.uuid4().hex[:8], receiver.endpoint, args.rounds * 2)
            turn = 0
            for n in range(args.rounds):
                cells = []
                for k, kind in enumerate(KINDS):
                    order = sides[turn % per_kind :] + sides[: turn % per_kind]
                    turn += 1
                    got = {side.name: side.chunk(k) for side in order}
                    off = got["off"]
                    line = [f"{kind}: off {off['ms']:.3f} (CPU {off['cpu']:.3f})"]
                    for v in variants:
                        on = got[v.name]
                        ratio, cpu_ratio = on["ms"] / off["ms"], on["cpu"] / off["cpu"]
                        ratios[(v.name, kind)].append(ratio)
                        cpu_ratios[(v.name, kind)].append(cpu_ratio)
                        line.append(
                            f"{v.name} {on['ms']:.3f} ({ratio:.3f}x; CPU {on['cpu']:.3f}, {cpu_ratio:.3f}x)"
                        )
                    cells.append(", ".join(line))
                print(f"round {n + 1} (load {load()}): " + "; ".join(cells), flush=True)
        finally:
            for side in sides:
                side.stop()
        received = receiver.spans()
    made = 2 * (args.rounds * 2 * args.items + WARM_UP) + 1  # claims, completes, the plan
    for v in variants:
        for kind in KINDS:
            values = ", ".join(f"{r:.3f}" for r in ratios[(v.name, kind)])
            cpu_values = ", ".join(f"{r:.3f}" for r in cpu_ratios[(v.name, kind)])
            print(
                f"{v.name}, {kind}: on/off median {statistics.median(ratios[(v.name, kind)]):.3f}x ({values});"
                f" CPU median {statistics.median(cpu_ratios[(v.name, kind)]):.3f}x ({cpu_values})"
            )
        kept = sum(1 for s in received if s.service == f"bench-{v.name}")
        print(f"{v.name}: spans received {kept} of {made} made ({kept / made:.1%})")
    print(f"load average at the end {load()}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000, help="items per round and kind")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL: where to create the bench database"
    )
    ap.add_argument("--tracing", action="store_true", help="tracing off vs on, in lock step (see above)")
    ap.add_argument(
        "--variant",
        action="append",
        metavar="NAME[@TREE][:VAR=VALUE,...]",
        help="a tracing-on side (repeatable); default: `default` and `always-on`",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--chunks", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        await child(args)
        return
    if args.tracing:
        lock_step(args)
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
