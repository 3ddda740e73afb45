"""Engine claim + complete in process (no MCP, no stdio), SQLite: what the store and engine cost per item.

One engine, one worker, `claim_items` + `complete_item` with 4 KiB of content and without, interleaved in
rounds; prints the median ms per item of each. Run it from two checkouts back to back to compare code.

    python bench/bench_engine_loop.py [--items 2000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec

CONTENT_4K = ("x" * 63 + "\n") * 64


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000, help="items per round and kind")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/bench.db", artifacts_dir=Path(tmp) / "artifacts")
        engine = await Engine.open(settings)
        try:
            total = 2 * args.rounds * args.items + 50
            items = [f"i{k}" for k in range(total)]
            await engine.plan_run("bench", packages=[PackageSpec(name="p", items=items)])

            async def one(content: str | None) -> None:
                item = (await engine.claim_items("bench", worker="w")).items[0]
                await engine.complete_item(
                    item.outcome_id,
                    lease_token=item.lease_token,
                    metrics={"lines_generated": 1},
                    content=content,
                )

            for _ in range(50):  # warm-up
                await one(CONTENT_4K)
            per: dict[str, list[float]] = {"4 KiB content": [], "no content": []}
            for _ in range(args.rounds):
                for label, content in (("4 KiB content", CONTENT_4K), ("no content", None)):
                    t0 = time.perf_counter()
                    for _ in range(args.items):
                        await one(content)
                    per[label].append((time.perf_counter() - t0) / args.items * 1000)
            for label, values in per.items():
                print(
                    f"claim+complete in process, {label}: {statistics.median(values):.3f} ms/item"
                    f" (rounds: {', '.join(f'{v:.3f}' for v in values)})"
                )
        finally:
            await engine.close()


if __name__ == "__main__":
    anyio.run(main)
