"""The store contract, through the engine, on every backend: identical semantics on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import anyio
import pytest

from matrix_mcp.config import Settings, is_postgres_url, sqlite_path
from matrix_mcp.engine import Engine, InputError
from matrix_mcp.errors import Conflict, NotFound, StaleLease, StoreError
from matrix_mcp.models import ItemSpec, LeaseRef, Outcome, PackageSpec, PackageSummary, RunPolicy
from matrix_mcp.rules import backoff_delay
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio


def grid(n: int, m: int) -> list[PackageSpec]:
    return [PackageSpec(name=f"p{i}", items=[f"i{j}" for j in range(m)]) for i in range(n)]


class Clock:
    def __init__(self, engine: Engine, start: float = 1_800_000_000.0) -> None:
        self.t = start
        engine.now = lambda: self.t  # type: ignore[method-assign]

    def advance(self, seconds: float) -> None:
        self.t += seconds


async def test_plan_is_idempotent_and_extends(engine: Engine) -> None:
    first = await engine.plan_run("r", packages=grid(3, 4), goal="g")
    assert first.created and first.packages == 3 and first.items == 12 and first.added_items == 12
    again = await engine.plan_run("r", packages=grid(3, 4))
    assert not again.created and again.added_items == 0 and again.added_packages == []
    assert again.run.id == first.run.id
    more = await engine.plan_run(
        "r", packages=[PackageSpec(name="p0", items=["i0", "new"]), PackageSpec(name="p9", items=["x"])]
    )
    assert more.added_items == 2 and more.added_packages == ["p9"] and more.items == 14
    assert (await engine.get_run("r")).counts.pending == 14
    await assert_consistent(engine)


async def test_plan_rejects_bad_input_and_writes_nothing(engine: Engine) -> None:
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x", "x"])])
    assert err.value.field == "packages[0].items[1]"
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", packages=[PackageSpec(name="a"), PackageSpec(name="a")])
    assert err.value.field == "packages[1].name"
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", packages=grid(1, 1), policy=RunPolicy(outcome_schema={"type": "nonsense"}))
    assert err.value.field == "outcome_schema"
    assert (await engine.list_runs()).runs == []


async def test_claim_is_fair_across_packages_and_exclusive(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(3, 3))
    got = await engine.claim_items("r", worker="w1", limit=3)
    assert sorted(i.package for i in got.items) == ["p0", "p1", "p2"]
    got2 = await engine.claim_items("r", worker="w2", limit=6)
    assert len(got2.items) == 6
    ids = [i.outcome_id for i in got.items + got2.items]
    assert len(set(ids)) == 9
    empty = await engine.claim_items("r", worker="w3")
    assert empty.items == [] and empty.reason == "all_leased" and empty.retry_after_seconds is not None
    await assert_consistent(engine)


async def test_concurrent_claimers_never_share_an_item(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(4, 25))
    seen: list[str] = []

    async def worker(n: int) -> None:
        while True:
            got = await engine.claim_items("r", worker=f"w{n}", limit=2)
            if not got.items:
                return
            for item in got.items:
                seen.append(item.outcome_id)
                await engine.complete_item(
                    item.outcome_id, lease_token=item.lease_token, metrics={"lines_generated": 1}
                )

    async with anyio.create_task_group() as tg:
        for n in range(16):
            tg.start_soon(worker, n)
    assert len(seen) == 100 and len(set(seen)) == 100
    run = await engine.get_run("r")
    assert run.counts.complete == 100 and run.state == "done"
    assert (await engine.claim_items("r", worker="late")).reason == "done"
    await assert_consistent(engine)


async def test_complete_is_fenced_and_idempotent(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(1, 1))
    item = (await engine.claim_items("r", worker="w")).items[0]
    with pytest.raises(StaleLease):
        await engine.complete_item(item.outcome_id, lease_token="not-the-token")
    done = await engine.complete_item(
        item.outcome_id, lease_token=item.lease_token, content="hello", metrics={"quality_score": 0.5}
    )
    assert done.status == "complete" and done.outcome and done.outcome.content_bytes == 5
    again = await engine.complete_item(
        item.outcome_id, lease_token=item.lease_token, content="hello", metrics={"quality_score": 0.5}
    )
    assert again.outcome and again.outcome.updated_at == done.outcome.updated_at
    with pytest.raises(Conflict):
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="different")
    summary = await engine.package_summary("p0", run="r")
    assert summary.completed_items == 1 and summary.average_quality_score == 0.5
    await assert_consistent(engine)


async def test_outcomes_read_back_are_what_validation_makes(engine: Engine) -> None:
    """The stores build an outcome read from their own rows without validating it (rows.outcome_from): each
    field must already be what the validated model holds, down to its type."""
    spec = ItemSpec(name="a", specifications={"goal": "x", "n": 2}, priority=3, locks=["file:a.py"])
    await engine.plan_run("r", packages=[PackageSpec(name="p", items=[spec, "b", "c"])])
    item = (await engine.claim_items("r", worker="w")).items[0]
    done = await engine.complete_item(
        item.outcome_id, lease_token=item.lease_token, content="hi", metrics={"lines_generated": 4}
    )
    assert done.outcome is not None
    await engine.claim_items("r", worker="w")
    read = [done.outcome, *(await engine.list_outcomes(run="r")).outcomes]
    assert {o.status for o in read} == {"complete", "generating", "pending"}
    for o in read:
        valid = Outcome.model_validate(o.model_dump())
        assert valid == o and valid.model_dump_json() == o.model_dump_json()
        assert {k: type(v) for k, v in valid} == {k: type(v) for k, v in o}


async def test_expired_lease_is_reclaimed_and_late_report_rejected(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(1, 1), policy=RunPolicy(lease_seconds=10, max_attempts=3))
    first = (await engine.claim_items("r", worker="slow")).items[0]
    clock.advance(5)
    hb = await engine.heartbeat([LeaseRef(outcome_id=first.outcome_id, lease_token=first.lease_token)])
    assert [e.outcome_id for e in hb.extended] == [first.outcome_id]
    clock.advance(9)  # t+14: past the first lease (t+10), inside the extended one (t+15)
    assert (await engine.claim_items("r", worker="fast")).reason == "all_leased"
    clock.advance(2)
    second = (await engine.claim_items("r", worker="fast")).items[0]
    assert second.outcome_id == first.outcome_id and second.attempt == 2
    with pytest.raises(StaleLease):
        await engine.complete_item(first.outcome_id, lease_token=first.lease_token, content="late")
    lost = await engine.heartbeat([LeaseRef(outcome_id=first.outcome_id, lease_token=first.lease_token)])
    assert lost.lost == [first.outcome_id] and lost.extended == []
    out = await engine.complete_item(second.outcome_id, lease_token=second.lease_token, content="on time")
    assert out.outcome and out.outcome.worker == "fast" and out.attempt == 2
    detail = await engine.get_outcome(out.outcome_id)
    assert [h.status for h in detail.history] == ["failed", "complete"]
    assert detail.history[0].error == "lease expired"
    await assert_consistent(engine)


async def test_lease_expiry_spends_attempts(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(1, 1), policy=RunPolicy(lease_seconds=1, max_attempts=2))
    for _ in range(2):
        assert (await engine.claim_items("r", worker="w")).items
        clock.advance(2)
    result = await engine.claim_items("r", worker="w")
    assert result.items == [] and result.reason == "done"
    (outcome,) = (await engine.list_outcomes(run="r")).outcomes
    assert outcome.status == "failed" and "lease expired" in (outcome.error_message or "")
    await assert_consistent(engine)


async def test_a_lease_expired_moments_after_the_last_sweep_is_claimed(engine: Engine) -> None:
    # the claims may sweep expired leases only now and then; a claim that would come back short sweeps first
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(1, 2), policy=RunPolicy(lease_seconds=0.25, max_attempts=3))
    first = (await engine.claim_items("r", worker="slow")).items[0]
    clock.advance(0.5)
    got = (await engine.claim_items("r", worker="fast", limit=2)).items
    assert sorted((c.item, c.attempt) for c in got) == [(first.item, 2), ("i1", 1)]
    with pytest.raises(StaleLease):
        await engine.complete_item(first.outcome_id, lease_token=first.lease_token, content="late")
    await assert_consistent(engine)


async def test_retries_back_off_until_max_attempts(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run(
        "r", packages=grid(1, 1), policy=RunPolicy(max_attempts=3, backoff_seconds=10, backoff_cap_seconds=15)
    )
    delays = []
    for attempt in (1, 2):
        item = (await engine.claim_items("r", worker="w")).items[0]
        assert item.attempt == attempt
        failed = await engine.fail_item(item.outcome_id, lease_token=item.lease_token, error="boom")
        assert failed.status == "pending" and failed.available_at is not None
        delay = failed.available_at.timestamp() - clock.t
        delays.append(delay)
        blocked = await engine.claim_items("r", worker="w")
        assert blocked.reason == "backing_off" and blocked.retry_after_seconds == pytest.approx(
            delay, abs=0.01
        )
        # repeating the identical failure report is idempotent
        assert (
            await engine.fail_item(item.outcome_id, lease_token=item.lease_token, error="boom")
        ).status == "pending"
        clock.advance(delay + 0.001)
    assert 5 <= delays[0] <= 10 and 7.5 <= delays[1] <= 15
    item = (await engine.claim_items("r", worker="w")).items[0]
    final = await engine.fail_item(item.outcome_id, lease_token=item.lease_token, error="boom for good")
    assert final.status == "failed" and final.outcome and final.outcome.error_message == "boom for good"
    assert final.attempt == 3
    assert (await engine.package_summary("p0")).failed_items == 1
    requeued = await engine.retry_items("r")
    assert requeued.requeued == 1
    again = (await engine.claim_items("r", worker="w")).items[0]
    assert again.attempt == 1
    await assert_consistent(engine)


async def test_non_retryable_failure_is_final(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(1, 2))
    item = (await engine.claim_items("r", worker="w")).items[0]
    out = await engine.fail_item(
        item.outcome_id, lease_token=item.lease_token, error="bad spec", retryable=False
    )
    assert out.status == "failed" and out.attempt == 1
    await assert_consistent(engine)


async def test_backoff_is_capped_and_jittered() -> None:
    import random

    rng = random.Random(1)
    values = [backoff_delay(a, 5, 60, rng) for a in range(1, 10)]
    assert all(0 < v <= 60 for v in values)
    assert max(values) > 30  # grows to the cap
    assert backoff_delay(3, 0, 60) == 0


async def test_outcome_schema_is_enforced(engine: Engine) -> None:
    schema = {
        "type": "object",
        "properties": {
            "metrics": {"type": "object", "properties": {"quality_score": {"type": "number", "maximum": 1}}},
            "metadata": {"type": "object", "required": ["language"]},
        },
    }
    await engine.plan_run("r", packages=grid(1, 1), policy=RunPolicy(outcome_schema=schema))
    item = (await engine.claim_items("r", worker="w")).items[0]
    with pytest.raises(InputError) as err:
        await engine.complete_item(
            item.outcome_id,
            lease_token=item.lease_token,
            metrics={"quality_score": 3},
            metadata={"language": "py"},
        )
    assert err.value.field == "metrics.quality_score"
    with pytest.raises(InputError) as err:
        await engine.complete_item(
            item.outcome_id, lease_token=item.lease_token, metrics={"quality_score": 1}
        )
    assert "language" in str(err.value)
    assert (await engine.get_outcome(item.outcome_id)).status == "generating"  # nothing half-written
    ok = await engine.complete_item(
        item.outcome_id,
        lease_token=item.lease_token,
        metrics={"quality_score": 1},
        metadata={"language": "py"},
    )
    assert ok.status == "complete"
    await assert_consistent(engine)


async def test_pause_resume_cancel(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(2, 2))
    held = (await engine.claim_items("r", worker="w")).items[0]
    await engine.control_run("r", action="pause")
    assert (await engine.claim_items("r", worker="w")).reason == "paused"
    await engine.control_run("r", action="resume")
    assert (await engine.claim_items("r", worker="w")).items
    run = await engine.control_run("r", action="cancel")
    assert run.state == "cancelled" and run.counts.cancelled == 2
    assert (await engine.claim_items("r", worker="w")).reason == "cancelled"
    hb = await engine.heartbeat([LeaseRef(outcome_id=held.outcome_id, lease_token=held.lease_token)])
    assert hb.cancelled == [held.outcome_id]
    # work finished on a cancelled run is kept
    assert (
        await engine.complete_item(held.outcome_id, lease_token=held.lease_token, content="x")
    ).status == "complete"
    with pytest.raises(Conflict):
        await engine.control_run("r", action="resume")
    await assert_consistent(engine)


async def test_tracking_api(engine: Engine) -> None:
    await engine.plan_run("r", packages=[])
    rec = await engine.record_outcome(
        run="r", package="docs", item="intro", status="generating", created_by="me"
    )
    assert rec.created and rec.outcome.status == "generating"
    again = await engine.record_outcome(
        run="r",
        package="docs",
        item="intro",
        status="complete",
        metrics={"lines_generated": 40, "quality_score": 0.9},
    )
    assert not again.created and again.outcome.status == "complete"
    upd = await engine.update_outcome_status(again.outcome.id, status="failed", error_message="reverted")
    assert upd.status == "failed" and upd.error_message == "reverted"
    summary = await engine.package_summary("docs", run="r")
    assert summary.failed_items == 1 and summary.total_lines_generated == 0
    await engine.update_outcome_status(again.outcome.id, status="complete", metrics={"lines_generated": 10})
    metrics = await engine.system_metrics("r")
    assert metrics.outcomes_complete == 1 and metrics.total_lines_generated == 10
    assert metrics.outcomes_by_hour and sum(h.completed for h in metrics.outcomes_by_hour) == 2
    ev = await engine.record_integration_event(
        integration_type="slack", action="message_posted", run="r", details={"channel": "#dev"}
    )
    assert ev.integration_type == "slack" and ev.run == "r"
    with pytest.raises(NotFound):
        await engine.record_outcome(run="nope", package="p", item="i")
    with pytest.raises(NotFound):
        await engine.get_outcome("00000000-0000-0000-0000-000000000000")
    await assert_consistent(engine)


async def test_update_status_fences_off_the_lease_holder(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(1, 1))
    item = (await engine.claim_items("r", worker="w")).items[0]
    await engine.update_outcome_status(item.outcome_id, status="pending")
    with pytest.raises(StaleLease):
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="x")
    await assert_consistent(engine)


async def test_pagination_covers_everything_once(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(3, 7))
    await engine.plan_run("other", packages=grid(1, 5))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await engine.list_outcomes(run="r", limit=4, cursor=cursor)
        seen += [o.id for o in page.outcomes]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 21 and len(set(seen)) == 21 and pages == 6
    only = await engine.list_outcomes(run="r", package="p1", status="pending", limit=100)
    assert len(only.outcomes) == 7 and {o.package for o in only.outcomes} == {"p1"}
    with pytest.raises(InputError) as err:
        await engine.list_outcomes(cursor="garbage!")
    assert err.value.field == "cursor"


async def test_listing_by_status_returns_exactly_that_status_paged(engine: Engine) -> None:
    """Every status filter, with and without a run (and with a package), returns exactly the items in that
    status — after claims, reports, a lease expiry, overrides, a retry and a cancelled run moved them — in
    listing order, each once across pages of 2."""
    clock = Clock(engine)
    policy = RunPolicy(lease_seconds=10, max_attempts=3, backoff_seconds=0, backoff_cap_seconds=0)
    await engine.plan_run("r", packages=grid(3, 8), policy=policy)
    first = (await engine.claim_items("r", worker="w", limit=10)).items
    for item in first[:4]:
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="ok")
    for item in first[4:7]:
        await engine.fail_item(item.outcome_id, lease_token=item.lease_token, error="bad", retryable=False)
    await engine.fail_item(first[7].outcome_id, lease_token=first[7].lease_token, error="again")  # pending
    clock.advance(11)  # first[8:] expire; the next claim sweeps them back to pending and leases 4 more
    assert len((await engine.claim_items("r", worker="w", limit=4)).items) == 4
    await engine.update_outcome_status(first[0].outcome_id, status="cancelled")
    await engine.update_outcome_status(first[4].outcome_id, status="complete")
    await engine.update_outcome_status(first[1].outcome_id, status="generating")
    assert (await engine.retry_items("r", outcome_ids=[first[5].outcome_id])).requeued == 1
    await engine.plan_run("c", packages=grid(2, 3))
    done = (await engine.claim_items("c", worker="w")).items[0]
    await engine.complete_item(done.outcome_id, lease_token=done.lease_token, content="ok")
    await engine.control_run("c", action="cancel")  # its 5 pending items cancelled

    everything = (await engine.list_outcomes(limit=1000)).outcomes
    assert len(everything) == 30
    statuses = {o.status for o in everything}
    assert statuses == {"pending", "generating", "complete", "failed", "cancelled"}
    for run in ("r", "c", None):
        for status in ("pending", "generating", "complete", "failed", "cancelled"):
            for package in (None, "p1"):
                expected = [
                    o.id
                    for o in everything
                    if o.status == status and run in (None, o.run) and package in (None, o.package)
                ]
                seen: list[str] = []
                cursor = None
                while True:
                    page = await engine.list_outcomes(
                        run=run, package=package, status=status, limit=2, cursor=cursor
                    )
                    assert len(page.outcomes) <= 2
                    assert all(o.status == status for o in page.outcomes)
                    seen += [o.id for o in page.outcomes]
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                assert seen == expected, (run, status, package)
    await assert_consistent(engine)


async def test_artifacts_stay_inside_the_root(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(1, 1))
    item = (await engine.claim_items("r", worker="w")).items[0]
    root = engine.artifacts.root
    outside = root.parent / "escape"
    outside.mkdir()
    (root / "r").mkdir(parents=True, exist_ok=True)  # the run's folder: a client's path is relative to it
    (root / "r" / "link").symlink_to(outside)
    for bad in [
        "../x",
        "/etc/passwd",
        "a/../../x",
        "link/x",
        "a\x00b",
        ".blobs/x",
        "CON",
        "x" * 300,
        "a\\..\\b",
    ]:
        with pytest.raises(StoreError) as err:
            await engine.complete_item(
                item.outcome_id, lease_token=item.lease_token, content="pwn", outcome_path=bad
            )
        assert err.value.field == "outcome_path"
    assert list(outside.iterdir()) == []
    assert (await engine.get_outcome(item.outcome_id)).status == "generating"
    out = await engine.complete_item(
        item.outcome_id, lease_token=item.lease_token, content="ok", outcome_path="a/b.txt"
    )
    assert (
        (root / "r" / "a" / "b.txt").read_text() == "ok"
        and out.outcome
        and out.outcome.mime_type == "text/plain"
        and out.outcome.outcome_path == "r/a/b.txt"
    )
    data, mime = await engine.outcome_content(out.outcome_id)
    assert data == b"ok" and mime == "text/plain"


async def test_content_size_limit(engine: Engine) -> None:
    engine.limits = type(engine.limits)(max_content_bytes=10)
    await engine.plan_run("r", packages=grid(1, 1))
    item = (await engine.claim_items("r", worker="w")).items[0]
    with pytest.raises(InputError) as err:
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="x" * 11)
    assert err.value.field == "content"


async def test_events_and_long_poll(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(1, 2))
    status = await engine.run_status("r")
    seq = status.latest_seq
    assert seq > 0 and status.counts.pending == 2

    async def later() -> None:
        await anyio.sleep(0.2)
        await engine.claim_items("r", worker="w")

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        waited = await engine.run_status("r", since=seq, wait_seconds=10)
    assert [e.kind for e in waited.events] == ["claimed"] and waited.latest_seq > seq
    quiet = await engine.run_status("r", since=waited.latest_seq, wait_seconds=0.2)
    assert quiet.events == []


async def test_claim_long_poll_wakes_when_an_item_frees(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(1, 1))
    item = (await engine.claim_items("r", worker="a")).items[0]

    async def release() -> None:
        await anyio.sleep(0.2)
        await engine.fail_item(item.outcome_id, lease_token=item.lease_token, error="retry me")

    await engine.plan_run("r", packages=grid(1, 1), policy=RunPolicy(backoff_seconds=0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(release)
        got = await engine.claim_items("r", worker="b", wait_seconds=10)
    assert [i.outcome_id for i in got.items] == [item.outcome_id]


async def test_export_jsonl_and_csv(engine: Engine) -> None:
    await engine.plan_run(
        "r", packages=[PackageSpec(name="p", items=[ItemSpec(name="a", specifications={"k": 1}), "b"])]
    )
    j = await engine.export_outcomes("r", format="jsonl")
    lines = open(j.path, encoding="utf-8").read().splitlines()
    assert j.count == 2 and len(lines) == 2 and json.loads(lines[0])["specifications"] == {"k": 1}
    c = await engine.export_outcomes("r", format="csv")
    assert c.count == 2 and open(c.path, encoding="utf-8").read().startswith("id,")


async def test_injection_strings_are_data(engine: Engine) -> None:
    evil = "'; DROP TABLE outcomes; --"
    await engine.plan_run(evil, packages=[PackageSpec(name=evil, items=[evil, 'x"); DROP TABLE runs; --'])])
    item = (await engine.claim_items(evil, worker=evil)).items[0]
    await engine.complete_item(item.outcome_id, lease_token=item.lease_token, metrics={evil: 1})
    run = await engine.get_run(evil)
    assert run.name == evil and run.counts.total == 2
    assert (await engine.package_summary(evil, run=evil)).completed_items == 1
    await assert_consistent(engine)


async def test_unknown_run_names_the_field(engine: Engine) -> None:
    with pytest.raises(NotFound) as err:
        await engine.claim_items("missing", worker="w")
    assert err.value.field == "run"


async def test_default_artifact_path_is_checked_before_commit(engine: Engine) -> None:
    await engine.plan_run("exports", packages=grid(1, 2))  # a run named like the internal exports folder
    first = (await engine.claim_items("exports", worker="w")).items[0]
    out = await engine.complete_item(first.outcome_id, lease_token=first.lease_token, content="fine")
    path = out.outcome and out.outcome.outcome_path
    assert path and not path.startswith("exports/")
    assert (engine.artifacts.root / path).read_text() == "fine"
    second = (await engine.claim_items("exports", worker="w")).items[0]
    outside = engine.artifacts.root.parent / "elsewhere"
    outside.mkdir()
    planted = engine.artifacts.root / path.rsplit("/", 1)[0] / second.item
    planted.symlink_to(outside / "target")
    with pytest.raises(StoreError) as err:
        await engine.complete_item(second.outcome_id, lease_token=second.lease_token, content="pwn")
    assert err.value.field == "outcome_path"
    assert (await engine.get_outcome(second.outcome_id)).status == "generating"
    assert list(outside.iterdir()) == []
    await assert_consistent(engine)


# ---- counters, fairness, retries, durations and throughput ------------------------------------------


async def _sql(database_url: str, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    """Run statements on the store's database behind the engine's back (sqlite3 or psycopg, one
    transaction, `?` placeholders). In a thread: the store's own tasks share this event loop."""

    def run() -> None:
        if is_postgres_url(database_url):
            import psycopg

            with psycopg.connect(database_url) as conn:
                for text, args in statements:
                    conn.execute(text.replace("?", "%s"), args)
            return
        import sqlite3

        path = sqlite_path(database_url)
        assert path is not None
        db = sqlite3.connect(path, timeout=30)
        try:
            with db:
                for text, args in statements:
                    db.execute(text, args)
        finally:
            db.close()

    await anyio.to_thread.run_sync(run)


async def _corrupt_package(database_url: str, run: str, package: str) -> None:
    """Skew a package's stored counters the way a lost update would: five phantom completions, a thousand
    phantom lines and a phantom duration in bucket 200 (about 7.5e15 s). On PostgreSQL the counters a
    reader sees are the package row plus unrolled deltas: skewing the row skews the sum."""
    if is_postgres_url(database_url):
        hist = "hist_b = array_append(hist_b, 200), hist_n = array_append(hist_n, 1::bigint)"
    else:
        hist = "duration_hist = json_insert(duration_hist, '$[#]', json_array(200, 1))"
    update = (
        "UPDATE packages SET complete = complete + 5, lines_sum = lines_sum + 1000, "
        + hist
        + " WHERE run_id = (SELECT id FROM runs WHERE name = ?) AND name = ?"
    )
    await _sql(database_url, [(update, (run, package))])


async def _summaries(engine: Engine, run: str) -> list[PackageSummary]:
    return [await engine.package_summary(p.package, run=run) for p in (await engine.run_status(run)).packages]


async def test_rebuild_counters_keeps_true_counters_and_repairs_skewed_ones(
    engine: Engine, settings: Settings
) -> None:
    clock = Clock(engine)
    policy = RunPolicy(max_attempts=3, backoff_seconds=0)
    await engine.plan_run("r", packages=grid(3, 3), policy=policy)
    await engine.plan_run("other", packages=grid(1, 2), policy=policy)
    items = {(i.package, i.item): i for i in (await engine.claim_items("r", worker="w", limit=9)).items}
    assert len(items) == 9

    async def complete(key: tuple[str, str], after: float, **metrics: float) -> None:
        clock.advance(after)
        item = items[key]
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token, metrics=metrics)

    async def fail(key: tuple[str, str], retryable: bool) -> None:
        item = items[key]
        await engine.fail_item(
            item.outcome_id, lease_token=item.lease_token, error="boom", retryable=retryable
        )

    await complete(("p0", "i0"), 2, lines_generated=10, quality_score=0.5)
    await fail(("p0", "i1"), retryable=True)  # back to pending, claimed again below
    await fail(("p0", "i2"), retryable=False)
    await complete(("p1", "i0"), 4, lines_generated=5)
    await complete(("p1", "i1"), 1, quality_score=0.25)
    await fail(("p2", "i0"), retryable=False)
    assert (await engine.retry_items("r", package="p2")).requeued == 1
    again = (await engine.claim_items("r", worker="w2", package="p0")).items[0]
    assert (again.package, again.item, again.attempt) == ("p0", "i1", 2)
    clock.advance(3)
    await engine.complete_item(
        again.outcome_id,
        lease_token=again.lease_token,
        metrics={"lines_generated": 20, "quality_score": 0.75},
    )
    other = (await engine.claim_items("other", worker="w")).items[0]
    clock.advance(6)
    await engine.complete_item(
        other.outcome_id, lease_token=other.lease_token, metrics={"lines_generated": 7}
    )

    run = await engine.get_run("r")
    summaries = await _summaries(engine, "r")
    metrics = await engine.system_metrics("r")
    other_summary = await engine.package_summary("p0", run="other")
    p0, p1, p2 = summaries
    # the scenario is what it claims to be, so "unchanged" below means "still right"
    assert (p0.completed_items, p0.failed_items, p0.total_lines_generated) == (2, 1, 30)
    assert p0.average_quality_score == 0.625 and p0.avg_duration_seconds == 2.5  # durations 2 and 3
    assert (p1.completed_items, p1.generating_items, p1.total_lines_generated) == (2, 1, 5)
    assert p1.average_quality_score == 0.25 and p1.avg_duration_seconds == 6.5  # durations 6 and 7
    assert (p2.pending_items, p2.failed_items, p2.generating_items, p2.completed_items) == (1, 0, 2, 0)
    assert run.counts.model_dump() == {
        "pending": 1,
        "generating": 3,
        "complete": 4,
        "failed": 1,
        "cancelled": 0,
        "blocked": 0,
        "in_review": 0,
        "total": 9,
    }
    assert metrics.avg_generation_time == 4.5 and metrics.total_lines_generated == 35

    # rebuilding true counters changes nothing a reader sees
    await engine.store.rebuild_counters()
    await engine.store.rebuild_counters(run.id)
    assert await engine.get_run("r") == run
    assert await _summaries(engine, "r") == summaries
    assert await engine.system_metrics("r") == metrics
    assert await engine.package_summary("p0", run="other") == other_summary
    await assert_consistent(engine)

    # a skewed counter: recount names it, readers see it, a rebuild of the run repairs it
    await _corrupt_package(settings.database_url, "r", "p0")
    report = await engine.store.recount(run.id)
    assert not report.consistent
    assert any(m.startswith("r/p0: complete counter") for m in report.mismatches), report.mismatches
    assert any(m.startswith("r/p0: lines_sum counter") for m in report.mismatches), report.mismatches
    assert any(m.startswith("r/p0: duration histogram") for m in report.mismatches), report.mismatches
    # (PostgreSQL also keeps each run's totals in a row of its own, which now disagrees with the package)
    assert all(m.startswith(("r/p0: ", "r: run ")) for m in report.mismatches), report.mismatches
    skewed = await engine.package_summary("p0", run="r")
    assert skewed.completed_items == 7 and skewed.total_lines_generated == 1030
    assert skewed.p99_duration_seconds is not None and skewed.p99_duration_seconds > 1e15
    assert (await engine.get_run("r")).counts.complete == 9
    await engine.store.rebuild_counters(run.id)
    assert (await engine.store.recount(run.id)).consistent
    assert await _summaries(engine, "r") == summaries
    assert await engine.get_run("r") == run
    assert await engine.system_metrics("r") == metrics

    # skews in two runs: a rebuild without a run repairs both
    await _corrupt_package(settings.database_url, "r", "p1")
    await _corrupt_package(settings.database_url, "other", "p0")
    report = await engine.store.recount()
    assert {m.split(":")[0] for m in report.mismatches if ": run " not in m} == {"r/p1", "other/p0"}, (
        report.mismatches
    )
    await engine.store.rebuild_counters()
    assert await _summaries(engine, "r") == summaries
    assert await engine.package_summary("p0", run="other") == other_summary
    await assert_consistent(engine)


async def test_single_claims_go_to_the_least_recently_served_package(engine: Engine) -> None:
    """claim_items: "round-robin across packages (least recently served first)", one item at a time too."""
    await engine.plan_run("r", packages=grid(3, 4))
    left = {f"p{i}": 4 for i in range(3)}
    last_served: dict[str, int] = {}
    order: list[str] = []
    for k in range(16):
        if k == 6:  # a package added mid-run has never been served: it goes first
            await engine.plan_run("r", packages=[PackageSpec(name="p3", items=[f"i{j}" for j in range(4)])])
            left["p3"] = 4
        got = await engine.claim_items("r", worker=f"w{k}", limit=1)
        assert len(got.items) == 1, got
        item = got.items[0]
        oldest = min(last_served.get(p, -1) for p, n in left.items() if n > 0)
        assert last_served.get(item.package, -1) == oldest, (k, item.package, order)
        last_served[item.package] = k
        left[item.package] -= 1
        order.append(item.package)
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
    # while the three packages all had items, every three consecutive claims covered all three
    assert all(len(set(order[k : k + 3])) == 3 for k in range(0, 4)), order
    assert order[6] == "p3" and set(order[6:10]) == {"p0", "p1", "p2", "p3"}, order
    assert order[-2:] == ["p3", "p3"]  # the last package with items left gets them all
    assert (await engine.claim_items("r", worker="late")).reason == "done"
    await assert_consistent(engine)


async def test_retry_items_filters_by_package_and_outcome_ids(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(2, 3))
    claimed = (await engine.claim_items("r", worker="w", limit=6)).items
    failed: dict[str, list[str]] = {"p0": [], "p1": []}
    completed: dict[str, str] = {}
    for item in sorted(claimed, key=lambda i: (i.package, i.item)):
        if item.item == "i2":
            completed[item.package] = item.outcome_id
            await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="ok")
        else:
            await engine.fail_item(
                item.outcome_id, lease_token=item.lease_token, error=f"bad {item.item}", retryable=False
            )
            failed[item.package].append(item.outcome_id)

    only_p0 = await engine.retry_items("r", package="p0")
    assert only_p0.run == "r" and only_p0.requeued == 2
    assert sorted(only_p0.outcome_ids) == sorted(failed["p0"])
    for oid in failed["p0"]:
        o = await engine.get_outcome(oid)
        assert o.status == "pending" and o.attempts == 0
    for oid in failed["p1"]:
        assert (await engine.get_outcome(oid)).status == "failed"
    s0, s1 = await engine.package_summary("p0", run="r"), await engine.package_summary("p1", run="r")
    assert (s0.pending_items, s0.failed_items, s0.completed_items) == (2, 0, 1)
    assert (s1.pending_items, s1.failed_items, s1.completed_items) == (0, 2, 1)
    assert (await engine.retry_items("r", package="p0")).requeued == 0  # nothing failed there any more

    picked = failed["p1"][0]
    one = await engine.retry_items("r", outcome_ids=[picked, completed["p1"], "no-such-outcome"])
    assert one.requeued == 1 and one.outcome_ids == [picked]
    assert (await engine.get_outcome(picked)).status == "pending"
    assert (await engine.get_outcome(failed["p1"][1])).status == "failed"
    assert (await engine.get_outcome(completed["p1"])).status == "complete"
    # both filters at once: the id is in the other package, so nothing is requeued
    both = await engine.retry_items("r", package="p0", outcome_ids=[failed["p1"][1]])
    assert both.requeued == 0 and both.outcome_ids == []
    assert (await engine.get_outcome(failed["p1"][1])).status == "failed"
    with pytest.raises(NotFound) as err:
        await engine.retry_items("r", package="p9")
    assert err.value.field == "package"

    again = (await engine.claim_items("r", worker="w2", limit=10)).items
    assert sorted(i.outcome_id for i in again) == sorted([*failed["p0"], picked])
    assert all(i.attempt == 1 for i in again)
    run = await engine.get_run("r")
    assert (run.counts.generating, run.counts.failed, run.counts.complete) == (3, 1, 2)
    await assert_consistent(engine)


async def test_duration_averages_and_percentiles(engine: Engine) -> None:
    clock = Clock(engine)  # starts on an hour boundary
    await engine.plan_run(
        "r",
        packages=[
            PackageSpec(name="p0", items=[f"i{j}" for j in range(20)]),
            PackageSpec(name="p1", items=[f"i{j}" for j in range(4)]),
        ],
    )
    durations = [7.0, 1.0, 20.0, 13.0, 2.0, 18.0, 5.0, 11.0, 3.0, 16.0]
    durations += [10.0, 4.0, 19.0, 8.0, 15.0, 6.0, 12.0, 17.0, 9.0, 14.0]  # 1..20 s, shuffled
    for d in durations:
        item = (await engine.claim_items("r", worker="w", package="p0")).items[0]
        clock.advance(d)
        out = await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
        assert out.outcome and out.outcome.duration_seconds == d
    for _ in range(3):
        item = (await engine.claim_items("r", worker="w", package="p1")).items[0]
        clock.advance(0.5)
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
    item = (await engine.claim_items("r", worker="w", package="p1")).items[0]
    clock.advance(100)  # a failure's time is not a generation time
    await engine.fail_item(item.outcome_id, lease_token=item.lease_token, error="gave up", retryable=False)

    def nearest_rank(values: list[float], q: float) -> float:
        return sorted(values)[math.ceil(q * len(values)) - 1]

    p0 = await engine.package_summary("p0", run="r")
    assert p0.completed_items == 20 and p0.avg_duration_seconds == 10.5
    for q, got in (
        (0.5, p0.p50_duration_seconds),
        (0.9, p0.p90_duration_seconds),
        (0.99, p0.p99_duration_seconds),
    ):
        assert got == pytest.approx(nearest_rank(durations, q), rel=0.10), (q, got)
    assert p0.p50_duration_seconds < p0.p90_duration_seconds <= p0.p99_duration_seconds  # type: ignore[operator]
    p1 = await engine.package_summary("p1", run="r")
    assert (p1.completed_items, p1.failed_items, p1.avg_duration_seconds) == (3, 1, 0.5)
    for got in (p1.p50_duration_seconds, p1.p90_duration_seconds, p1.p99_duration_seconds):
        assert got == pytest.approx(0.5, rel=0.10)

    metrics = await engine.system_metrics("r")
    assert (metrics.outcomes_total, metrics.outcomes_complete, metrics.outcomes_failed) == (24, 23, 1)
    assert metrics.outcomes_pending == metrics.outcomes_generating == metrics.outcomes_cancelled == 0
    assert metrics.avg_generation_time == round(211.5 / 23, 6)
    assert metrics.success_rate == round(23 / 24, 6)
    (hour,) = metrics.outcomes_by_hour  # everything finished in the run's first hour
    assert hour.hour.timestamp() == 1_800_000_000
    assert (hour.completed, hour.failed, hour.avg_duration_seconds) == (23, 1, round(211.5 / 23, 6))
    await assert_consistent(engine)


async def test_run_status_throughput_covers_the_last_five_minutes(engine: Engine) -> None:
    clock = Clock(engine)  # starts on a minute boundary
    t0 = clock.t
    await engine.plan_run("r", packages=grid(2, 5))
    assert (await engine.run_status("r")).throughput_per_minute is None  # nothing finished yet
    clock.advance(60)
    claimed = (await engine.claim_items("r", worker="w", limit=8)).items
    clock.advance(10)
    for item in claimed[:6]:
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
    await engine.fail_item(
        claimed[6].outcome_id, lease_token=claimed[6].lease_token, error="final", retryable=False
    )
    await engine.fail_item(
        claimed[7].outcome_id, lease_token=claimed[7].lease_token, error="again"
    )  # back to pending

    def expected(finished: int, elapsed: float, remaining: int) -> tuple[float, float]:
        per_minute = round(finished / min(300.0, elapsed) * 60, 3)
        return per_minute, round(remaining / (per_minute / 60), 1)

    # 7 finished (6 complete + 1 failed for good; a retry is not finished) over the run's 2 minutes so far
    clock.t = t0 + 120
    status = await engine.run_status("r")
    assert status.counts.pending == 3 and status.counts.generating == 0
    assert (status.throughput_per_minute, status.eta_seconds) == expected(7, 120, 3) == (3.5, 51.4)
    # the window never spans more than five minutes, even for an older run
    clock.t = t0 + 330
    status = await engine.run_status("r")
    assert (status.throughput_per_minute, status.eta_seconds) == expected(7, 330, 3) == (1.4, 128.6)
    # once those finishes are more than five (and a bit) minutes old, there is no throughput and no ETA
    clock.t = t0 + 70 + 300 + 90
    status = await engine.run_status("r")
    assert status.throughput_per_minute is None and status.eta_seconds is None
    assert status.counts.complete == 6 and status.counts.failed == 1
    await assert_consistent(engine)


async def test_a_finished_runs_throughput_is_its_actual_rate_however_late_it_is_asked(
    engine: Engine,
) -> None:
    """A done run reports items finished over the span from its first start to its last finish: the
    figure does not decay as the clock moves on (the five-minute window is for runs still going)."""
    clock = Clock(engine)
    t0 = clock.t
    await engine.plan_run("r", packages=grid(2, 3))
    clock.advance(60)
    first = (await engine.claim_items("r", worker="w", limit=3)).items  # the first start: t0 + 60
    clock.advance(20)
    for item in first[:2]:
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
    await engine.fail_item(first[2].outcome_id, lease_token=first[2].lease_token, error="x", retryable=False)
    clock.advance(10)
    rest = (await engine.claim_items("r", worker="w", limit=3)).items
    clock.advance(30)  # the last finish: t0 + 120
    for item in rest:
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
    # 6 finished (5 complete, 1 failed) over 60 s
    for at in (t0 + 120, t0 + 121, t0 + 500, t0 + 86_400):
        clock.t = at
        status = await engine.run_status("r")
        assert status.state == "done"
        assert (status.throughput_per_minute, status.eta_seconds) == (6.0, None), at
    # a second process (nothing remembered) reads the same figure
    other = Engine(engine.store, engine.settings)
    other.now = lambda: t0 + 10_000  # type: ignore[method-assign]
    assert (await other.run_status("r")).throughput_per_minute == 6.0
    # a retry re-opens the run (the recent window again); failing again moves the last finish
    await engine.retry_items("r", outcome_ids=[first[2].outcome_id])
    assert (await engine.run_status("r")).state == "active"
    clock.advance(60)
    again = (await engine.claim_items("r", worker="w")).items[0]
    await engine.fail_item(again.outcome_id, lease_token=again.lease_token, error="x", retryable=False)
    status = await engine.run_status("r")
    assert status.throughput_per_minute == round(6 / (clock.t - (t0 + 60)) * 60, 3)
    await assert_consistent(engine)


async def _scripted_event_payloads(engine: Engine) -> list[tuple[str, str, dict[str, object]]]:
    """One scenario touching every outcome event kind; its events as (kind, item, data) without ids or times.
    The clock is fake and backoff is 0, so every payload is deterministic."""
    clock = Clock(engine)
    policy = RunPolicy(lease_seconds=10, max_attempts=2, backoff_seconds=0, backoff_cap_seconds=0)
    await engine.plan_run("r", packages=[PackageSpec(name="pkg", items=["a", "b", "c", "d"])], policy=policy)
    names: dict[str, str] = {}
    for _ in range(4):
        item = (await engine.claim_items("r", worker="w1")).items[0]
        names[item.outcome_id] = item.item
        clock.advance(1)
        if item.item == "a":
            await engine.complete_item(
                item.outcome_id, lease_token=item.lease_token, content="A", metrics={"n": 1}
            )
        elif item.item == "b":
            await engine.fail_item(
                item.outcome_id, lease_token=item.lease_token, error="transient"
            )  # retry_scheduled
        elif item.item == "c":
            await engine.fail_item(
                item.outcome_id, lease_token=item.lease_token, error="fatal", retryable=False
            )  # failed
        # d: left leased, expires below
    clock.advance(20)
    again = (
        await engine.claim_items("r", worker="w2", limit=5)
    ).items  # b again; d's lease expired and d again
    assert sorted(i.item for i in again) == ["b", "d"]
    for item in again:
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content=item.item)
    a_id = next(k for k, v in names.items() if v == "a")
    await engine.update_outcome_status(
        a_id, status="failed", error_message="reverted by hand"
    )  # status_updated
    await engine.record_outcome(
        run="r", package="pkg", item="e", status="complete", metrics={"n": 2}
    )  # recorded
    run_id = (await engine.run_info("r")).id
    events = await engine.store.events_after(since=0, run_id=run_id, limit=1000)
    return [(e.kind, names.get(e.outcome_id or "", ""), e.data) for e in events]


@pytest.mark.postgres
async def test_event_payloads_are_identical_on_both_backends(postgres_database: str, tmp_path: Path) -> None:
    """The same scripted scenario on SQLite and PostgreSQL yields the same events with the same payloads
    (in particular every outcome event names its package, which resource notifications are keyed on)."""
    payloads = []
    for url in (f"sqlite:///{tmp_path / 'm.db'}", postgres_database):
        eng = await Engine.open(Settings(database_url=url, artifacts_dir=tmp_path / "artifacts"))
        try:
            payloads.append(await _scripted_event_payloads(eng))
            await assert_consistent(eng)
        finally:
            await eng.close()
    sqlite_events, postgres_events = payloads
    assert sqlite_events == postgres_events
    kinds = {kind for kind, _, _ in sqlite_events}
    assert {"claimed", "completed", "retry_scheduled", "failed", "lease_expired", "status_updated"} <= kinds
    for kind, _, data in sqlite_events:
        if kind not in ("run_planned", "run_extended", "run_done"):
            assert data.get("package") == "pkg", (kind, data)


async def test_a_wrong_token_on_a_completed_item_says_it_is_complete(engine: Engine) -> None:
    """Not "re-claimed by another worker or reset" when neither happened: the item's own state is said."""
    await engine.plan_run("r", packages=grid(1, 1))
    item = (await engine.claim_items("r", worker="w")).items[0]
    await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="x")
    with pytest.raises(StaleLease) as err:
        await engine.complete_item(item.outcome_id, lease_token="a-wrong-token", content="x")
    message = str(err.value)
    assert "already complete" in message and "worker 'w'" in message and "re-claimed" not in message
    with pytest.raises(StaleLease, match="already complete"):
        await engine.fail_item(item.outcome_id, lease_token="a-wrong-token", error="boom")
    other = (await engine.plan_run("r2", packages=grid(1, 1))).run.name
    leased = (await engine.claim_items(other, worker="w2")).items[0]
    with pytest.raises(StaleLease, match=r"leased under another token .*worker 'w2'"):
        await engine.complete_item(leased.outcome_id, lease_token="a-wrong-token", content="x")
    await assert_consistent(engine)
