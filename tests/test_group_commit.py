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
        "r", packages=[PackageSpec(name=f"p{i}", items=[f"i{j}" for j in range(10)]) for i in range(3)]
    )
    claims = (await engine.claim_items("r", worker="w", limit=30)).items
    assert len(claims) == 30

    sizes: list[int] = []
    stop = engine.store.group_commit.observe(sizes.append)  # type: ignore[attr-defined]

    stale = claims[0]
    results: dict[str, Any] = {}

    async def report(n: int) -> None:
        c = claims[n]
        token = "not-the-token" if n == 0 else c.lease_token
        try:
            results[c.outcome_id] = await engine.complete_item(
                c.outcome_id, lease_token=token, content=f"content {n}", metrics={"lines_generated": n}
            )
        except StaleLease as exc:
            results[c.outcome_id] = exc

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(report, n)

    stop()
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


async def test_the_group_commit_mechanism_alone() -> None:
    """The one mechanism both stores use, driven through its public API: writers that arrive together share
    a batch; a request's own error is its alone; an error of the runner is every request's of that batch."""
    from matrix_mcp.errors import StoreError, Unavailable
    from matrix_mcp.store.group_commit import GroupCommit, Request

    class Req(Request):
        __slots__ = ("n",)

        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n

    batches: list[list[int]] = []

    async def runner(batch: list[Req]) -> None:
        batches.append([r.n for r in batch])
        if any(r.n == 99 for r in batch):
            raise RuntimeError("connection lost")
        if any(r.n == 98 for r in batch):
            raise StoreError("said so", field="x")
        for r in batch:
            if r.n == 13:
                r.error = StoreError("thirteen", field="n")
            else:
                r.value = r.n * 2

    gc: GroupCommit[Req] = GroupCommit(runner, unavailable=lambda exc: f"down: {exc}", gather=True)
    seen: list[int] = []
    stop = gc.observe(seen.append)
    results: dict[int, Any] = {}

    async def one(n: int) -> None:
        try:
            results[n] = await gc.submit(Req(n))
        except StoreError as exc:
            results[n] = exc

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(one, n)
    assert sorted(n for b in batches for n in b) == list(range(20)) and len(batches) < 20
    assert seen == [len(b) for b in batches]
    assert isinstance(results[13], StoreError) and str(results[13]) == "thirteen"
    assert all(results[n] == n * 2 for n in range(20) if n != 13)
    stop()
    await one(99)
    assert isinstance(results[99], Unavailable) and str(results[99]) == "down: connection lost"
    await one(98)
    assert type(results[98]) is StoreError and results[98].field == "x"
    assert len(seen) == len(batches) - 2  # not observed after stop()
