"""API keys and the per-package status counts in the store: the same answers on both backends."""

from __future__ import annotations

import pytest

from matrix_mcp.engine import Engine
from matrix_mcp.errors import Conflict, NotFound
from matrix_mcp.models import STATUSES, PackageSpec


def counts_of(**some: int) -> dict[str, int]:
    """Every status's count, zero unless given."""
    return {**dict.fromkeys(STATUSES, 0), **some}


pytestmark = pytest.mark.anyio


async def test_api_keys_lifecycle(engine: Engine) -> None:
    store = engine.store
    created = await store.create_api_key(
        "ci", key_hash="h1", scopes=("matrix:read", "matrix:work"), now=100.0
    )
    assert created.name == "ci" and created.scopes == ("matrix:read", "matrix:work")
    with pytest.raises(Conflict) as exc:
        await store.create_api_key("ci", key_hash="h2", scopes=("matrix:read",), now=101.0)
    assert exc.value.field == "name"
    await store.create_api_key("admin", key_hash="h3", scopes=("matrix:admin",), now=102.0)
    found = await store.api_key_by_hash("h1")
    assert (
        found is not None and found.name == "ci" and found.revoked_at is None and found.last_used_at is None
    )
    assert await store.api_key_by_hash("nope") is None
    await store.touch_api_key("ci", now=150.0)
    assert [(k.name, k.last_used_at) for k in await store.list_api_keys()] == [("admin", None), ("ci", 150.0)]
    await store.touch_api_key("ci", now=140.0)  # a process with a clock behind: the stamp never goes back
    assert [(k.name, k.last_used_at) for k in await store.list_api_keys()] == [("admin", None), ("ci", 150.0)]
    revoked = await store.revoke_api_key("ci", now=200.0)
    assert revoked.revoked_at == 200.0
    assert (await store.revoke_api_key("ci", now=300.0)).revoked_at == 200.0  # the first time stays
    again = await store.api_key_by_hash("h1")
    assert again is not None and again.revoked_at == 200.0
    with pytest.raises(NotFound) as missing:
        await store.revoke_api_key("ghost", now=1.0)
    assert missing.value.field == "name"


async def test_status_counts_by_package_over_all_runs(engine: Engine) -> None:
    assert await engine.store.status_counts() == {}
    for run in ("r1", "r2"):
        await engine.plan_run(
            run,
            packages=[PackageSpec(name="api", items=["a", "b"]), PackageSpec(name="docs", items=["c"])],
            goal=None,
            policy=None,
        )
    got = await engine.claim_items("r1", worker="w", limit=1, package="api", wait_seconds=0)
    await engine.complete_item(got.items[0].outcome_id, lease_token=got.items[0].lease_token)
    counts = await engine.store.status_counts()
    assert counts["api"] == counts_of(pending=3, complete=1)
    assert counts["docs"]["pending"] == 2 and sum(counts["docs"].values()) == 2


async def test_a_known_key_survives_a_store_outage(engine: Engine) -> None:
    from matrix_mcp.errors import Unavailable
    from matrix_mcp.http.keys import ApiKeyVerifier, hash_key
    from matrix_mcp.store.protocol import Store

    await engine.store.create_api_key("k", key_hash=hash_key("mtx_known"), scopes=("matrix:read",), now=1.0)
    down = False

    class Flaky:
        """The real store, until it goes down."""

        async def api_key_by_hash(self, key_hash: str) -> object:
            if down:
                raise Unavailable("the store is unreachable")
            return await engine.store.api_key_by_hash(key_hash)

        async def touch_api_key(self, name: str, now: float) -> None:
            await engine.store.touch_api_key(name, now=now)

    flaky: Store = Flaky()  # type: ignore[assignment]
    verifier = ApiKeyVerifier(lambda: flaky, cache_seconds=0.0)
    assert (await verifier.verify_token("mtx_known")) is not None
    down = True
    known = await verifier.verify_token("mtx_known")
    assert known is not None and known.client_id == "key:k"
    assert await verifier.verify_token("mtx_other") is None


async def test_active_status_counts_are_bounded_and_skip_finished_work(engine: Engine) -> None:
    """What /metrics labels: totals over all runs, and at most `limit` names with unfinished work in runs
    that are not cancelled, with their counts summed over runs."""
    assert await engine.store.active_status_counts(3) == (
        counts_of(),
        {},
    )
    await engine.plan_run("a", packages=[PackageSpec(name=f"a{i}", items=["x", "y"]) for i in range(5)])
    await engine.plan_run("b", packages=[PackageSpec(name="a0", items=["x"])])
    await engine.plan_run("c", packages=[PackageSpec(name=f"c{i}", items=["x"]) for i in range(2)])
    await engine.control_run("c", action="cancel")
    totals, active = await engine.store.active_status_counts(3)
    assert totals == counts_of(pending=11, cancelled=2)
    assert 1 <= len(active) <= 3 and all(name.startswith("a") for name in active), active
    for name, counts in active.items():
        assert counts["pending"] == (3 if name == "a0" else 2), (name, counts)
    _, everything = await engine.store.active_status_counts(100)
    assert set(everything) == {f"a{i}" for i in range(5)}
