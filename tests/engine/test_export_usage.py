"""Exports carry what each outcome spent: its attempts' usage summed, the latest model named."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec, RunPolicy, Usage

pytestmark = pytest.mark.anyio


async def test_exports_carry_each_outcomes_usage(engine: Engine) -> None:
    await engine.plan_run(
        "r",
        packages=[PackageSpec(name="p", items=["twice"]), PackageSpec(name="q", items=["plain"])],
        policy=RunPolicy(backoff_seconds=0),
    )
    item = (await engine.claim_items("r", worker="w", package="p")).items[0]
    assert item.item == "twice"
    first = Usage(input_tokens=10, output_tokens=1, model="m1", cost_usd=0.5)
    again = await engine.fail_item(
        item.outcome_id, lease_token=item.lease_token, error="x", usage=first, claim_next=1, package="p"
    )
    retry = again.next[0]
    assert retry.outcome_id == item.outcome_id
    second = Usage(input_tokens=5, cache_read_tokens=100, model="m2", cost_usd=0.25)
    await engine.complete_item(item.outcome_id, lease_token=retry.lease_token, usage=second)

    jsonl = await engine.export_outcomes("r", format="jsonl")
    records = {
        r["item"]: r for r in map(json.loads, Path(jsonl.path).read_text(encoding="utf-8").splitlines())
    }
    assert records["twice"]["usage"] == {
        "input_tokens": 15,
        "output_tokens": 1,
        "cache_read_tokens": 100,
        "model": "m2",
        "cost_usd": 0.75,
    }
    assert records["plain"]["usage"] is None
    exported = await engine.export_outcomes("r", format="csv")
    rows = {
        r["item"]: r for r in csv.DictReader(Path(exported.path).read_text(encoding="utf-8").splitlines())
    }
    assert json.loads(rows["twice"]["usage"])["cost_usd"] == 0.75 and rows["plain"]["usage"] == ""
