"""PostgreSQL merges the reviews of one group-commit batch (store/postgres/review.py, review_many) like its
completes: several concurrent review_item calls in one batch — approvals, a rejection, a second review of
one item, a review of an item not in_review — each answered as on its own, journaled, so that a retry after
the batch's answer was lost returns every decision's outcome instead of "not in_review"."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest

from matrix_mcp.audit import acting_as
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.errors import Conflict
from matrix_mcp.models import ItemSpec, Outcome, PackageSpec, RunPolicy, Usage
from matrix_mcp.store.params import Report, ReviewVerdict
from matrix_mcp.store.postgres import PostgresStore
from matrix_mcp.store.postgres import connection as pg_connection
from matrix_mcp.store.postgres.batch import ReviewArgs
from tests.conftest import assert_consistent

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def verdict(decision: str, note: str | None = None) -> ReviewVerdict:
    return ReviewVerdict(decision=decision, note=note, backoff=lambda _n: 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("lost", [False, True], ids=["answered", "answer_lost"])
async def test_concurrent_reviews_go_in_one_batch_and_answer_as_one_by_one(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost: bool
) -> None:
    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        store = engine.store
        assert isinstance(store, PostgresStore)
        await engine.plan_run(
            "r",
            packages=[
                PackageSpec(name="p", items=["a", "b", "c", "d", "e"]),
                PackageSpec(name="q", items=[ItemSpec(name="z", after=["p/a"])]),
            ],
            policy=RunPolicy(lease_seconds=600, max_attempts=3, backoff_seconds=0, review="required"),
        )
        claimed = {c.item: c for c in (await engine.claim_items("r", worker="w", limit=5)).items}
        usage = Usage(input_tokens=10, output_tokens=2, cost_usd=0.5, model="m")
        for item in ("a", "b", "c", "d"):
            c = claimed[item]
            await store.complete(
                c.outcome_id,
                lease_token=c.lease_token,
                report=Report(metrics={"lines_generated": 3}, usage=usage),
                now=time.time(),
            )
        ids = {item: c.outcome_id for item, c in claimed.items()}

        merged: list[int] = []
        real = pg_connection.review_many

        async def spy(conn: Any, state: Any, batch: list[Any]) -> None:
            await real(conn, state, batch)
            merged.append(sum(1 for req in batch if req.handled and not req.recovered))

        monkeypatch.setattr(pg_connection, "review_many", spy)
        sizes: list[int] = []
        stop = store.group_commit.observe(sizes.append)
        hit: list[int] = []
        run_batch = store.db._run_batch

        async def lose_the_reviews_answer(batch: list[Any]) -> None:
            await run_batch(batch)  # committed
            if lost and not hit and any(isinstance(req.merge, ReviewArgs) for req in batch):
                hit.append(len(batch))
                raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(store.db, "_run_batch", lose_the_reviews_answer)
        asks = [
            ("a", "approve", "alice"),
            ("b", "approve", "bob"),
            ("c", "reject", "carol"),
            ("a", "approve", "dave"),  # a second review of a: whichever runs second finds it complete
            ("e", "approve", "erin"),  # generating, not in_review
            ("d", "reject", "frank"),
        ]
        answers: dict[int, Outcome | Exception] = {}

        async def ask(i: int, item: str, decision: str, who: str) -> None:
            with acting_as(who):
                try:
                    answers[i] = await store.review(
                        ids[item], verdict=verdict(decision, who), now=time.time()
                    )
                except Conflict as exc:
                    answers[i] = exc

        # a first write leads a batch of its own; the reviews queue behind it and go in the next batch
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: store.heartbeat([], now=time.time()))
            await anyio.lowlevel.checkpoint()
            for i, (item, decision, who) in enumerate(asks):
                tg.start_soon(ask, i, item, decision, who)
        stop()
        assert len(asks) in sizes  # the six reviews went in one batch
        assert max(merged) == 4  # a, b, c, d merged; the second review of a and e's went one by one
        assert hit == ([len(asks)] if lost else [])

        def outcome(i: int) -> Outcome:
            got = answers[i]
            assert isinstance(got, Outcome), got
            return got

        assert outcome(1).status == "complete"
        assert (outcome(2).status, outcome(2).error_message, outcome(2).attempts) == ("pending", "carol", 1)
        assert outcome(5).status == "pending"
        first_a = 0 if isinstance(answers[0], Outcome) else 3
        assert outcome(first_a).status == "complete"
        assert "not in_review" in str(answers[3 - first_a])
        assert "not in_review" in str(answers[4])

        with psycopg.connect(postgres_database) as conn:
            kinds = Counter(
                k for (k,) in conn.execute("SELECT kind FROM events WHERE kind IN ('approved', 'rejected')")
            )
            decided = {
                (r[0], r[1], r[2])
                for r in conn.execute(
                    "SELECT o.item, a.review_decision, a.reviewed_by FROM outcome_attempts a"
                    " JOIN outcomes o ON o.id = a.outcome_id WHERE a.review_decision IS NOT NULL"
                )
            }
        assert kinds == {"approved": 2, "rejected": 2}  # each decision once, a lost answer or not
        who_a = asks[first_a][2]
        assert decided == {
            ("a", "approve", who_a),
            ("b", "approve", "bob"),
            ("c", "reject", "carol"),
            ("d", "reject", "frank"),
        }
        # approval readied z (after p/a); a and b count, c and d wait for their next attempt
        run = await engine.get_run("r")
        assert (run.counts.complete, run.counts.pending, run.counts.generating, run.counts.blocked) == (
            2,
            3,
            1,
            0,
        )
        summary = await engine.package_summary("p", run="r")
        assert (summary.completed_items, summary.total_lines_generated) == (2, 6)
        await assert_consistent(engine)
    finally:
        await engine.close()


async def test_reports_merged_in_one_batch_cross_each_budget_once_at_the_crossing_report(
    postgres_database: str, tmp_path: Path
) -> None:
    """The usage of a batch's completes is written set-based (store/postgres/usage.py): the budgeted run is
    locked once, each report's spend added in batch order, so each budget is crossed by the one report that
    takes the run past it — the first crossing pauses the run, the second only says so."""
    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        store = engine.store
        assert isinstance(store, PostgresStore)
        await engine.plan_run(
            "r",
            packages=[PackageSpec(name="p", items=["a", "b", "c", "d", "e"])],
            policy=RunPolicy(lease_seconds=600, max_cost_usd=1.0, max_tokens=25),
        )
        claimed = (await engine.claim_items("r", worker="w", limit=5)).items
        sizes: list[int] = []
        stop = store.group_commit.observe(sizes.append)
        usage = Usage(input_tokens=6, output_tokens=4, cost_usd=0.3, model="m")
        done: list[str] = []

        async def report(i: int) -> None:
            c = claimed[i]
            got = await store.complete(
                c.outcome_id, lease_token=c.lease_token, report=Report(usage=usage), now=time.time()
            )
            done.append(got.outcome.status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: store.heartbeat([], now=time.time()))
            await anyio.lowlevel.checkpoint()
            for i in range(5):
                tg.start_soon(report, i)
        stop()
        assert 5 in sizes and done == ["complete"] * 5
        crossed = [
            (e.data["budget"], e.data["spent"])
            for e in await engine.events(since=0, run="r", limit=100)
            if e.kind == "budget_exceeded"
        ]
        # tokens: 10 a report, past 25 at the third (30); cost: 0.3 a report, past 1.0 at the fourth
        assert crossed == [("max_tokens", 30), ("max_cost_usd", pytest.approx(1.2))]
        run = await engine.get_run("r")
        assert run.state == "paused" and "max_tokens" in str(run.paused_reason)
        with psycopg.connect(postgres_database) as conn:
            spent = conn.execute("SELECT spent_cost_usd, spent_tokens FROM runs").fetchone()
            attempts = conn.execute(
                "SELECT count(*) FROM outcome_attempts WHERE input_tokens = 6 AND output_tokens = 4"
                " AND cost_usd = 0.3 AND model = 'm' AND cache_read_tokens IS NULL"
            ).fetchone()
        assert spent == (pytest.approx(1.5), 50) and attempts == (5,)
        await assert_consistent(engine)
    finally:
        await engine.close()
