"""Review gates, carried-over notes, usage and budgets, through the engine, on every backend: in_review and
the decisions on it (readying only on approval, rejections as new attempts), the notes the next attempt
reads, usage rolled up per package, run and worker in the report's transaction, budgets that pause the run
there. Payloads, not just kinds; a recount ends every scenario."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from matrix_mcp.config import Limits, Settings
from matrix_mcp.engine import Engine
from matrix_mcp.errors import Conflict, InputError, StaleLease
from matrix_mcp.models import ClaimResult, ItemSpec, LeaseRef, PackageSpec, RunPolicy, Usage
from tests.conftest import assert_consistent
from tests.store.test_contract import Clock, _sql

pytestmark = pytest.mark.anyio


REVIEWED = RunPolicy(lease_seconds=60, max_attempts=2, backoff_seconds=0, review="required")


async def events_of(engine: Engine, run: str, kind: str) -> list[dict[str, object]]:
    return [dict(e.data) for e in await engine.events(since=0, run=run, limit=1000) if e.kind == kind]


async def plan_reviewed(engine: Engine) -> None:
    """Run "r" under review: a/x, and b/y after it."""
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="a", items=["x"]),
            PackageSpec(name="b", items=[ItemSpec(name="y", after=["a/x"])]),
        ],
        policy=REVIEWED,
    )


def without_actor(data: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in data.items() if k != "actor"}


async def test_a_completion_under_review_waits_and_readies_nothing_until_approved(engine: Engine) -> None:
    clock = Clock(engine)
    await plan_reviewed(engine)
    x = (await engine.claim_items("r", worker="w")).items[0]
    clock.advance(3)
    done = await engine.complete_item(x.outcome_id, lease_token=x.lease_token, metrics={"lines_generated": 4})
    assert done.status == "in_review"
    # the identical report repeated answers the same; the lease is over
    again = await engine.complete_item(
        x.outcome_id, lease_token=x.lease_token, metrics={"lines_generated": 4}
    )
    assert again.status == "in_review"
    with pytest.raises(StaleLease):
        await engine.fail_item(x.outcome_id, lease_token=x.lease_token, error="late")
    run = await engine.get_run("r")
    assert (run.counts.in_review, run.counts.complete, run.counts.blocked, run.state) == (1, 0, 1, "active")
    summary = await engine.package_summary("a", run="r")
    assert (summary.in_review_items, summary.completed_items, summary.total_lines_generated) == (1, 0, 0)
    assert [o.item for o in (await engine.list_outcomes(run="r", status="in_review")).outcomes] == ["x"]
    assert await events_of(engine, "r", "in_review") == [{"package": "a", "item": "x", "attempt": 1}]
    got = await engine.claim_items("r", worker="w")
    assert got.items == [] and got.reason == "in_review"

    result = await engine.review_item(x.outcome_id, decision="approve", note="looks right")
    assert (result.status, result.attempt, result.decision) == ("complete", 1, "approve")
    summary = await engine.package_summary("a", run="r")
    assert (summary.in_review_items, summary.completed_items, summary.total_lines_generated) == (0, 1, 4)
    assert summary.avg_duration_seconds == 3
    assert [without_actor(d) for d in await events_of(engine, "r", "approved")] == [
        {"package": "a", "item": "x", "attempt": 1, "note": "looks right"}
    ]
    assert await events_of(engine, "r", "ready") == [{"package": "b", "item": "y"}]
    detail = await engine.get_outcome(x.outcome_id)
    assert (detail.history[0].status, detail.history[0].review_decision, detail.history[0].review_note) == (
        "complete",
        "approve",
        "looks right",
    )
    with pytest.raises(Conflict) as err:
        await engine.review_item(x.outcome_id, decision="approve")
    assert err.value.field == "outcome_id" and x.outcome_id in str(err.value)
    await assert_consistent(engine)


async def test_a_claim_that_finds_only_items_in_review_says_in_review_not_done(engine: Engine) -> None:
    """Items in review are not done (a rejection sends one back): with nothing else to wait on — nothing
    pending or leased, and blocked items only behind reviews — a claim says `in_review`, with no time."""
    Clock(engine)
    await plan_reviewed(engine)
    x = (await engine.claim_items("r", worker="w")).items[0]
    done = await engine.complete_item(x.outcome_id, lease_token=x.lease_token, claim_next=1)
    assert (done.status, done.next, done.reason) == ("in_review", [], "in_review")
    for package in (None, "a", "b"):  # b/y is blocked on a/x, which is in review
        got = await engine.claim_items("r", worker="w", package=package)
        assert (got.items, got.reason, got.retry_after_seconds) == ([], "in_review", None), package
    await engine.review_item(x.outcome_id, decision="approve")
    y = (await engine.claim_items("r", worker="w")).items[0]
    assert y.item == "y"
    got = await engine.claim_items("r", worker="w")
    assert got.reason == "all_leased"
    await engine.complete_item(y.outcome_id, lease_token=y.lease_token)
    assert (await engine.claim_items("r", worker="w")).reason == "in_review"
    assert (await engine.claim_items("r", worker="w", package="a")).reason == "done"
    await engine.review_item(y.outcome_id, decision="approve")
    assert (await engine.claim_items("r", worker="w")).reason == "done"
    await assert_consistent(engine)


async def test_a_waiting_claim_takes_the_item_a_rejection_sends_back(engine: Engine) -> None:
    """claim_items(wait_seconds) waits on items in review: a rejection that lands meanwhile hands the item
    over in the same call."""
    await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x"])], policy=REVIEWED)
    x = (await engine.claim_items("r", worker="w")).items[0]
    await engine.complete_item(x.outcome_id, lease_token=x.lease_token)
    waiting = anyio.Event()
    got: list[ClaimResult] = []

    async def progress(waited: float, total: float, message: str) -> None:
        assert "in_review" in message
        waiting.set()

    async def claim() -> None:
        got.append(await engine.claim_items("r", worker="w2", wait_seconds=30, progress=progress))
        waiting.set()  # a claim that did not wait answers before the review (empty)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim)
        await waiting.wait()
        await engine.review_item(x.outcome_id, decision="reject", note="again")
    assert [(i.item, i.attempt) for i in got[0].items] == [("x", 2)]
    await assert_consistent(engine)


async def test_a_rejection_is_a_new_attempt_that_reads_the_note_then_fails_past_max_attempts(
    engine: Engine,
) -> None:
    Clock(engine)
    await plan_reviewed(engine)
    x = (await engine.claim_items("r", worker="w1")).items[0]
    assert x.previous_attempts is None
    await engine.heartbeat(
        [LeaseRef(outcome_id=x.outcome_id, lease_token=x.lease_token, note="3 of 5 tables")]
    )
    await engine.complete_item(x.outcome_id, lease_token=x.lease_token)
    back = await engine.review_item(x.outcome_id, decision="reject", note="tests fail")
    assert (back.status, back.attempt) == ("pending", 1) and back.available_at is not None
    assert [without_actor(d) for d in await events_of(engine, "r", "rejected")] == [
        {"package": "a", "item": "x", "attempt": 1, "note": "tests fail", "now": "pending"}
    ]
    second = (await engine.claim_items("r", worker="w2")).items[0]
    assert second.attempt == 2 and second.previous_attempts_omitted is None
    assert [a.model_dump(exclude_none=True) for a in second.previous_attempts or []] == [
        {"attempt": 1, "note": "3 of 5 tables", "review_note": "tests fail"}
    ]
    await engine.complete_item(second.outcome_id, lease_token=second.lease_token)
    final = await engine.review_item(second.outcome_id, decision="reject", note="still failing")
    assert final.status == "failed"
    got = await engine.get_outcome(x.outcome_id)
    assert got.error_message == "still failing"
    assert [(h.attempt, h.status, h.review_decision) for h in got.history] == [
        (1, "failed", "reject"),
        (2, "failed", "reject"),
    ]
    # the failure cascade applies (the run cancels dependents by default)
    assert (await engine.list_outcomes(run="r", package="b")).outcomes[0].status == "cancelled"
    await assert_consistent(engine)


async def test_the_first_claim_after_a_retry_reads_the_attempts_that_failed(engine: Engine) -> None:
    """A retry starts the attempt count again at 1; the next agent still reads why the item failed."""
    await engine.plan_run(
        "r",
        packages=[PackageSpec(name="a", items=["x"])],
        policy=RunPolicy(lease_seconds=60, max_attempts=1, backoff_seconds=0),
    )
    x = (await engine.claim_items("r", worker="w1")).items[0]
    await engine.heartbeat([LeaseRef(outcome_id=x.outcome_id, lease_token=x.lease_token, note="half way")])
    await engine.fail_item(x.outcome_id, lease_token=x.lease_token, error="disk full", retryable=False)
    await engine.retry_items("r")
    again = (await engine.claim_items("r", worker="w2")).items[0]
    assert again.attempt == 1
    assert [a.model_dump(exclude_none=True) for a in again.previous_attempts or []] == [
        {"attempt": 1, "error": "disk full", "note": "half way"}
    ]
    await engine.complete_item(again.outcome_id, lease_token=again.lease_token)
    await assert_consistent(engine)


async def test_the_package_setting_overrides_the_run_s(engine: Engine) -> None:
    await engine.plan_run(
        "r",
        packages=[PackageSpec(name="a", items=["x"], review="required"), PackageSpec(name="b", items=["y"])],
    )
    for _ in range(2):
        item = (await engine.claim_items("r", worker="w")).items[0]
        done = await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
        assert done.status == ("in_review" if item.package == "a" else "complete")
    assert [
        (p.package, p.review) for p in await engine.store.package_summaries((await engine.get_run("r")).id)
    ] == [
        ("a", "required"),
        ("b", None),
    ]
    await assert_consistent(engine)


async def test_usage_is_rolled_up_per_package_run_and_worker(engine: Engine) -> None:
    await engine.plan_run(
        "r", packages=[PackageSpec(name="a", items=["x", "y", "z"])], policy=RunPolicy(max_attempts=1)
    )
    x = (await engine.claim_items("r", worker="w1")).items[0]
    await engine.complete_item(
        x.outcome_id,
        lease_token=x.lease_token,
        usage=Usage(input_tokens=100, output_tokens=20, cache_read_tokens=5, model="m", cost_usd=0.25),
    )
    y = (await engine.claim_items("r", worker="w2")).items[0]
    await engine.fail_item(
        y.outcome_id, lease_token=y.lease_token, error="boom", usage=Usage(output_tokens=7, cost_usd=0.5)
    )
    z = (await engine.claim_items("r", worker="w2")).items[0]
    await engine.complete_item(z.outcome_id, lease_token=z.lease_token)  # no usage: nothing moves
    summary = await engine.package_summary("a", run="r")
    assert summary.usage is not None and summary.usage.model_dump() == {
        "input_tokens": 100,
        "output_tokens": 27,
        "cache_read_tokens": 5,
        "cache_creation_tokens": 0,
        "cost_usd": 0.75,
    }
    status = await engine.run_status("r")
    assert status.usage == summary.usage
    assert [(w.worker, w.usage.cost_usd, w.usage.output_tokens) for w in status.workers or []] == [
        ("w2", 0.5, 7),
        ("w1", 0.25, 20),
    ]
    history = (await engine.get_outcome(x.outcome_id)).history
    assert history[0].usage is not None and history[0].usage.model_dump(exclude_none=True) == {
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_tokens": 5,
        "model": "m",
        "cost_usd": 0.25,
    }
    assert (await engine.get_outcome(z.outcome_id)).history[0].usage is None
    await assert_consistent(engine)


async def test_a_budget_pauses_the_run_in_the_report_s_transaction_once(engine: Engine) -> None:
    await engine.plan_run(
        "r", packages=[PackageSpec(name="a", items=["x", "y", "z"])], policy=RunPolicy(max_cost_usd=1.0)
    )
    x, y = (await engine.claim_items("r", worker="w", limit=2)).items
    await engine.complete_item(x.outcome_id, lease_token=x.lease_token, usage=Usage(cost_usd=0.6))
    assert (await engine.get_run("r")).state == "active"
    await engine.complete_item(y.outcome_id, lease_token=y.lease_token, usage=Usage(cost_usd=0.6))
    run = await engine.get_run("r")
    assert run.state == "paused" and run.paused_reason is not None and "max_cost_usd" in run.paused_reason
    assert await events_of(engine, "r", "budget_exceeded") == [
        {"budget": "max_cost_usd", "limit": 1.0, "spent": pytest.approx(1.2)}
    ]
    assert (await engine.claim_items("r", worker="w")).reason == "paused"
    # raising the budget does not resume; resuming does
    raised = await engine.update_policy("r", max_cost_usd=5)
    assert raised.state == "paused" and raised.policy.max_cost_usd == 5
    resumed = await engine.control_run("r", action="resume")
    assert resumed.state == "active" and resumed.paused_reason is None
    z = (await engine.claim_items("r", worker="w")).items[0]
    await engine.complete_item(z.outcome_id, lease_token=z.lease_token, usage=Usage(cost_usd=0.1))
    assert (await engine.get_run("r")).state == "done"
    assert len(await events_of(engine, "r", "budget_exceeded")) == 1
    await assert_consistent(engine)


async def test_a_token_budget_set_later_counts_what_was_spent_before(engine: Engine) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x", "y"])])
    x, y = (await engine.claim_items("r", worker="w", limit=2)).items
    await engine.complete_item(x.outcome_id, lease_token=x.lease_token, usage=Usage(input_tokens=80))
    updated = await engine.update_policy("r", max_tokens=100, review="required", lease_seconds=30)
    assert (updated.policy.max_tokens, updated.policy.review, updated.policy.lease_seconds) == (
        100,
        "required",
        30,
    )
    # an item already leased may still report: it takes the run past the budget, and the run pauses
    done = await engine.complete_item(y.outcome_id, lease_token=y.lease_token, usage=Usage(output_tokens=30))
    assert done.status == "in_review"
    assert (await engine.get_run("r")).state == "paused"
    assert await events_of(engine, "r", "budget_exceeded") == [
        {"budget": "max_tokens", "limit": 100, "spent": 110}
    ]
    cleared = await engine.update_policy("r", clear=["max_tokens"])
    assert cleared.policy.max_tokens is None
    assert [without_actor(d) for d in await events_of(engine, "r", "policy_updated")] == [
        {"max_tokens": 100, "review": "required", "lease_seconds": 30},
        {"max_tokens": None},
    ]
    await assert_consistent(engine)


async def test_a_recount_checks_and_a_rebuild_repairs_the_workers_and_the_run_s_spend(
    engine: Engine, database_url: str
) -> None:
    """The workers' usage sums and a budgeted run's spent totals are rollups like the packages' counters: the
    recount finds them skewed, and rebuild_counters sets them back to what the attempts spent."""
    await engine.plan_run(
        "r", packages=[PackageSpec(name="a", items=["x", "y"])], policy=RunPolicy(max_cost_usd=10)
    )
    x = (await engine.claim_items("r", worker="w1")).items[0]
    await engine.complete_item(
        x.outcome_id, lease_token=x.lease_token, usage=Usage(input_tokens=9, cost_usd=1)
    )
    y = (await engine.claim_items("r", worker="w2")).items[0]
    await engine.fail_item(y.outcome_id, lease_token=y.lease_token, error="e", usage=Usage(output_tokens=4))
    await assert_consistent(engine)
    await _sql(
        database_url,
        [
            ("UPDATE worker_usage SET input_tokens = input_tokens + 1 WHERE worker = ?", ("w1",)),
            ("DELETE FROM worker_usage WHERE worker = ?", ("w2",)),
            ("INSERT INTO worker_usage (run_id, worker, cost_usd) SELECT id, ?, 2 FROM runs", ("ghost",)),
            ("UPDATE runs SET spent_cost_usd = ?, spent_tokens = ?", (0.5, 12)),
        ],
    )
    assert sorted((await engine.store.recount()).mismatches) == [
        "r: spent_cost_usd 0.5 != packages 1",
        "r: spent_tokens 12 != packages 13",
        "r: worker 'ghost' cost_usd 2 != attempts 0",
        "r: worker 'w1' input_tokens 10 != attempts 9",
        "r: worker 'w2' output_tokens 0 != attempts 4",
    ]
    await engine.store.rebuild_counters((await engine.get_run("r")).id)
    await assert_consistent(engine)
    status = await engine.run_status("r")
    assert [(w.worker, w.usage.input_tokens, w.usage.output_tokens) for w in status.workers or []] == [
        ("w1", 9, 0),
        ("w2", 0, 4),
    ]


async def test_policy_and_review_arguments_are_checked_naming_the_field(engine: Engine) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x"])])
    cases = [
        ({"max_cost_usd": -1}, "max_cost_usd"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"review": "maybe"}, "review"),
        ({"clear": ["review"]}, "clear[0]"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InputError) as err:
            await engine.update_policy("r", **kwargs)  # type: ignore[arg-type]
        assert err.value.field == field and "\n" not in str(err.value)
    # nothing given changes nothing; a value given wins over clearing it
    assert (await engine.update_policy("r")).policy == (await engine.get_run("r")).policy
    assert (await engine.update_policy("r", max_tokens=5, clear=["max_tokens"])).policy.max_tokens == 5
    x = (await engine.list_outcomes(run="r")).outcomes[0]
    with pytest.raises(InputError) as bad:
        await engine.review_item(x.id, decision="maybe")  # type: ignore[arg-type]
    assert bad.value.field == "decision"
    with pytest.raises(InputError) as long:
        await engine.review_item(x.id, decision="approve", note="n" * 2001)
    assert long.value.field == "note"
    with pytest.raises(Conflict):
        await engine.review_item(x.id, decision="approve")
    with pytest.raises(InputError) as note:
        await engine.heartbeat([LeaseRef.model_construct(outcome_id=x.id, lease_token="t", note="n" * 2001)])
    assert note.value.field == "leases[0].note"


async def test_the_briefing_is_bounded(database_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=database_url,
        artifacts_dir=tmp_path / "artifacts",
        limits=Limits(max_briefing_bytes=400),
    )
    engine = await Engine.open(settings)
    try:
        await engine.plan_run(
            "r",
            packages=[PackageSpec(name="a", items=["x"])],
            policy=RunPolicy(max_attempts=5, backoff_seconds=0),
        )
        for n in range(4):
            item = (await engine.claim_items("r", worker="w")).items[0]
            await engine.fail_item(
                item.outcome_id, lease_token=item.lease_token, error=f"attempt {n + 1}: " + "e" * 300
            )
        last = (await engine.claim_items("r", worker="w")).items[0]
        shown = last.previous_attempts or []
        assert shown and shown[0].attempt == 4 and (last.previous_attempts_omitted or 0) == 4 - len(shown)
        assert len(last.model_dump_json(include={"previous_attempts"}, exclude_none=True)) <= 400 + 30
        await assert_consistent(engine)
    finally:
        await engine.close()
