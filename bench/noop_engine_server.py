"""matrix-mcp with an engine that does no work, for bench_stdio.py: the SDK's own cost of our tools.

The server is the real one (same tools, schemas, argument handling and results); only `claim_items` and
`complete_item` skip the store and answer a real claim and a real outcome captured once at start-up. The
per-item time of this server over the echo floor is what the SDK spends on our tools' shapes alone.

    python bench/noop_engine_server.py --database-url sqlite:///… --artifacts-dir …
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.mcp.server import create_server
from matrix_mcp.models import ClaimResult, PackageSpec, ReportResult


async def capture(settings: Settings) -> tuple[ClaimResult, ReportResult]:
    """A real claim, and a real report that leased the next item (what `claim_next=1` answers)."""
    engine = await Engine.open(settings)
    run = f"noop-capture-{time.time_ns()}"  # one per server: another bench server may share the database
    try:
        await engine.plan_run(run, packages=[PackageSpec(name="pkg-0", items=["item-000", "item-001"])])
        claim = await engine.claim_items(run, worker="bench")
        item = claim.items[0]
        done = await engine.complete_item(
            item.outcome_id, lease_token=item.lease_token, metrics={"lines_generated": 1}, claim_next=1
        )
        return claim, done
    finally:
        await engine.close()


def start(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, Settings, ClaimResult, ReportResult]:
    """Parse --database-url/--artifacts-dir (and whatever `ap` adds); capture a real claim and outcome."""
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--artifacts-dir", required=True)
    args = ap.parse_args()
    settings = Settings(database_url=args.database_url, artifacts_dir=Path(args.artifacts_dir))
    claim, done = anyio.run(capture, settings)
    return args, settings, claim, done


def main() -> None:
    _, settings, claim, done = start(argparse.ArgumentParser())

    async def claim_items(self: Engine, *a: Any, **k: Any) -> ClaimResult:
        return claim

    async def complete_item(self: Engine, *a: Any, **k: Any) -> ReportResult:
        return done

    Engine.claim_items = claim_items  # type: ignore[method-assign]
    Engine.complete_item = complete_item  # type: ignore[method-assign]
    create_server(settings).run()


if __name__ == "__main__":
    main()
