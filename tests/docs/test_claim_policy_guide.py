"""The claim policy guide's worked example holds: its JSON plan, planned on SQLite, goes through each step
as the guide tells it (counts, claim order, the capped and locked reasons, readying, the cascade and a
retry's re-blocking), its YAML file is the same plan, and its CSV lines read as it says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from matrix_mcp.cli.plans import plan_from_mapping, read_plan
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import ClaimedItem, ItemSpec, PackageSpec, RunPolicy

pytestmark = pytest.mark.anyio

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "claim-policy.md"


def block(language: str) -> str:
    found = re.search(rf"^```{language}\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), re.S | re.M)
    assert found, language
    return found.group(1)


def example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(block("json"))
    return data


async def test_the_worked_example_goes_as_the_guide_says(tmp_path: Path) -> None:
    plan = example()
    engine = await Engine.open(
        Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "artifacts")
    )
    try:
        policy = RunPolicy.planned(
            max_concurrent=plan["max_concurrent"], on_dependency_failure=plan["on_dependency_failure"]
        )
        packages = [PackageSpec.model_validate(p) for p in plan["packages"]]
        made = await engine.plan_run(plan["name"], packages=packages, goal=plan["goal"], policy=policy)
        # 1. four pending, five blocked
        assert (made.run.counts.pending, made.run.counts.blocked) == (4, 5)

        async def claim(worker: str) -> ClaimedItem | None:
            got = await engine.claim_items("shop", worker=worker)
            return got.items[0] if got.items else None

        async def complete(item: ClaimedItem) -> None:
            await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="ok")

        async def reason(worker: str) -> str | None:
            got = await engine.claim_items("shop", worker=worker)
            assert got.items == []
            return got.reason

        # 2. schema/users first (package priority 10), then two github items; the fourth worker: capped
        users, pr1, pr2 = [await claim(w) for w in ("w1", "w2", "w3")]
        assert users and pr1 and pr2
        assert [(i.package, i.item) for i in (users, pr1, pr2)] == [
            ("schema", "users"),
            ("github", "open-pr-1"),
            ("github", "open-pr-2"),
        ]
        assert await reason("w4") == "capped"
        # 3. users completes: points is ready; points completes: accounts and rewards are, notify waits
        await complete(users)
        points = await claim("w1")
        assert points and (points.package, points.item) == ("schema", "points")
        for item in (pr1, pr2):
            await complete(item)
        pr3 = await claim("w2")
        assert pr3 and pr3.item == "open-pr-3"
        await complete(points)
        # 4. accounts (priority 5) first, holding the key; rewards is held back by it: locked
        accounts = await claim("w3")
        assert accounts and accounts.item == "accounts"
        assert await reason("w4") == "locked"
        await complete(accounts)
        # 5. rewards fails for good: notify and integration/e2e are cancelled naming it; a retry re-blocks them
        rewards = await claim("w4")
        assert rewards and rewards.item == "rewards"
        await engine.fail_item(
            rewards.outcome_id, lease_token=rewards.lease_token, error="x", retryable=False
        )
        page = await engine.list_outcomes(run="shop", status="cancelled", limit=10)
        assert sorted((o.package, o.item) for o in page.outcomes) == [
            ("integration", "e2e"),
            ("services", "notify"),
        ]
        assert {o.error_message for o in page.outcomes} == {"dependency 'services/rewards' failed"}
        retried = await engine.retry_items("shop", outcome_ids=[rewards.outcome_id])
        assert retried.requeued == 1
        status = await engine.run_status("shop")
        assert (status.counts.cancelled, status.counts.blocked, status.counts.pending) == (0, 2, 1)
    finally:
        await engine.close()


def test_the_yaml_file_is_the_same_plan(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "shop.yaml"
    path.write_text(block("yaml"), encoding="utf-8")
    from_yaml = read_plan("shop", str(path))
    from_json = plan_from_mapping("shop", example(), "example")
    assert from_yaml.policy.max_concurrent == from_json.policy.max_concurrent == 8

    def shape(packages: list[PackageSpec]) -> list[Any]:
        out = []
        for p in packages:
            items = [
                i if isinstance(i, str) else ItemSpec(**{**i.model_dump(), "specifications": None})
                for i in p.items
            ]
            items = [ItemSpec(name=i) if isinstance(i, str) else i for i in items]
            out.append((p.name, p.after, p.priority, p.max_concurrent, items))
        return out

    assert shape(from_yaml.packages) == shape(from_json.packages)


def test_the_csv_lines_read_as_the_guide_says(tmp_path: Path) -> None:
    text = next(
        b
        for b in re.findall(r"^```text\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), re.S | re.M)
        if b.startswith("package,item,after")
    )
    path = tmp_path / "shop.csv"
    path.write_text(text, encoding="utf-8")
    schema, services = read_plan("shop", str(path)).packages
    assert schema.items == ["users", ItemSpec(name="points", after=["users"])]
    assert services.items == [
        ItemSpec(name="accounts", after=["schema/*"], priority=5, locks=["file:src/db.py"])
    ]
