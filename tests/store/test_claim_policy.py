"""The claim policy's contract, through the engine, on every backend: dependencies (blocked → pending, the
failure cascade, retries), priorities, store-wide lock keys and concurrency caps, each decided in the
claim's own transaction; the payloads of its events and the counters (a recount ends every scenario)."""

from __future__ import annotations

import anyio
import pytest

from matrix_mcp.engine import Engine
from matrix_mcp.errors import InputError, NotFound, StaleLease
from matrix_mcp.models import ClaimedItem, ClaimResult, ItemSpec, PackageSpec, RunPolicy
from tests.conftest import assert_consistent
from tests.store.test_contract import Clock, _sql

pytestmark = pytest.mark.anyio


LEASE = 60.0
POLICY = RunPolicy(lease_seconds=LEASE, max_attempts=1, backoff_seconds=0)


def item(name: str, *after: str, priority: int = 0, locks: list[str] | None = None) -> ItemSpec:
    return ItemSpec(name=name, after=list(after), priority=priority, locks=locks or [])


async def status_of(engine: Engine, run: str) -> dict[str, str]:
    page = await engine.list_outcomes(run=run, limit=1000)
    return {f"{o.package}/{o.item}": o.status for o in page.outcomes}


async def claim_one(engine: Engine, run: str, worker: str = "w") -> ClaimedItem:
    got = await engine.claim_items(run, worker=worker)
    assert len(got.items) == 1, got
    return got.items[0]


async def events_of(engine: Engine, run: str, kind: str) -> list[dict[str, object]]:
    return [dict(e.data) for e in await engine.events(since=0, run=run, limit=1000) if e.kind == kind]


async def test_an_item_waits_blocked_until_its_prerequisite_completes(engine: Engine) -> None:
    clock = Clock(engine)
    plan = await engine.plan_run(
        "r",
        packages=[PackageSpec(name="a", items=["x"]), PackageSpec(name="b", items=[item("y", "a/x"), "z"])],
        policy=POLICY,
    )
    assert (plan.run.counts.pending, plan.run.counts.blocked, plan.run.counts.total) == (2, 1, 3)
    assert await status_of(engine, "r") == {"a/x": "pending", "b/y": "blocked", "b/z": "pending"}
    blocked = await engine.list_outcomes(run="r", status="blocked")
    assert [o.item for o in blocked.outcomes] == ["y"]
    y = blocked.outcomes[0]
    assert (await engine.get_outcome(y.id)).waits_for == ["a/x"]
    x, z = await claim_one(engine, "r"), await claim_one(engine, "r")
    assert {x.item, z.item} == {"x", "z"}
    x = x if x.item == "x" else z
    short = await engine.claim_items("r", worker="w")
    assert short.items == [] and short.reason == "blocked"
    assert short.retry_after_seconds == pytest.approx(LEASE)  # when a running lease ends
    clock.advance(5)
    await engine.complete_item(x.outcome_id, lease_token=x.lease_token, content="x")
    assert (await engine.get_outcome(y.id)).waits_for == []
    assert await events_of(engine, "r", "ready") == [{"package": "b", "item": "y"}]
    got = await claim_one(engine, "r")
    assert (got.package, got.item) == ("b", "y")
    summary = await engine.package_summary("b", run="r")
    assert (summary.blocked_items, summary.generating_items) == (0, 2)
    await assert_consistent(engine)


async def test_a_package_prerequisite_waits_for_every_item_of_that_package(engine: Engine) -> None:
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="schema", items=["s1", "s2"]),
            PackageSpec(
                name="services", items=["api", item("cli", "schema/*")], after=["schema"], priority=0
            ),
        ],
        policy=POLICY,
    )
    summary = await engine.package_summary("services", run="r")
    assert summary.after == ["schema"] and summary.blocked_items == 2
    api = (await engine.list_outcomes(run="r", package="services")).outcomes[0]
    assert (await engine.get_outcome(api.id)).waits_for == ["schema/*"]
    first, second = await claim_one(engine, "r"), await claim_one(engine, "r")
    await engine.complete_item(first.outcome_id, lease_token=first.lease_token, content="1")
    assert (await engine.get_run("r")).counts.blocked == 2  # one of schema's two is not complete yet
    await engine.complete_item(second.outcome_id, lease_token=second.lease_token, content="2")
    assert await status_of(engine, "r") == {
        "schema/s1": "complete",
        "schema/s2": "complete",
        "services/api": "pending",
        "services/cli": "pending",
    }
    assert sorted(str(e["item"]) for e in await events_of(engine, "r", "ready")) == ["api", "cli"]
    await assert_consistent(engine)


async def test_a_package_completed_by_concurrent_reports_readies_its_dependents(engine: Engine) -> None:
    # the reports share group-commit batches: a batch that completes the package's last items counts
    # its own completions with the ones committed before it
    items = [f"s{i}" for i in range(8)]
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="schema", items=items),
            PackageSpec(name="services", items=["api", item("cli", "schema/s0")], after=["schema"]),
        ],
        policy=POLICY,
    )
    claimed = (await engine.claim_items("r", worker="w", limit=len(items))).items
    assert sorted(c.item for c in claimed) == items

    async def report(c: ClaimedItem) -> None:
        await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content=c.item)

    async with anyio.create_task_group() as tg:
        for c in claimed:
            tg.start_soon(report, c)
    states = await status_of(engine, "r")
    assert (states["services/api"], states["services/cli"]) == ("pending", "pending")
    assert sorted(str(e["item"]) for e in await events_of(engine, "r", "ready")) == ["api", "cli"]
    await assert_consistent(engine)


async def test_references_resolve_against_the_run_and_unknown_ones_write_nothing(engine: Engine) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x", "w"])], policy=POLICY)
    x = await claim_one(engine, "r")
    await engine.complete_item(x.outcome_id, lease_token=x.lease_token, content="x")
    # an extension waiting for an item already complete is ready at once; one still pending is not
    more = await engine.plan_run(
        "r", packages=[PackageSpec(name="b", items=[item("p", f"a/{x.item}"), item("q", "a/*")])]
    )
    assert more.added_items == 2
    states = await status_of(engine, "r")
    assert (states["b/p"], states["b/q"]) == ("pending", "blocked")
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", packages=[PackageSpec(name="c", items=["k", item("m", "k", "a/nope")])])
    assert err.value.field == "packages[0].items[1].after[1]"
    assert str(err.value) == "unknown reference 'a/nope': no such item or package in this plan or run"
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", packages=[PackageSpec(name="c", items=["k"], after=["ghost"])])
    assert err.value.field == "packages[0].after[0]"
    with pytest.raises(NotFound):
        await engine.package_summary("c", run="r")  # nothing of either plan was written
    await assert_consistent(engine)


async def test_claims_take_package_priority_then_item_priority(engine: Engine) -> None:
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="low", items=[item("l1", priority=100), "l2"]),
            PackageSpec(
                name="high", items=["h1", item("h2", priority=5), item("h3", priority=5)], priority=1
            ),
            PackageSpec(name="mid", items=[item("m1", priority=-1), item("m2", priority=3)]),
        ],
        policy=POLICY,
    )
    got = await engine.claim_items("r", worker="w", limit=7)
    assert [f"{c.package}/{c.item}" for c in got.items] == [
        "high/h2",
        "high/h3",
        "high/h1",
        "low/l1",  # item priority 100 beats mid's 3 at the same package priority
        "mid/m2",
        "low/l2",  # then the packages in turn, least recently served first
        "mid/m1",
    ]
    out = await engine.get_outcome(got.items[0].outcome_id)
    assert out.priority == 5
    await assert_consistent(engine)


async def test_a_lock_key_is_held_store_wide_by_one_live_lease(engine: Engine) -> None:
    clock = Clock(engine)
    for run in ("one", "two"):
        await engine.plan_run(
            run,
            packages=[PackageSpec(name="p", items=[item("edit", locks=["file:src/db.py"])])],
            policy=POLICY,
        )
    first = await claim_one(engine, "one")
    assert (await engine.get_outcome(first.outcome_id)).locks_held == ["file:src/db.py"]
    clock.advance(10)
    held = await engine.claim_items("two", worker="w")
    assert held.items == [] and held.reason == "locked"
    assert held.retry_after_seconds == pytest.approx(LEASE - 10)  # when the holder's lease runs out
    await engine.complete_item(first.outcome_id, lease_token=first.lease_token, content="done")
    assert (await engine.get_outcome(first.outcome_id)).locks_held == []
    second = await claim_one(engine, "two")
    assert (await engine.get_outcome(second.outcome_id)).locks == ["file:src/db.py"]
    await assert_consistent(engine)


async def test_an_expired_lease_frees_its_locks_and_a_late_report_never_takes_them_back(
    engine: Engine,
) -> None:
    clock = Clock(engine)
    await engine.plan_run(
        "r",
        packages=[PackageSpec(name="p", items=[item(n, locks=["api:github"]) for n in ("a", "b", "c")])],
        policy=RunPolicy(lease_seconds=LEASE, max_attempts=3, backoff_seconds=0),
    )
    a = await claim_one(engine, "r")
    clock.advance(LEASE + 1)  # a's lease ran out: its lock is dead, whoever claims next takes it
    b = await claim_one(engine, "r")
    assert b.lease_token != a.lease_token
    with pytest.raises(StaleLease):
        await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="late")
    assert (await engine.get_outcome(b.outcome_id)).locks_held == ["api:github"]
    assert (await engine.claim_items("r", worker="w")).reason == "locked"
    await engine.fail_item(b.outcome_id, lease_token=b.lease_token, error="boom", retryable=False)
    c = await claim_one(engine, "r")
    assert (await engine.get_outcome(c.outcome_id)).locks_held == ["api:github"]
    await assert_consistent(engine)


WAITS_ON = {
    "locked": PackageSpec(name="p", items=[item("a", locks=["k"]), item("b", locks=["k"])]),
    "capped": PackageSpec(name="p", items=["a", "b"], max_concurrent=1),
    "blocked": PackageSpec(name="p", items=[item("a"), item("b", "a")]),
}


@pytest.mark.parametrize("reason", list(WAITS_ON))
async def test_a_waiting_claim_takes_the_item_a_finished_lease_frees(engine: Engine, reason: str) -> None:
    """claim_items(wait_seconds) waits while a lock key, a cap or a dependency holds the rest back (a worker
    loop would otherwise ask again at once), and the completion that frees one hands it over in that call."""
    await engine.plan_run("r", packages=[WAITS_ON[reason]], policy=POLICY)
    a = await claim_one(engine, "r")
    assert (await engine.claim_items("r", worker="w2")).reason == reason
    waiting = anyio.Event()
    got: list[ClaimResult] = []

    async def progress(waited: float, total: float | None, message: str | None) -> None:
        assert message is not None and reason in message
        waiting.set()

    async def claim() -> None:
        got.append(await engine.claim_items("r", worker="w2", wait_seconds=30, progress=progress))
        waiting.set()  # a claim that did not wait answers before the completion (empty)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim)
        await waiting.wait()
        await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="done")
    assert [i.item for i in got[0].items] == ["b"]
    await assert_consistent(engine)


async def test_max_concurrent_caps_a_package_and_a_run(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="a", items=["1", "2", "3"], max_concurrent=1),
            PackageSpec(name="b", items=["1", "2"]),
        ],
        policy=RunPolicy.planned(lease_seconds=LEASE, max_concurrent=2),
    )
    assert (await engine.get_run("r")).policy.max_concurrent == 2
    assert (await engine.package_summary("a", run="r")).max_concurrent == 1
    first = await engine.claim_items("r", worker="w", limit=5)
    assert sorted(c.package for c in first.items) == ["a", "b"]
    assert first.reason == "capped" and first.retry_after_seconds == pytest.approx(LEASE)
    done = next(c for c in first.items if c.package == "b")
    clock.advance(7)
    await engine.complete_item(done.outcome_id, lease_token=done.lease_token, content="b")
    again = await engine.claim_items("r", worker="w", limit=5)
    assert [c.package for c in again.items] == ["b"]  # a is at its own cap of 1
    assert again.reason == "capped" and again.retry_after_seconds == pytest.approx(LEASE - 7)
    await assert_consistent(engine)


async def test_a_failure_cancels_dependents_naming_it_and_a_retry_blocks_them_again(engine: Engine) -> None:
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="a", items=["x"]),
            PackageSpec(name="b", items=[item("y", "a/x")]),
            PackageSpec(name="c", items=[item("z", "b/y"), "free"]),
        ],
        policy=POLICY,
    )
    x = next(c for c in (await engine.claim_items("r", worker="w", limit=2)).items if c.item == "x")
    await engine.fail_item(x.outcome_id, lease_token=x.lease_token, error="broken", retryable=False)
    states = await status_of(engine, "r")
    assert (states["a/x"], states["b/y"], states["c/z"]) == ("failed", "cancelled", "cancelled")
    page = await engine.list_outcomes(run="r", status="cancelled")
    assert {o.error_message for o in page.outcomes} == {"dependency 'a/x' failed"}
    (event,) = await events_of(engine, "r", "dependents_cancelled")
    assert event["failed"] == "a/x" and event["count"] == 2
    assert sorted(event["outcome_ids"]) == sorted(o.id for o in page.outcomes)  # type: ignore[arg-type]
    retried = await engine.retry_items("r", outcome_ids=[x.outcome_id])
    assert retried.requeued == 1
    states = await status_of(engine, "r")
    assert (states["a/x"], states["b/y"], states["c/z"]) == ("pending", "blocked", "blocked")
    y = (await engine.list_outcomes(run="r", package="b")).outcomes[0]
    assert y.error_message is None
    x2 = await claim_one(engine, "r")
    await engine.complete_item(x2.outcome_id, lease_token=x2.lease_token, content="x")
    assert (await status_of(engine, "r"))["b/y"] == "pending"
    await assert_consistent(engine)


async def test_on_dependency_failure_block_keeps_dependents_waiting(engine: Engine) -> None:
    await engine.plan_run(
        "r",
        packages=[PackageSpec(name="a", items=["x", item("y", "x")])],
        policy=RunPolicy.planned(lease_seconds=LEASE, max_attempts=1, on_dependency_failure="block"),
    )
    assert (await engine.get_run("r")).policy.on_dependency_failure == "block"
    x = await claim_one(engine, "r")
    await engine.fail_item(x.outcome_id, lease_token=x.lease_token, error="broken", retryable=False)
    assert await status_of(engine, "r") == {"a/x": "failed", "a/y": "blocked"}
    short = await engine.claim_items("r", worker="w")
    assert (short.reason, short.retry_after_seconds) == ("blocked", None)  # nothing running will free it
    assert (await engine.get_run("r")).state == "active"  # not done: an item still waits
    assert await events_of(engine, "r", "dependents_cancelled") == []
    await engine.retry_items("r")
    x = await claim_one(engine, "r")
    await engine.complete_item(x.outcome_id, lease_token=x.lease_token, content="x")
    assert (await claim_one(engine, "r")).item == "y"
    await assert_consistent(engine)


async def test_an_expiry_with_attempts_spent_cascades_like_a_failure(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x", item("y", "x")])], policy=POLICY)
    await claim_one(engine, "r")
    clock.advance(LEASE + 1)
    short = await engine.claim_items("r", worker="w")  # the claim sweeps the expired lease: x failed for good
    assert short.reason == "done"
    assert await status_of(engine, "r") == {"a/x": "failed", "a/y": "cancelled"}
    assert (await engine.get_run("r")).state == "done"
    await assert_consistent(engine)


async def test_overrides_move_dependents_both_ways(engine: Engine) -> None:
    await engine.plan_run(
        "r",
        packages=[PackageSpec(name="a", items=["x", "w", item("y", "x", "w"), item("v", "x")])],
        policy=POLICY,
    )
    ids = {o.item: o.id for o in (await engine.list_outcomes(run="r")).outcomes}
    await engine.update_outcome_status(ids["x"], status="complete")
    assert await status_of(engine, "r") == {
        "a/x": "complete",
        "a/w": "pending",
        "a/y": "blocked",
        "a/v": "pending",
    }
    assert (await engine.get_outcome(ids["y"])).waits_for == ["a/w"]
    # x leaves complete: y waits for it again; v, already readied, stays pending
    await engine.update_outcome_status(ids["x"], status="pending")
    assert (await engine.get_outcome(ids["y"])).waits_for == ["a/x", "a/w"]
    await engine.update_outcome_status(ids["w"], status="complete")
    assert (await status_of(engine, "r"))["a/y"] == "blocked"
    await engine.update_outcome_status(ids["x"], status="complete")
    assert await status_of(engine, "r") == {
        "a/x": "complete",
        "a/w": "complete",
        "a/y": "pending",
        "a/v": "pending",
    }
    await assert_consistent(engine)


async def test_cancelling_a_run_ends_its_blocked_items(engine: Engine) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x", item("y", "x")])], policy=POLICY)
    await engine.control_run("r", action="cancel")
    assert await status_of(engine, "r") == {"a/x": "cancelled", "a/y": "cancelled"}
    (event,) = [e for e in await engine.events(since=0, run="r", limit=100) if e.kind == "run_cancelled"]
    assert event.data["cancelled_items"] == 2
    await assert_consistent(engine)


async def test_an_item_back_in_the_queue_is_ranked_by_its_priority_again(engine: Engine) -> None:
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="a", items=[item("hi", priority=5), "lo"]),
            PackageSpec(name="b", items=["b1", "b2"]),
        ],
        policy=RunPolicy(lease_seconds=LEASE, max_attempts=3, backoff_seconds=0),
    )
    hi = await claim_one(engine, "r")
    assert hi.item == "hi"
    nxt = await claim_one(engine, "r")  # a has only priority 0 left now: the round robin goes on to b
    assert (nxt.package, nxt.item) == ("b", "b1")
    await engine.fail_item(hi.outcome_id, lease_token=hi.lease_token, error="flaky")  # back to pending
    again = await claim_one(engine, "r")
    assert (again.item, again.attempt) == ("hi", 2)
    await assert_consistent(engine)


async def test_a_recount_checks_every_count_of_unmet_prerequisites(engine: Engine, database_url: str) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x", item("y", "x")])], policy=POLICY)
    await assert_consistent(engine)
    await _sql(database_url, [("UPDATE outcomes SET waiting = 2 WHERE item = ?", ("y",))])
    report = await engine.store.recount()
    assert report.mismatches == ["r/a/y: waiting 2 != unmet prerequisites 1"]
    await _sql(database_url, [("UPDATE outcomes SET waiting = 0 WHERE item = ?", ("y",))])
    await _sql(database_url, [("DELETE FROM outcome_deps", ())])
    assert (await engine.store.recount()).mismatches == ["r/a/y: blocked with no unmet prerequisite"]


async def test_an_extension_cannot_close_a_cycle_through_the_runs_items(engine: Engine) -> None:
    # a/x waits for every item of b; a new item of b waiting for a/x would wait for itself
    await engine.plan_run(
        "r", packages=[PackageSpec(name="a", items=[item("x", "b/*")]), PackageSpec(name="b", items=["b1"])]
    )
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", packages=[PackageSpec(name="b", items=[item("b2", "a/x")])])
    assert str(err.value) == "dependency cycle: b/b2 → a/x → b/* → b/b2"
    assert err.value.field == "packages"
    assert await status_of(engine, "r") == {"a/x": "blocked", "b/b1": "pending"}  # nothing written
    more = await engine.plan_run("r", packages=[PackageSpec(name="b", items=["b3"])])  # no cycle: fine
    assert more.added_items == 1 and (await status_of(engine, "r"))["a/x"] == "blocked"
    await assert_consistent(engine)


async def test_a_claim_of_one_blocked_package_waits_on_the_runs_leases(engine: Engine) -> None:
    Clock(engine)
    await engine.plan_run(
        "r",
        packages=[PackageSpec(name="a", items=["x"]), PackageSpec(name="b", items=[item("y", "a/x")])],
        policy=POLICY,
    )
    await claim_one(engine, "r")  # a/x is leased: b's only item waits for it
    short = await engine.claim_items("r", worker="w", package="b")
    assert short.reason == "blocked" and short.retry_after_seconds == pytest.approx(LEASE)


def names(got: list[ClaimedItem]) -> list[str]:
    return [f"{c.package}/{c.item}" for c in got]


async def test_a_gated_claim_takes_eligible_items_behind_held_keys_in_order_and_fills_its_batch(
    engine: Engine,
) -> None:
    """The best ranked items wait on keys another run's live leases hold: a claim passes over them to the
    eligible items behind them, best first (package priority, item priority, plan order), and comes back full
    while one is eligible: the held ones take no slot from those behind them."""
    Clock(engine)
    keys = [f"k{n}" for n in range(4)]
    await engine.plan_run(
        "holder", packages=[PackageSpec(name="h", items=[item(k, locks=[k]) for k in keys])], policy=POLICY
    )
    assert len((await engine.claim_items("holder", worker="w", limit=4)).items) == 4
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(
                name="top",
                priority=2,
                items=[
                    item("t0", priority=1, locks=["k0"]),
                    item("t1", priority=1, locks=["k1", "free"]),
                    item("t2", locks=["k2"]),
                    item("t3", locks=["k3"]),
                ],
            ),
            PackageSpec(
                name="mid",
                priority=1,
                items=[item("m0", locks=["k0"]), "m1", item("m2", locks=["k3"]), "m3", "m4", "m5"],
            ),
            PackageSpec(name="low", items=["l0", "l1", "l2"]),
        ],
        policy=POLICY,
    )
    got = await engine.claim_items("r", worker="w", limit=4)
    assert names(got.items) == ["mid/m1", "mid/m3", "mid/m4", "mid/m5"]
    # the same from a report's next claim (its own transaction, no merged statement before it)
    first = await engine.claim_items("r", worker="w", limit=2)
    assert names(first.items) == ["low/l0", "low/l1"]
    await engine.plan_run("r", packages=[PackageSpec(name="more", priority=1, items=["x0", "x1", "x2"])])
    done = await engine.complete_item(
        first.items[0].outcome_id, lease_token=first.items[0].lease_token, content="l0", claim_next=3
    )
    assert names(done.next or []) == ["more/x0", "more/x1", "more/x2"]
    await assert_consistent(engine)


async def test_a_capped_package_leaves_its_share_to_the_others_before_a_lower_priority(
    engine: Engine,
) -> None:
    """A package at its cap takes less than its round-robin share: the rest of the batch goes to the other
    packages of its priority before anything ranked lower, and the batch comes back full."""
    Clock(engine)
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="p", priority=1, items=["p1", "p2", "p3"], max_concurrent=1),
            PackageSpec(name="q", priority=1, items=["q1", "q2", "q3"]),
            PackageSpec(name="s", items=["s1", "s2"]),
        ],
        policy=POLICY,
    )
    got = await engine.claim_items("r", worker="w", limit=5)
    assert names(got.items) == ["p/p1", "q/q1", "q/q2", "q/q3", "s/s1"]
    await assert_consistent(engine)


async def test_a_capped_package_with_two_priorities_does_not_cut_a_batch_short(engine: Engine) -> None:
    """A capped package whose items differ in priority fills its cap at its better level: its other level's
    items are passed over for the next package's, and the batch comes back full."""
    Clock(engine)
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="p", priority=1, items=[item("hi", priority=1), "lo"], max_concurrent=1),
            PackageSpec(name="q", items=["q1", "q2", "q3"]),
            PackageSpec(name="z", priority=-1, items=["first"]),
        ],
        policy=POLICY,
    )
    first = (await engine.claim_items("r", worker="w", package="z")).items[0]
    # the next claim of a report runs in the report's transaction: no merged claim statement before it
    done = await engine.complete_item(
        first.outcome_id, lease_token=first.lease_token, content="1", claim_next=3
    )
    assert names(done.next or []) == ["p/hi", "q/q1", "q/q2"]
    got = await engine.claim_items("r", worker="w", limit=3)
    assert names(got.items) == ["q/q3"] and got.reason == "capped"
    await assert_consistent(engine)
