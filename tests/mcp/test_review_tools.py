"""Review gates, notes, usage and budgets through the MCP face (the SDK's in-memory Client, both protocol
eras): plan_run takes review and budgets, heartbeat a note, reports their usage; review_item and
update_policy decide and change; errors are one line naming the field. Store semantics are the contract
suite's (tests/store/test_review_usage.py); this holds the face."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp.client import Client

from matrix_mcp.config import Settings
from matrix_mcp.mcp.server import create_server
from tests.support.mcp_helpers import call, call_error

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "artifacts")
    async with Client(create_server(settings), mode=request.param) as c:
        yield c


PLAN = {
    "name": "r",
    "review": "required",
    "max_cost_usd": 1.0,
    "max_attempts": 2,
    "backoff_seconds": 0,
    "packages": [{"name": "a", "items": ["x", "y"]}, {"name": "b", "review": "none", "items": ["z"]}],
}


async def test_review_notes_and_usage_end_to_end(client: Client) -> None:
    planned = await call(client, "plan_run", PLAN)
    assert (
        planned["run"]["policy"]["review"] == "required" and planned["run"]["policy"]["max_cost_usd"] == 1.0
    )
    first = (await call(client, "claim_items", {"run": "r", "worker": "w1", "package": "a"}))["items"][0]
    assert "previous_attempts" not in first and "previous_attempts_omitted" not in first
    lease = {"outcome_id": first["outcome_id"], "lease_token": first["lease_token"], "note": "half done"}
    beat = await call(client, "heartbeat", {"leases": [lease]})
    assert beat["lost"] == []
    done = await call(
        client,
        "complete_item",
        {
            "outcome_id": first["outcome_id"],
            "lease_token": first["lease_token"],
            "usage": {"input_tokens": 10, "output_tokens": 5, "model": "m", "cost_usd": 0.25},
        },
    )
    assert done["status"] == "in_review"
    rejected = await call(
        client, "review_item", {"outcome_id": first["outcome_id"], "decision": "reject", "note": "no tests"}
    )
    assert (rejected["status"], rejected["decision"], rejected["attempt"]) == ("pending", "reject", 1)
    again = (await call(client, "claim_items", {"run": "r", "worker": "w2", "package": "a", "limit": 2}))[
        "items"
    ]
    retried = next(i for i in again if i["outcome_id"] == first["outcome_id"])
    # the rejection's note once (not again as its error), no status: the review note says how it ended
    assert retried["previous_attempts"] == [{"attempt": 1, "note": "half done", "review_note": "no tests"}]
    await call(
        client, "complete_item", {"outcome_id": retried["outcome_id"], "lease_token": retried["lease_token"]}
    )
    approved = await call(client, "review_item", {"outcome_id": retried["outcome_id"], "decision": "approve"})
    assert approved["status"] == "complete"
    status = await call(client, "run_status", {"run": "r"})
    assert status["counts"]["complete"] == 1 and status["usage"]["cost_usd"] == 0.25
    assert status["workers"] == [
        {
            "worker": "w1",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_tokens": 0,
                "cache_creation_tokens": 0,
                "cost_usd": 0.25,
            },
        }
    ]
    history = (await call(client, "get_outcome", {"outcome_id": first["outcome_id"]}))["history"]
    assert [(h["attempt"], h["status"], h.get("review_decision")) for h in history] == [
        (1, "failed", "reject"),
        (2, "complete", "approve"),
    ]
    assert history[0]["usage"] == {"input_tokens": 10, "output_tokens": 5, "model": "m", "cost_usd": 0.25}


async def test_a_budget_pauses_and_update_policy_raises_it(client: Client) -> None:
    await call(client, "plan_run", {**PLAN, "review": "none", "max_cost_usd": 0.5})
    items = (await call(client, "claim_items", {"run": "r", "worker": "w", "limit": 2}))["items"]
    for item in items:
        await call(
            client,
            "fail_item",
            {
                "outcome_id": item["outcome_id"],
                "lease_token": item["lease_token"],
                "error": "boom",
                "usage": {"cost_usd": 0.3},
            },
        )
    run = (await call(client, "list_runs", {}))["runs"][0]
    assert run["state"] == "paused" and "max_cost_usd" in run["paused_reason"]
    raised = await call(client, "update_policy", {"run": "r", "max_cost_usd": 2, "max_concurrent": 4})
    assert raised["state"] == "paused" and raised["policy"]["max_cost_usd"] == 2
    assert raised["policy"]["max_concurrent"] == 4
    resumed = await call(client, "control_run", {"run": "r", "action": "resume"})
    assert resumed["state"] == "active" and "paused_reason" not in resumed
    cleared = await call(client, "update_policy", {"run": "r", "clear": ["max_cost_usd"]})
    assert "max_cost_usd" not in cleared["policy"]


async def test_errors_are_one_line_naming_the_field(client: Client) -> None:
    await call(client, "plan_run", PLAN)
    item = (await call(client, "claim_items", {"run": "r", "worker": "w"}))["items"][0]
    bad_usage = await call_error(
        client,
        "complete_item",
        {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"], "usage": {"cost_usd": -1}},
    )
    assert bad_usage["kind"] == "invalid_argument" and bad_usage["field"] == "usage.cost_usd"
    assert "\n" not in bad_usage["error"]
    not_in_review = await call_error(
        client, "review_item", {"outcome_id": item["outcome_id"], "decision": "approve"}
    )
    assert not_in_review["kind"] == "conflict" and not_in_review["field"] == "outcome_id"
    assert item["outcome_id"] in not_in_review["error"]
    extra = await call(
        client,
        "complete_item",
        {
            "outcome_id": item["outcome_id"],
            "lease_token": item["lease_token"],
            "usage": {"input_tokens": 3, "server_tool_use": {"web_search_requests": 0}},  # extras ignored
        },
    )
    assert extra["status"] == "in_review"
    unknown = await call_error(client, "update_policy", {"run": "nope", "max_tokens": 1})
    assert unknown["kind"] == "not_found" and unknown["field"] == "run"
