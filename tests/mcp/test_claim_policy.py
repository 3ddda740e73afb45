"""The claim policy through the MCP face (the SDK's in-memory Client, both protocol eras): plan_run takes
dependencies, priorities, lock keys and caps; claims come highest priority first and say why they are short
(blocked, locked, capped); get_outcome shows what an item waits for and which keys it holds; readying, the
failure cascade and a retry's re-blocking show in counts, events and records. Store semantics are the
contract suite's (tests/store/); this holds the face: arguments, results and error text."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client

from matrix_mcp.config import Settings
from matrix_mcp.mcp.server import create_server
from tests.support.mcp_helpers import call, call_error

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    """Both protocol eras, on each backend (conftest's `database_url`: SQLite, and PostgreSQL)."""
    settings = Settings(database_url=database_url, artifacts_dir=tmp_path / "artifacts")
    async with Client(create_server(settings), mode=request.param) as c:
        yield c


STAGED = {
    "name": "shop",
    "goal": "loyalty points",
    "on_dependency_failure": "cancel",
    "packages": [
        {"name": "schema", "priority": 10, "items": ["users", {"name": "points", "after": ["users"]}]},
        {
            "name": "services",
            "after": ["schema"],
            "items": [
                {"name": "accounts", "locks": ["file:src/db.py"], "priority": 5},
                {"name": "rewards", "locks": ["file:src/db.py"]},
                {"name": "notify", "after": ["services/rewards"]},
            ],
        },
        {"name": "github", "max_concurrent": 1, "items": ["pr-1", "pr-2"]},
    ],
}


async def ids_by_item(client: Client, run: str) -> dict[str, str]:
    page = await call(client, "list_outcomes", {"run": run, "limit": 100})
    return {f"{o['package']}/{o['item']}": o["id"] for o in page["outcomes"]}


async def test_a_staged_run_through_the_tools(client: Client) -> None:
    planned = await call(client, "plan_run", STAGED)
    run = planned["run"]
    assert run["policy"]["on_dependency_failure"] == "cancel" and "max_concurrent" not in run["policy"]
    assert (run["counts"]["pending"], run["counts"]["blocked"], run["counts"]["total"]) == (3, 4, 7)
    ids = await ids_by_item(client, "shop")
    blocked = await call(client, "list_outcomes", {"run": "shop", "status": "blocked"})
    assert {o["id"] for o in blocked["outcomes"]} == {
        ids[k] for k in ("schema/points", "services/accounts", "services/rewards", "services/notify")
    }
    waiting = await call(client, "get_outcome", {"outcome_id": ids["services/notify"]})
    assert waiting["status"] == "blocked" and set(waiting["waits_for"]) == {"schema/*", "services/rewards"}
    status = await call(client, "run_status", {"run": "shop"})
    services = next(p for p in status["packages"] if p["package"] == "services")
    assert (services["blocked_items"], services["after"]) == (3, ["schema"])
    github = next(p for p in status["packages"] if p["package"] == "github")
    assert github["max_concurrent"] == 1

    # the schema package's priority first; then one github item (capped at 1), then nothing ready
    first = await call(client, "claim_items", {"run": "shop", "worker": "w", "limit": 5})
    got = [f"{i['package']}/{i['item']}" for i in first["items"]]
    assert got[0] == "schema/users" and len(got) == 2 and got[1].startswith("github/")
    assert first["reason"] == "capped"
    users = first["items"][0]
    done = await call(
        client,
        "complete_item",
        {"outcome_id": users["outcome_id"], "lease_token": users["lease_token"], "claim_next": 1},
    )
    assert [f"{i['package']}/{i['item']}" for i in done["next"]] == ["schema/points"]  # readied, claimed
    points = done["next"][0]
    nothing = await call(client, "claim_items", {"run": "shop", "worker": "w2"})
    assert nothing["items"] == [] and nothing["reason"] == "capped"  # pr-2 waits for the cap
    await call(
        client, "complete_item", {"outcome_id": points["outcome_id"], "lease_token": points["lease_token"]}
    )

    # the schema package is complete: accounts (priority 5) first, holding the lock; rewards is held back
    accounts = (await call(client, "claim_items", {"run": "shop", "worker": "w"}))["items"][0]
    assert (accounts["package"], accounts["item"]) == ("services", "accounts")
    held = await call(client, "get_outcome", {"outcome_id": accounts["outcome_id"]})
    assert (held["locks"], held["locks_held"], held["priority"]) == (
        ["file:src/db.py"],
        ["file:src/db.py"],
        5,
    )
    short = await call(client, "claim_items", {"run": "shop", "worker": "w3"})
    assert short["items"] == [] and short["reason"] in ("locked", "capped")
    assert short["retry_after_seconds"] > 0
    await call(
        client,
        "complete_item",
        {"outcome_id": accounts["outcome_id"], "lease_token": accounts["lease_token"]},
    )
    after = await call(client, "get_outcome", {"outcome_id": accounts["outcome_id"]})
    assert after["locks_held"] == []

    # rewards fails for good: notify is cancelled naming it; a retry puts notify back to blocked
    rewards = (await call(client, "claim_items", {"run": "shop", "worker": "w", "package": "services"}))[
        "items"
    ][0]
    assert rewards["item"] == "rewards"
    failed = await call(
        client,
        "fail_item",
        {
            "outcome_id": rewards["outcome_id"],
            "lease_token": rewards["lease_token"],
            "error": "x",
            "retryable": False,
        },
    )
    assert failed["status"] == "failed"
    notify = await call(client, "get_outcome", {"outcome_id": ids["services/notify"]})
    assert (
        notify["status"] == "cancelled" and notify["error_message"] == "dependency 'services/rewards' failed"
    )
    events = (await call(client, "run_status", {"run": "shop", "since": 0}))["events"]
    kinds = [e["kind"] for e in events]
    assert "ready" in kinds and "dependents_cancelled" in kinds
    cascade = next(e for e in events if e["kind"] == "dependents_cancelled")
    assert cascade["data"]["failed"] == "services/rewards" and cascade["data"]["count"] == 1
    retried = await call(client, "retry_items", {"run": "shop", "outcome_ids": [rewards["outcome_id"]]})
    assert retried["requeued"] == 1
    again = await call(client, "get_outcome", {"outcome_id": ids["services/notify"]})
    assert again["status"] == "blocked" and again["waits_for"] == ["services/rewards"]

    # exports carry each outcome's priority and lock keys (CSV: the list as JSON)
    jsonl = await call(client, "export_outcomes", {"run": "shop", "format": "jsonl"})
    rows = {r["item"]: r for r in map(json.loads, Path(jsonl["path"]).read_text().splitlines())}
    assert (rows["accounts"]["priority"], rows["accounts"]["locks"], rows["notify"]["status"]) == (
        5,
        ["file:src/db.py"],
        "blocked",
    )
    csv_out = await call(client, "export_outcomes", {"run": "shop", "format": "csv"})
    with open(csv_out["path"], newline="", encoding="utf-8") as f:
        by_item = {r["item"]: r for r in csv.DictReader(f)}
    assert (by_item["accounts"]["priority"], json.loads(by_item["accounts"]["locks"])) == (
        "5",
        ["file:src/db.py"],
    )


async def test_plan_errors_name_the_culprit(client: Client) -> None:
    def plan(packages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"name": "bad", "packages": packages, **extra}

    unknown = await call_error(
        client, "plan_run", plan([{"name": "a", "items": [{"name": "x", "after": ["b/y"]}]}])
    )
    assert unknown["kind"] == "invalid_argument" and unknown["field"] == "packages[0].items[0].after[0]"
    assert unknown["error"].startswith("packages[0].items[0].after[0]: ") and "b/y" in unknown["error"]
    self_ref = await call_error(client, "plan_run", plan([{"name": "a", "after": ["a"], "items": ["x"]}]))
    assert self_ref["field"] == "packages[0].after[0]"
    cycle = await call_error(
        client,
        "plan_run",
        plan(
            [
                {"name": "a", "items": [{"name": "x", "after": ["b/*"]}]},
                {"name": "b", "items": [{"name": "y", "after": ["a/x"]}]},
            ]
        ),
    )
    assert cycle["field"] == "packages" and cycle["error"].startswith("packages: dependency cycle: ")
    assert "a/x" in cycle["error"] and "b/*" in cycle["error"]
    cap = await call_error(client, "plan_run", plan([{"name": "a", "items": ["x"]}], max_concurrent=0))
    assert cap["field"] == "max_concurrent"
    mode = await call_error(
        client, "plan_run", plan([{"name": "a", "items": ["x"]}], on_dependency_failure="skip")
    )
    assert mode["field"] == "on_dependency_failure"
    assert (await call(client, "list_runs", {}))["runs"] == []  # nothing was written


def test_a_cascade_notifies_the_outcomes_it_cancelled() -> None:
    """Resource subscribers of each outcome a failure cancelled (or a retry re-queued) hear of it: the event
    names up to 100 of them."""
    from datetime import UTC, datetime

    from matrix_mcp.mcp.notify import outcome_uri, uris_for
    from matrix_mcp.models import Event

    def event(kind: str) -> Event:
        data = {"failed": "p/a", "count": 2, "outcome_ids": ["o2", "o3"]}
        return Event(seq=1, run="r", outcome_id="o1", kind=kind, data=data, created_at=datetime.now(UTC))

    for kind in ("dependents_cancelled", "requeued"):
        assert {outcome_uri("o2"), outcome_uri("o3"), "matrix://runs/r"} <= uris_for(event(kind))
    assert outcome_uri("o2") not in uris_for(event("completed"))
