"""What earlier attempts add to a claim: the claim result's JSON, as the claim_items tool returns it (the
engine's ClaimResult, dumped without nulls, compact), of an item on its first attempt against the same item
after three earlier attempts. Each earlier attempt left a heartbeat note (~100 chars); the first two failed
with a realistic error (~200 chars), the third was completed and rejected by review with a note (~200
chars). Prints both sizes and the bytes added (goal <= 1 KiB), and the JSON of previous_attempts.

    python bench/bench_briefing.py --backend sqlite
    python bench/bench_briefing.py --backend postgres [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_store import DEFAULT_PG, fresh_pg_database, machine_line
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import ClaimResult, LeaseRef, PackageSpec, RunPolicy

ERRORS = [
    "pytest tests/store/test_contract.py::test_claim_round_robin failed: AssertionError: assert ['p0', 'p0', "
    "'p1'] == ['p0', 'p1', 'p2'] (round robin broke after the second claim; see the log at line 214)",
    "ModuleNotFoundError: No module named 'matrix_mcp.store.dialect_pg' while importing tests/store/"
    "conftest.py; the refactor moved it to matrix_mcp/store/postgres/dialect.py, update the imports",
]
NOTES = [
    "migrated 3 of 5 tables (outcomes, packages, runs); next: outcome_attempts, then the events index",
    "rewrote the claim query with LATERAL probes; tests pass on SQLite, PostgreSQL still to be checked",
    "all 5 tables migrated, contract tests green on both backends; writing the docs section for review",
]
REVIEW_NOTE = (
    "The migration drops the CHECK on outcomes.status instead of extending it with 'in_review'; restore the"
    " constraint and add a test that an unknown status is refused. The docs section is fine as it is."
)


def tool_json(result: ClaimResult) -> bytes:
    """The claim_items tool's text: the model without nulls, compact (matrix_mcp/mcp/state.py)."""
    data = result.model_dump(mode="json", exclude_none=True)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


async def measure(engine: Engine) -> tuple[int, int, bytes]:
    policy = RunPolicy(review="required", max_attempts=5, backoff_seconds=0)
    await engine.plan_run(
        "r",
        goal="Move the store to the new schema",
        packages=[PackageSpec(name="migrate", description="one table per item", items=["t1", "t2"])],
        policy=policy,
    )
    first = await engine.claim_items("r", worker="w", package="migrate")
    assert first.items[0].item == "t1" and first.items[0].attempt == 1
    base = tool_json(first)
    item = None
    for n in range(3):
        got = await engine.claim_items("r", worker="w", package="migrate")
        item = got.items[0]
        assert item.item == "t2" and item.attempt == n + 1, item
        await engine.heartbeat(
            [LeaseRef(outcome_id=item.outcome_id, lease_token=item.lease_token, note=NOTES[n])]
        )
        if n < 2:
            await engine.fail_item(item.outcome_id, lease_token=item.lease_token, error=ERRORS[n])
        else:
            await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
            await engine.review_item(item.outcome_id, decision="reject", note=REVIEW_NOTE)
    fourth = await engine.claim_items("r", worker="w", package="migrate")
    assert fourth.items[0].attempt == 4 and len(fourth.items[0].previous_attempts or []) == 3, fourth
    later = tool_json(fourth)
    shown = json.dumps(
        json.loads(later)["items"][0]["previous_attempts"], ensure_ascii=False, indent=1
    ).encode()
    return len(base), len(later), shown


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument(
        "--database-url", default=DEFAULT_PG, help="PostgreSQL server (a fresh database is created)"
    )
    args = ap.parse_args()
    print(machine_line("bench_briefing.py"))
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "postgres":
            async with fresh_pg_database(args.database_url) as url:
                engine = await Engine.open(Settings(database_url=url, artifacts_dir=Path(tmp) / "a"))
                try:
                    base, later, shown = await measure(engine)
                finally:
                    await engine.close()
        else:
            engine = await Engine.open(
                Settings(database_url=f"sqlite:///{Path(tmp) / 'm.db'}", artifacts_dir=Path(tmp) / "a")
            )
            try:
                base, later, shown = await measure(engine)
            finally:
                await engine.close()
    texts = sum(len(t) for t in ERRORS + NOTES) + len(REVIEW_NOTE)
    print(
        f"backend={args.backend}; earlier attempts: 3 (2 failed, 1 rejected in review), {texts} chars of text"
    )
    print(f"claim result JSON, first attempt: {base} bytes")
    print(f"claim result JSON, 4th attempt:   {later} bytes")
    print(f"bytes added: {later - base} (goal <= 1024)")
    print("previous_attempts as shown:")
    print(shown.decode())


if __name__ == "__main__":
    asyncio.run(main())
