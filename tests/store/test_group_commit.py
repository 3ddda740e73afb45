"""Group commit, on both backends: concurrent writes in one process share transactions, and a bad request
inside a shared transaction fails alone — its neighbours commit, nothing of it is written."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from matrix_mcp.engine import Engine
from matrix_mcp.errors import StaleLease
from matrix_mcp.models import PackageSpec
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


@pytest.mark.parametrize("regather", [False, True])
async def test_regather_batches_a_steady_loop_whole_and_starves_no_leader(regather: bool) -> None:
    """Sixteen writers in a loop (each sends its next request as soon as the last is answered) against a
    runner that yields while it works, as a database round trip does. Without `regather` the batches
    alternate between one writer and the fifteen others; with it, the writers a batch answered join the
    next one and the lead passes on after every batch: batches of fifteen or more, and no writer — the
    leader included — waits more than two batches for its answer."""
    from matrix_mcp.store.group_commit import GroupCommit, Request

    sizes: list[int] = []

    async def runner(batch: list[Request]) -> None:
        sizes.append(len(batch))
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()

    gc: GroupCommit[Request] = GroupCommit(runner, unavailable=lambda exc: f"down: {exc}", regather=regather)
    waits: list[int] = []

    async def writer() -> None:
        for _ in range(20):
            before = len(sizes)
            await gc.submit(Request())
            waits.append(len(sizes) - before)

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(writer)
    assert sum(sizes) == 16 * 20
    if regather:
        assert sorted(sizes)[len(sizes) // 4] >= 15, sizes  # three batches in four carry 15 or more
        assert max(waits) <= 2, sorted(waits)[-5:]
    else:
        assert sorted(sizes)[len(sizes) // 4] <= 8, sizes


async def test_a_writer_cancelled_while_handed_the_lead_still_leads() -> None:
    """With `regather` the lead passes to a queued writer; one whose caller is cancelled at that moment
    still runs the batch it was handed before it goes, so the writers behind it are answered."""
    from matrix_mcp.store.group_commit import GroupCommit, Request

    gate = anyio.Event()

    async def runner(batch: list[Request]) -> None:
        await gate.wait()
        for r in batch:
            r.value = "ok"

    gc: GroupCommit[Request] = GroupCommit(runner, unavailable=lambda exc: f"down: {exc}", regather=True)
    results: list[Any] = []

    async def one() -> None:
        results.append(await gc.submit(Request()))

    scopes: list[anyio.CancelScope] = []

    async def doomed() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            results.append(await gc.submit(Request()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)  # leads the first batch, held at the gate
        await anyio.sleep(0.01)
        tg.start_soon(doomed)  # queued first behind it: the heir; its caller goes away
        await anyio.sleep(0.01)
        for _ in range(3):
            tg.start_soon(one)
        await anyio.sleep(0.01)
        gate.set()
        await anyio.lowlevel.checkpoint()
        scopes[0].cancel()
    assert results.count("ok") == 4  # the first and the three behind the cancelled heir
