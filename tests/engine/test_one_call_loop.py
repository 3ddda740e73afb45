"""The worker loop in one call per item: `claim_next` on complete_item / fail_item (same transaction as the
report, both backends), compact acknowledgements, and the worker toolset — through the engine, and end to
end over stdio in both protocol eras."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine, InputError
from matrix_mcp.errors import StaleLease
from matrix_mcp.mcp.toolsets import ORCHESTRATOR_TOOLS, WORKER_TOOLS
from matrix_mcp.models import RunPolicy
from tests.conftest import assert_consistent
from tests.store.test_contract import Clock, grid

pytestmark = pytest.mark.anyio


async def test_complete_with_claim_next_leases_fairly_in_the_same_call(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(3, 2), goal="g")
    first = (await engine.claim_items("r", worker="w")).items[0]
    assert first.package == "p0"
    clock.advance(1)
    ack = await engine.complete_item(
        first.outcome_id, lease_token=first.lease_token, content="x", claim_next=2
    )
    assert ack.status == "complete" and ack.attempt == 1 and ack.reason is None
    assert ack.next is not None and [i.package for i in ack.next] == ["p1", "p2"]  # round robin goes on
    assert all(i.attempt == 1 and i.briefing == "g" for i in ack.next)
    for nxt in ack.next:  # leased to the same worker, in the same transaction as the report
        held = await engine.get_outcome(nxt.outcome_id)
        assert held.status == "generating" and held.worker == "w"
        assert held.started_at is not None and held.started_at.timestamp() == clock.t
    events = (await engine.run_status("r", since=0)).events
    kinds = [e.kind for e in events]
    assert kinds == ["run_planned", "claimed", "completed", "claimed", "claimed"], kinds
    await assert_consistent(engine)


async def test_claim_next_says_why_nothing_came(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(1, 2), policy=RunPolicy(lease_seconds=30))
    a, b = (await engine.claim_items("r", worker="w", limit=2)).items
    ack = await engine.complete_item(a.outcome_id, lease_token=a.lease_token, claim_next=1)
    assert ack.next == [] and ack.reason == "all_leased"
    assert ack.retry_after_seconds == pytest.approx(30, abs=0.01)
    clock.advance(1)
    last = await engine.complete_item(b.outcome_id, lease_token=b.lease_token, claim_next=3)
    assert last.next == [] and last.reason == "done" and last.retry_after_seconds is None
    with pytest.raises(InputError) as err:
        await engine.complete_item(a.outcome_id, lease_token=a.lease_token, claim_next=-1)
    assert err.value.field == "claim_next"
    with pytest.raises(InputError) as err:
        await engine.complete_item(a.outcome_id, lease_token=a.lease_token, claim_next=1001)
    assert err.value.field == "claim_next"
    await assert_consistent(engine)


async def test_fail_with_claim_next_and_backoff(engine: Engine) -> None:
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(1, 2), policy=RunPolicy(backoff_seconds=10))
    a = (await engine.claim_items("r", worker="w")).items[0]
    ack = await engine.fail_item(a.outcome_id, lease_token=a.lease_token, error="flaky", claim_next=2)
    assert ack.status == "pending" and ack.available_at is not None
    assert ack.next is not None and len(ack.next) == 1 and ack.next[0].item == "i1"
    assert ack.reason == "backing_off" and ack.retry_after_seconds is not None  # a is backing off
    clock.advance(1)
    final = await engine.fail_item(
        ack.next[0].outcome_id,
        lease_token=ack.next[0].lease_token,
        error="bad",
        retryable=False,
        claim_next=1,
    )
    assert final.status == "failed" and final.next == [] and final.reason == "backing_off"
    await assert_consistent(engine)


async def test_a_repeated_report_returns_the_same_leases_not_new_ones(engine: Engine) -> None:
    """A worker that retries the identical report (its answer was lost on the way) gets back the items the
    first report leased for it, and no further lease is taken."""
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(1, 5))
    a = (await engine.claim_items("r", worker="w")).items[0]
    clock.advance(1)
    first = await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="x", claim_next=2)
    clock.advance(1)
    again = await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="x", claim_next=2)
    assert first.next and again.next
    assert [(i.outcome_id, i.lease_token) for i in again.next] == [
        (i.outcome_id, i.lease_token) for i in first.next
    ]
    assert (await engine.get_run("r")).counts.generating == 2
    b = first.next[0]
    clock.advance(1)
    failed = await engine.fail_item(b.outcome_id, lease_token=b.lease_token, error="boom", claim_next=1)
    clock.advance(1)
    repeat = await engine.fail_item(b.outcome_id, lease_token=b.lease_token, error="boom", claim_next=1)
    assert failed.next and repeat.next and repeat.next[0].lease_token == failed.next[0].lease_token
    assert (await engine.get_run("r")).counts.generating == 2  # first.next[1] and failed.next[0]
    await assert_consistent(engine)


async def test_a_repeated_report_returns_the_leases_with_their_earlier_attempts(engine: Engine) -> None:
    """The items a repeated report hands back carry what their earlier attempts left, as the first answer
    did (every claim path briefs its claims)."""
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(1, 2), policy=RunPolicy(backoff_seconds=10))
    x = (await engine.claim_items("r", worker="w")).items[0]
    await engine.fail_item(x.outcome_id, lease_token=x.lease_token, error="boom")
    y = (await engine.claim_items("r", worker="w")).items[0]
    assert y.outcome_id != x.outcome_id
    clock.advance(100)  # x's backoff is over
    first = await engine.complete_item(y.outcome_id, lease_token=y.lease_token, content="y", claim_next=1)
    clock.advance(1)
    again = await engine.complete_item(y.outcome_id, lease_token=y.lease_token, content="y", claim_next=1)
    assert first.next and again.next and again.next[0].lease_token == first.next[0].lease_token
    assert again.next[0].outcome_id == x.outcome_id and again.next[0].attempt == 2
    told = [a.model_dump(exclude_none=True) for a in again.next[0].previous_attempts or []]
    assert told == [{"attempt": 1, "error": "boom"}]
    assert again.next[0].previous_attempts == first.next[0].previous_attempts
    await assert_consistent(engine)


async def test_a_refused_report_leases_nothing(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(1, 3))
    a = (await engine.claim_items("r", worker="w")).items[0]
    with pytest.raises(StaleLease):
        await engine.complete_item(a.outcome_id, lease_token="not-the-token", claim_next=2)
    with pytest.raises(StaleLease):
        await engine.fail_item(a.outcome_id, lease_token="not-the-token", error="x", claim_next=2)
    assert (await engine.get_run("r")).counts.generating == 1
    await assert_consistent(engine)


async def test_crash_after_the_report_loses_nothing(engine: Engine) -> None:
    """The worker dies after its report leased the next item, before it read the answer: that lease
    expires as usual and the item goes back to pending for anyone."""
    clock = Clock(engine)
    await engine.plan_run("r", packages=grid(1, 2), policy=RunPolicy(lease_seconds=10))
    a = (await engine.claim_items("r", worker="dies")).items[0]
    ack = await engine.complete_item(a.outcome_id, lease_token=a.lease_token, claim_next=1)
    orphan = ack.next[0] if ack.next else None
    assert orphan is not None  # ... and never read by the crashed worker
    assert (await engine.claim_items("r", worker="other")).reason == "all_leased"
    clock.advance(11)
    taken = (await engine.claim_items("r", worker="other")).items
    assert [(i.outcome_id, i.attempt) for i in taken] == [(orphan.outcome_id, 2)]
    with pytest.raises(StaleLease):
        await engine.complete_item(orphan.outcome_id, lease_token=orphan.lease_token)
    done = await engine.complete_item(taken[0].outcome_id, lease_token=taken[0].lease_token, claim_next=1)
    assert done.reason == "done"
    history = (await engine.get_outcome(orphan.outcome_id)).history
    assert [(h.worker, h.status, h.error) for h in history] == [
        ("dies", "failed", "lease expired"),
        ("other", "complete", None),
    ]
    await assert_consistent(engine)


async def test_claim_next_in_a_cancelled_or_package_limited_run(engine: Engine) -> None:
    await engine.plan_run("r", packages=grid(2, 3))
    a = (await engine.claim_items("r", worker="w", package="p1")).items[0]
    ack = await engine.complete_item(a.outcome_id, lease_token=a.lease_token, claim_next=5, package="p1")
    assert ack.next is not None and {i.package for i in ack.next} == {"p1"} and len(ack.next) == 2
    await engine.control_run("r", action="cancel")
    b = ack.next[0]
    stop = await engine.fail_item(b.outcome_id, lease_token=b.lease_token, error="stopping", claim_next=1)
    assert stop.status == "cancelled" and stop.next == [] and stop.reason == "cancelled"
    await assert_consistent(engine)


@pytest.mark.postgres
async def test_postgres_report_with_claim_next_answer_lost_after_commit(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies after the batch holding a report with claim_next committed: the store's retry
    returns the journaled answer (the same leases), never a second set of leases."""
    from matrix_mcp.store.postgres import PostgresStore
    from tests.reliability.test_reliability_postgres import AnswerLoss

    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        await engine.plan_run("r", packages=grid(1, 6), policy=RunPolicy(lease_seconds=600))
        store = engine.store
        assert isinstance(store, PostgresStore)
        a, b = (await engine.claim_items("r", worker="w", limit=2)).items
        loss = AnswerLoss(monkeypatch, store.db, "_run_batch")  # pipelined (complete) and one by one (fail)
        loss.arm()
        ack = await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="x", claim_next=2)
        assert ack.status == "complete" and loss.lost == [1] and ack.next is not None and len(ack.next) == 2
        loss.arm()
        failed = await engine.fail_item(b.outcome_id, lease_token=b.lease_token, error="flaky", claim_next=2)
        assert failed.status == "pending" and loss.lost == [1, 1]
        assert failed.next is not None and len(failed.next) == 2
        assert {i.outcome_id for i in ack.next}.isdisjoint(i.outcome_id for i in failed.next)
        run = await engine.get_run("r")
        # a and b reported; each report leased two: four generating, none orphaned, none twice
        assert run.counts.generating == 4 and run.counts.complete == 1
        await assert_consistent(engine)
    finally:
        await engine.close()


# ---- over stdio, both eras ------------------------------------------------------------------------


def stdio(settings: Settings, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "matrix_mcp",
            "--database-url",
            settings.database_url,
            "--artifacts-dir",
            str(settings.artifacts_dir),
            *extra,
        ],
    )


async def call(client: Client, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], int]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    data = result.structured_content or {}
    text = getattr(result.content[0], "text", "")
    assert json.loads(text) == data
    return data, len(json.dumps(data, separators=(",", ":")))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_worker_loop_over_stdio_one_call_per_item(settings: Settings, mode: str) -> None:
    async with Client(stdio(settings), mode=mode) as orchestrator:
        await call(orchestrator, "plan_run", {"name": "r", "packages": [p.model_dump() for p in grid(3, 4)]})
    async with Client(stdio(settings, "--toolset", "worker"), mode=mode) as worker:
        tools = await worker.list_tools()
        assert {t.name for t in tools.tools} == WORKER_TOOLS
        # a worker's context: 6.5 KiB since get_outcome can return an outcome's content inline (for hosts that
        # cannot read resources: its two arguments and `content` cost 230 bytes; 6,134 before); 8 KiB since
        # review gates and usage: a heartbeat's note, a claim's previous_attempts, the attempt history's note,
        # usage and review, and a report's usage (its six fields with their bounds): 8,040 bytes
        assert len(tools.model_dump_json(by_alias=True, exclude_none=True)) <= 8 * 1024
        got, _ = await call(worker, "claim_items", {"run": "r", "worker": "w"})
        item = got["items"][0]
        assert set(item) == {"outcome_id", "package", "item", "attempt", "lease_token", "lease_expires_at"}
        calls, sizes = 1, []
        done: list[str] = []
        while item is not None:
            ref = {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
            ack, size = await call(worker, "complete_item", {**ref, "content": "ok", "claim_next": 1})
            calls += 1
            sizes.append(size)
            assert ack["outcome_id"] == item["outcome_id"] and ack["status"] == "complete"
            assert "outcome" not in ack  # compact unless detail="full"
            done.append(item["outcome_id"])
            item = ack["next"][0] if ack["next"] else None
        assert ack["reason"] == "done"
        assert calls == 13 and len(set(done)) == 12  # one claim, then one call per item
        assert max(sizes) <= 300, sizes
        full, _ = await call(worker, "complete_item", {**ref, "content": "ok", "detail": "full"})
        assert full["outcome"]["id"] == ref["outcome_id"] and full["outcome"]["content_bytes"] == 2
        beat = await worker.call_tool("heartbeat", {"leases": [ref]})
        assert beat.structured_content == {"lost": [ref["outcome_id"]], "cancelled": []}
        refused = await worker.call_tool("plan_run", {"name": "x", "packages": []})
        assert refused.is_error  # not offered on a worker connection
    async with Client(stdio(settings, "--toolset", "orchestrator"), mode=mode) as orchestrator:
        listed = {t.name for t in (await orchestrator.list_tools()).tools}
        assert listed == ORCHESTRATOR_TOOLS
        status, _ = await call(orchestrator, "run_status", {"run": "r"})
        assert status["state"] == "done" and status["counts"]["complete"] == 12


async def test_toolset_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MATRIX_TOOLSET"):
        Settings.from_env({"MATRIX_TOOLSET": "workers"})
    with pytest.raises(ValueError, match="--toolset"):
        Settings.from_env({}, toolset="nope")
    assert Settings.from_env({"MATRIX_TOOLSET": "worker"}).toolset == "worker"
    assert Settings.from_env({"MATRIX_TOOLSET": "worker"}, toolset="all").toolset == "all"


async def test_prompt_teaches_the_one_call_loop(tmp_path: Path) -> None:
    from matrix_mcp.mcp.server import create_server

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with Client(create_server(settings), mode="legacy") as c:
        prompt = await c.get_prompt("outcome_generator", {"run": "r", "worker": "w"})
        text = getattr(prompt.messages[0].content, "text", "")
        assert "claim_next=1" in text and "`next`" in text and "claim_items" in text
