"""The store contract, through the engine, on every backend: identical semantics on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import anyio
import pytest

from matrix_mcp.engine import Engine, InputError, backoff_delay
from matrix_mcp.models import ItemSpec, LeaseRef, PackageSpec, RunPolicy
from matrix_mcp.store.base import Conflict, NotFound, StaleLease, StoreError
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
    first = await engine.plan_run("r", grid(3, 4), goal="g")
    assert first.created and first.packages == 3 and first.items == 12 and first.added_items == 12
    again = await engine.plan_run("r", grid(3, 4))
    assert not again.created and again.added_items == 0 and again.added_packages == []
    assert again.run.id == first.run.id
    more = await engine.plan_run(
        "r", [PackageSpec(name="p0", items=["i0", "new"]), PackageSpec(name="p9", items=["x"])]
    )
    assert more.added_items == 2 and more.added_packages == ["p9"] and more.items == 14
    assert (await engine.get_run("r")).counts.pending == 14
    await assert_consistent(engine)


async def test_plan_rejects_bad_input_and_writes_nothing(engine: Engine) -> None:
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", [PackageSpec(name="a", items=["x", "x"])])
    assert err.value.field == "packages[0].items[1]"
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", [PackageSpec(name="a"), PackageSpec(name="a")])
    assert err.value.field == "packages[1].name"
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", grid(1, 1), policy=RunPolicy(outcome_schema={"type": "nonsense"}))
    assert err.value.field == "outcome_schema"
    assert (await engine.list_runs()).runs == []


async def test_claim_is_fair_across_packages_and_exclusive(engine: Engine) -> None:
    await engine.plan_run("r", grid(3, 3))
    got = await engine.claim_items("r", "w1", limit=3)
    assert sorted(i.package for i in got.items) == ["p0", "p1", "p2"]
    got2 = await engine.claim_items("r", "w2", limit=6)
    assert len(got2.items) == 6
    ids = [i.outcome_id for i in got.items + got2.items]
    assert len(set(ids)) == 9
    empty = await engine.claim_items("r", "w3")
    assert empty.items == [] and empty.reason == "all_leased" and empty.retry_after_seconds is not None
    await assert_consistent(engine)


async def test_concurrent_claimers_never_share_an_item(engine: Engine) -> None:
    await engine.plan_run("r", grid(4, 25))
    seen: list[str] = []

    async def worker(n: int) -> None:
        while True:
            got = await engine.claim_items("r", f"w{n}", limit=2)
            if not got.items:
                return
            for item in got.items:
                seen.append(item.outcome_id)
                await engine.complete_item(item.outcome_id, item.lease_token, metrics={"lines_generated": 1})

    async with anyio.create_task_group() as tg:
        for n in range(16):
            tg.start_soon(worker, n)
    assert len(seen) == 100 and len(set(seen)) == 100
    run = await engine.get_run("r")
    assert run.counts.complete == 100 and run.state == "done"
    assert (await engine.claim_items("r", "late")).reason == "done"
    await assert_consistent(engine)


async def test_complete_is_fenced_and_idempotent(engine: Engine) -> None:
    await engine.plan_run("r", grid(1, 1))
    item = (await engine.claim_items("r", "w")).items[0]
    with pytest.raises(StaleLease):
        await engine.complete_item(item.outcome_id, "not-the-token")
    done = await engine.complete_item(
        item.outcome_id, item.lease_token, content="hello", metrics={"quality_score": 0.5}
    )
    assert done.status == "complete" and done.content_bytes == 5
    again = await engine.complete_item(
        item.outcome_id, item.lease_token, content="hello", metrics={"quality_score": 0.5}
    )
    assert again.updated_at == done.updated_at
    with pytest.raises(Conflict):
        await engine.complete_item(item.outcome_id, item.lease_token, content="different")
    summary = await engine.package_summary("p0", "r")
    assert summary.completed_items == 1 and summary.average_quality_score == 0.5
    await assert_consistent(engine)


async def test_expired_lease_is_reclaimed_and_late_report_rejected(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run("r", grid(1, 1), policy=RunPolicy(lease_seconds=10, max_attempts=3))
    first = (await engine.claim_items("r", "slow")).items[0]
    clock.advance(5)
    hb = await engine.heartbeat([LeaseRef(outcome_id=first.outcome_id, lease_token=first.lease_token)])
    assert [e.outcome_id for e in hb.extended] == [first.outcome_id]
    clock.advance(9)  # t+14: past the first lease (t+10), inside the extended one (t+15)
    assert (await engine.claim_items("r", "fast")).reason == "all_leased"
    clock.advance(2)
    second = (await engine.claim_items("r", "fast")).items[0]
    assert second.outcome_id == first.outcome_id and second.attempt == 2
    with pytest.raises(StaleLease):
        await engine.complete_item(first.outcome_id, first.lease_token, content="late")
    lost = await engine.heartbeat([LeaseRef(outcome_id=first.outcome_id, lease_token=first.lease_token)])
    assert lost.lost == [first.outcome_id] and lost.extended == []
    out = await engine.complete_item(second.outcome_id, second.lease_token, content="on time")
    assert out.worker == "fast" and out.attempts == 2
    detail = await engine.get_outcome(out.id)
    assert [h.status for h in detail.history] == ["failed", "complete"]
    assert detail.history[0].error == "lease expired"
    await assert_consistent(engine)


async def test_lease_expiry_spends_attempts(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run("r", grid(1, 1), policy=RunPolicy(lease_seconds=1, max_attempts=2))
    for _ in range(2):
        assert (await engine.claim_items("r", "w")).items
        clock.advance(2)
    result = await engine.claim_items("r", "w")
    assert result.items == [] and result.reason == "done"
    (outcome,) = (await engine.list_outcomes(run="r")).outcomes
    assert outcome.status == "failed" and "lease expired" in (outcome.error_message or "")
    await assert_consistent(engine)


async def test_retries_back_off_until_max_attempts(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run(
        "r", grid(1, 1), policy=RunPolicy(max_attempts=3, backoff_seconds=10, backoff_cap_seconds=15)
    )
    delays = []
    for attempt in (1, 2):
        item = (await engine.claim_items("r", "w")).items[0]
        assert item.attempt == attempt
        failed = await engine.fail_item(item.outcome_id, item.lease_token, "boom")
        assert failed.status == "pending" and failed.available_at is not None
        delay = failed.available_at.timestamp() - clock.t
        delays.append(delay)
        blocked = await engine.claim_items("r", "w")
        assert blocked.reason == "backing_off" and blocked.retry_after_seconds == pytest.approx(
            delay, abs=0.01
        )
        # repeating the identical failure report is idempotent
        assert (await engine.fail_item(item.outcome_id, item.lease_token, "boom")).status == "pending"
        clock.advance(delay + 0.001)
    assert 5 <= delays[0] <= 10 and 7.5 <= delays[1] <= 15
    item = (await engine.claim_items("r", "w")).items[0]
    final = await engine.fail_item(item.outcome_id, item.lease_token, "boom for good")
    assert final.status == "failed" and final.error_message == "boom for good" and final.attempts == 3
    assert (await engine.package_summary("p0")).failed_items == 1
    requeued = await engine.retry_items("r")
    assert requeued.requeued == 1
    again = (await engine.claim_items("r", "w")).items[0]
    assert again.attempt == 1
    await assert_consistent(engine)


async def test_non_retryable_failure_is_final(engine: Engine) -> None:
    await engine.plan_run("r", grid(1, 2))
    item = (await engine.claim_items("r", "w")).items[0]
    out = await engine.fail_item(item.outcome_id, item.lease_token, "bad spec", retryable=False)
    assert out.status == "failed" and out.attempts == 1
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
    await engine.plan_run("r", grid(1, 1), policy=RunPolicy(outcome_schema=schema))
    item = (await engine.claim_items("r", "w")).items[0]
    with pytest.raises(InputError) as err:
        await engine.complete_item(
            item.outcome_id, item.lease_token, metrics={"quality_score": 3}, metadata={"language": "py"}
        )
    assert err.value.field == "metrics.quality_score"
    with pytest.raises(InputError) as err:
        await engine.complete_item(item.outcome_id, item.lease_token, metrics={"quality_score": 1})
    assert "language" in str(err.value)
    assert (await engine.get_outcome(item.outcome_id)).status == "generating"  # nothing half-written
    ok = await engine.complete_item(
        item.outcome_id, item.lease_token, metrics={"quality_score": 1}, metadata={"language": "py"}
    )
    assert ok.status == "complete"
    await assert_consistent(engine)


async def test_pause_resume_cancel(engine: Engine) -> None:
    await engine.plan_run("r", grid(2, 2))
    held = (await engine.claim_items("r", "w")).items[0]
    await engine.control_run("r", "pause")
    assert (await engine.claim_items("r", "w")).reason == "paused"
    await engine.control_run("r", "resume")
    assert (await engine.claim_items("r", "w")).items
    run = await engine.control_run("r", "cancel")
    assert run.state == "cancelled" and run.counts.cancelled == 2
    assert (await engine.claim_items("r", "w")).reason == "cancelled"
    hb = await engine.heartbeat([LeaseRef(outcome_id=held.outcome_id, lease_token=held.lease_token)])
    assert hb.cancelled == [held.outcome_id]
    # work finished on a cancelled run is kept
    assert (await engine.complete_item(held.outcome_id, held.lease_token, content="x")).status == "complete"
    with pytest.raises(Conflict):
        await engine.control_run("r", "resume")
    await assert_consistent(engine)


async def test_tracking_api(engine: Engine) -> None:
    await engine.plan_run("r", [])
    rec = await engine.record_outcome("r", "docs", "intro", status="generating", created_by="me")
    assert rec.created and rec.outcome.status == "generating"
    again = await engine.record_outcome(
        "r", "docs", "intro", status="complete", metrics={"lines_generated": 40, "quality_score": 0.9}
    )
    assert not again.created and again.outcome.status == "complete"
    upd = await engine.update_outcome_status(again.outcome.id, "failed", error_message="reverted")
    assert upd.status == "failed" and upd.error_message == "reverted"
    summary = await engine.package_summary("docs", "r")
    assert summary.failed_items == 1 and summary.total_lines_generated == 0
    await engine.update_outcome_status(again.outcome.id, "complete", metrics={"lines_generated": 10})
    metrics = await engine.system_metrics("r")
    assert metrics.outcomes_complete == 1 and metrics.total_lines_generated == 10
    assert metrics.outcomes_by_hour and sum(h.completed for h in metrics.outcomes_by_hour) == 2
    ev = await engine.record_integration_event(
        "slack", "message_posted", run="r", details={"channel": "#dev"}
    )
    assert ev.integration_type == "slack" and ev.run == "r"
    with pytest.raises(NotFound):
        await engine.record_outcome("nope", "p", "i")
    with pytest.raises(NotFound):
        await engine.get_outcome("00000000-0000-0000-0000-000000000000")
    await assert_consistent(engine)


async def test_update_status_fences_off_the_lease_holder(engine: Engine) -> None:
    await engine.plan_run("r", grid(1, 1))
    item = (await engine.claim_items("r", "w")).items[0]
    await engine.update_outcome_status(item.outcome_id, "pending")
    with pytest.raises(StaleLease):
        await engine.complete_item(item.outcome_id, item.lease_token, content="x")
    await assert_consistent(engine)


async def test_pagination_covers_everything_once(engine: Engine) -> None:
    await engine.plan_run("r", grid(3, 7))
    await engine.plan_run("other", grid(1, 5))
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
    with pytest.raises(StoreError) as err:
        await engine.list_outcomes(cursor="garbage!")
    assert err.value.field == "cursor"


async def test_artifacts_stay_inside_the_root(engine: Engine) -> None:
    await engine.plan_run("r", grid(1, 1))
    item = (await engine.claim_items("r", "w")).items[0]
    root = engine.artifacts.root
    outside = root.parent / "escape"
    outside.mkdir()
    (root / "link").parent.mkdir(parents=True, exist_ok=True)
    (root / "link").symlink_to(outside)
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
            await engine.complete_item(item.outcome_id, item.lease_token, content="pwn", outcome_path=bad)
        assert err.value.field == "outcome_path"
    assert list(outside.iterdir()) == []
    assert (await engine.get_outcome(item.outcome_id)).status == "generating"
    out = await engine.complete_item(item.outcome_id, item.lease_token, content="ok", outcome_path="a/b.txt")
    assert (root / "a" / "b.txt").read_text() == "ok" and out.mime_type == "text/plain"
    data, mime = await engine.outcome_content(out.id)
    assert data == b"ok" and mime == "text/plain"


async def test_content_size_limit(engine: Engine) -> None:
    engine.limits = type(engine.limits)(max_content_bytes=10)
    await engine.plan_run("r", grid(1, 1))
    item = (await engine.claim_items("r", "w")).items[0]
    with pytest.raises(InputError) as err:
        await engine.complete_item(item.outcome_id, item.lease_token, content="x" * 11)
    assert err.value.field == "content"


async def test_events_and_long_poll(engine: Engine) -> None:
    await engine.plan_run("r", grid(1, 2))
    status = await engine.run_status("r")
    seq = status.latest_seq
    assert seq > 0 and status.counts.pending == 2

    async def later() -> None:
        await anyio.sleep(0.2)
        await engine.claim_items("r", "w")

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        waited = await engine.run_status("r", since=seq, wait_seconds=10)
    assert [e.kind for e in waited.events] == ["claimed"] and waited.latest_seq > seq
    quiet = await engine.run_status("r", since=waited.latest_seq, wait_seconds=0.2)
    assert quiet.events == []


async def test_claim_long_poll_wakes_when_an_item_frees(engine: Engine) -> None:
    await engine.plan_run("r", grid(1, 1))
    item = (await engine.claim_items("r", "a")).items[0]

    async def release() -> None:
        await anyio.sleep(0.2)
        await engine.fail_item(item.outcome_id, item.lease_token, "retry me")

    await engine.plan_run("r", grid(1, 1), policy=RunPolicy(backoff_seconds=0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(release)
        got = await engine.claim_items("r", "b", wait_seconds=10)
    assert [i.outcome_id for i in got.items] == [item.outcome_id]


async def test_export_jsonl_and_csv(engine: Engine) -> None:
    await engine.plan_run(
        "r", [PackageSpec(name="p", items=[ItemSpec(name="a", specifications={"k": 1}), "b"])]
    )
    j = await engine.export_outcomes("r", "jsonl")
    lines = open(j.path, encoding="utf-8").read().splitlines()
    assert j.count == 2 and len(lines) == 2 and json.loads(lines[0])["specifications"] == {"k": 1}
    c = await engine.export_outcomes("r", "csv")
    assert c.count == 2 and open(c.path, encoding="utf-8").read().startswith("id,")


async def test_injection_strings_are_data(engine: Engine) -> None:
    evil = "'; DROP TABLE outcomes; --"
    await engine.plan_run(evil, [PackageSpec(name=evil, items=[evil, 'x"); DROP TABLE runs; --'])])
    item = (await engine.claim_items(evil, evil)).items[0]
    await engine.complete_item(item.outcome_id, item.lease_token, metrics={evil: 1})
    run = await engine.get_run(evil)
    assert run.name == evil and run.counts.total == 2
    assert (await engine.package_summary(evil, evil)).completed_items == 1
    await assert_consistent(engine)


async def test_unknown_run_names_the_field(engine: Engine) -> None:
    with pytest.raises(NotFound) as err:
        await engine.claim_items("missing", "w")
    assert err.value.field == "run"


async def test_default_artifact_path_is_checked_before_commit(engine: Engine) -> None:
    await engine.plan_run("exports", grid(1, 2))  # a run named like the internal exports folder
    first = (await engine.claim_items("exports", "w")).items[0]
    out = await engine.complete_item(first.outcome_id, first.lease_token, content="fine")
    assert out.outcome_path and not out.outcome_path.startswith("exports/")
    assert (engine.artifacts.root / out.outcome_path).read_text() == "fine"
    second = (await engine.claim_items("exports", "w")).items[0]
    outside = engine.artifacts.root.parent / "elsewhere"
    outside.mkdir()
    planted = engine.artifacts.root / out.outcome_path.rsplit("/", 1)[0] / second.item
    planted.symlink_to(outside / "target")
    with pytest.raises(StoreError) as err:
        await engine.complete_item(second.outcome_id, second.lease_token, content="pwn")
    assert err.value.field == "outcome_path"
    assert (await engine.get_outcome(second.outcome_id)).status == "generating"
    assert list(outside.iterdir()) == []
    await assert_consistent(engine)
