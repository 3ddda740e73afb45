"""Group commit, on both backends: concurrent writes in one process share transactions, and a bad request
inside a shared transaction fails alone — its neighbours commit, nothing of it is written."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec
from matrix_mcp.store.base import StaleLease
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio


async def test_concurrent_reports_share_transactions_and_a_bad_one_fails_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.plan_run(
        "r", [PackageSpec(name=f"p{i}", items=[f"i{j}" for j in range(10)]) for i in range(3)]
    )
    claims = (await engine.claim_items("r", "w", limit=30)).items
    assert len(claims) == 30

    store: Any = engine.store
    real = store._run_batch
    sizes: list[int] = []

    def record(args: tuple[Any, ...]) -> None:
        sizes.append(next(len(a) for a in args if isinstance(a, list)))

    if isinstance(type(store).__dict__.get("_run_batch"), staticmethod):  # SQLite: sync, on a connection

        def sync_runner(*args: Any, **kwargs: Any) -> Any:
            record(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(store, "_run_batch", sync_runner)
    else:  # PostgreSQL: a coroutine per batch

        async def async_runner(*args: Any) -> Any:
            record(args)
            return await real(*args)

        monkeypatch.setattr(store, "_run_batch", async_runner)

    stale = claims[0]
    results: dict[str, Any] = {}

    async def report(n: int) -> None:
        c = claims[n]
        token = "not-the-token" if n == 0 else c.lease_token
        try:
            results[c.outcome_id] = await engine.complete_item(
                c.outcome_id, token, content=f"content {n}", metrics={"lines_generated": n}
            )
        except StaleLease as exc:
            results[c.outcome_id] = exc

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(report, n)

    assert sum(sizes) >= 30 and len(sizes) < 30, sizes  # shared transactions, every request in one
    assert max(sizes) > 1, sizes
    assert isinstance(results[stale.outcome_id], StaleLease)
    done = [r for oid, r in results.items() if oid != stale.outcome_id]
    assert len(done) == 29 and all(r.status == "complete" for r in done)
    assert (await engine.get_outcome(stale.outcome_id)).status == "generating"
    run = await engine.get_run("r")
    assert (run.counts.complete, run.counts.generating) == (29, 1)
    summaries = (await engine.run_status("r")).packages
    assert sum(p.total_lines_generated for p in summaries) == sum(range(1, 30))
    await assert_consistent(engine)
