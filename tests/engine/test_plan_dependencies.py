"""Plan-time checks of the claim policy: every bad `after`, lock key or cap is refused before anything is
written, in one line naming the field (a cycle: named, on `packages`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from matrix_mcp.config import Limits, Settings
from matrix_mcp.engine import Engine
from matrix_mcp.engine.dependencies import check_dependencies
from matrix_mcp.errors import InputError, NotFound
from matrix_mcp.models import ItemSpec, PackageSpec, RunPolicy

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    # the checks run before the store: one backend shows them
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    settings = replace(settings, limits=replace(Limits(), max_edges_per_plan=10))
    eng = await Engine.open(settings)
    try:
        yield eng
    finally:
        await eng.close()


def item(name: str, *after: str, locks: list[str] | None = None) -> ItemSpec:
    return ItemSpec(name=name, after=list(after), locks=locks or [])


async def refused(engine: Engine, packages: list[PackageSpec]) -> InputError:
    with pytest.raises(InputError) as err:
        await engine.plan_run("r", packages=packages)
    assert "\n" not in str(err.value)
    with pytest.raises(NotFound):  # nothing was written
        await engine.get_run("r")
    return err.value


async def test_a_self_reference_names_its_field(engine: Engine) -> None:
    for ref in ["x", "a/x", "a/*"]:
        err = await refused(engine, [PackageSpec(name="a", items=["w", item("x", "w", ref)])])
        assert err.field == "packages[0].items[1].after[1]", ref
        assert "cannot wait for itself" in str(err)
    err = await refused(engine, [PackageSpec(name="b"), PackageSpec(name="a", items=["x"], after=["b", "a"])])
    assert err.field == "packages[1].after[1]"
    assert str(err) == "a package cannot wait for itself ('a/*')"


async def test_a_malformed_reference_names_its_field(engine: Engine) -> None:
    err = await refused(engine, [PackageSpec(name="a", items=[item("x", "/*")])])
    assert err.field == "packages[0].items[0].after[0]"
    err = await refused(engine, [PackageSpec(name="a", items=["x"], after=[" "])])
    assert err.field == "packages[0].after[0]"


async def test_a_cycle_is_refused_naming_the_cycle(engine: Engine) -> None:
    packages = [
        PackageSpec(name="a", items=[item("x", "b/*")]),
        PackageSpec(name="b", items=["z", item("y", "a/x")]),
    ]
    err = await refused(engine, packages)
    assert str(err) == "dependency cycle: a/x → b/* → b/y → a/x"
    assert err.field == "packages"
    # through packages' own `after`: every item of a waits for b, b's for a
    err = await refused(
        engine,
        [PackageSpec(name="a", items=["x"], after=["b"]), PackageSpec(name="b", items=["y"], after=["a"])],
    )
    assert str(err) == "dependency cycle: a/x → b/* → b/y → a/* → a/x"


async def test_more_dependency_rows_than_the_limit_are_refused(engine: Engine) -> None:
    # 10 allowed: 5 items each waiting for 2 items is 10; a package `after` adds one row per item
    ok = [
        PackageSpec(name="s", items=["u", "v"]),
        PackageSpec(name="t", items=[item(f"i{k}", "s/u", "s/v") for k in range(5)]),
    ]
    graph = check_dependencies(ok, 10)
    assert graph.item_after[("t", "i0")][0].candidates == (("s", "u"),)
    over = [ok[0], ok[1].model_copy(update={"after": ["s"]})]
    err = await refused(engine, over)
    assert err.field == "packages"
    assert "more than 10 dependency edges" in str(err)


async def test_lock_keys_and_caps_are_checked(engine: Engine) -> None:
    err = await refused(engine, [PackageSpec(name="a", items=[item("x", locks=["ok", "bad\nkey"])])])
    assert err.field == "packages[0].items[0].locks[1]"
    with pytest.raises(ValueError):
        PackageSpec(name="a", max_concurrent=0)
    with pytest.raises(ValueError):
        RunPolicy.planned(max_concurrent=0)
    with pytest.raises(ValueError):
        RunPolicy.planned(on_dependency_failure="ignore")  # type: ignore[arg-type]
    policy = RunPolicy.planned(max_concurrent=4, on_dependency_failure="block")
    assert (policy.max_concurrent, policy.on_dependency_failure) == (4, "block")


async def test_references_outside_the_plan_go_to_the_store_with_every_candidate() -> None:
    graph = check_dependencies([PackageSpec(name="a", items=[item("x", "old/y", "gone/*")])], 100)
    first, second = graph.item_after[("a", "x")]
    assert first.candidates == (("old", "y"), ("a", "old/y"))
    assert first.field == "packages[0].items[0].after[0]"
    assert second.candidates == (("gone", None),)


async def test_blocked_is_not_a_status_to_set_by_hand(engine: Engine) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="a", items=["x"])])
    with pytest.raises(InputError) as err:
        await engine.record_outcome(run="r", package="a", item="y", status="blocked")
    assert err.value.field == "status"
    page = await engine.list_outcomes(run="r")
    with pytest.raises(InputError):
        await engine.update_outcome_status(page.outcomes[0].id, status="blocked")
